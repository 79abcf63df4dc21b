"""Evaluation: counting, norms, verification by the runner, the store's resume, summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from advx.attacks import pgd
from advx.attacks._core import loss_and_grad
from advx.evaluation import (
    CountingModel,
    ResultsStore,
    perturbation_norms,
    resolve_db_path,
    robust_accuracy_from_norms,
    run_attack,
    summarize,
    target_case_summary,
)
from advx.evaluation.report import runs_table, write_report

TIMING = {"seconds", "forwards", "backwards"}


# ------------------------------------------------------------------------------ counting


def test_counting_forwards_and_backwards(linear_problem):
    model, x, y = linear_problem
    counter = CountingModel(model)
    with torch.no_grad():
        counter(x)
    assert (counter.forward_calls, counter.forward_samples) == (1, 8)
    assert (counter.backward_calls, counter.backward_samples) == (0, 0)
    for _ in range(3):
        loss_and_grad(counter, x[:5], y[:5])
    assert (counter.forward_calls, counter.forward_samples) == (4, 23)
    assert (counter.backward_calls, counter.backward_samples) == (3, 15)
    leaf = x.clone().requires_grad_(True)
    counter(leaf).sum().backward()
    assert counter.backward_samples == 23
    counter.reset()
    assert counter.counts().forward_calls == 0 and counter.counts().backward_samples == 0


def test_counting_under_vmap_counts_every_sample(linear_problem):
    model, x, _ = linear_problem
    counter = CountingModel(model)
    jacobian = torch.func.vmap(torch.func.jacrev(lambda z: counter(z[None])[0]))(x)
    assert jacobian.shape[:2] == (8, 3)
    assert counter.forward_samples == 8
    assert counter.backward_samples == 8 * 3  # one gradient row per class and sample


def test_counting_inside_pgd(linear_problem):
    model, x, y = linear_problem
    counter = CountingModel(model)
    pgd(counter, x, y, eps=0.05, steps=5)
    assert counter.backward_calls == 5 and counter.backward_samples == 5 * 8
    assert counter.forward_calls >= 6


# --------------------------------------------------------------------------------- norms


def test_norms_on_known_delta():
    x = torch.full((2, 1, 2, 2), 0.5)
    adv = x.clone()
    adv[0, 0, 0, 0] += 0.3
    adv[0, 0, 1, 1] -= 0.4
    adv[1] += 1e-8  # below the L0 tolerance, but counted by the other norms
    norms = perturbation_norms(x, adv)
    assert norms["l0"].tolist() == [2, 0]
    assert norms["l1"][0].item() == pytest.approx(0.7, abs=1e-6)
    assert norms["l2"][0].item() == pytest.approx(0.5, abs=1e-6)
    assert norms["linf"][0].item() == pytest.approx(0.4, abs=1e-6)
    assert norms["rel_l2"][0].item() == pytest.approx(0.5 / 1.0, abs=1e-6)  # ||x||_2 = 1
    assert norms["rel_linf"][0].item() == pytest.approx(0.8, abs=1e-6)
    assert norms["rel_l0"][0].item() == pytest.approx(0.5)


def test_relative_norm_of_black_image():
    x = torch.zeros(2, 1, 2, 2)
    adv = x.clone()
    adv[0, 0, 0, 0] = 0.1
    rel = perturbation_norms(x, adv)["rel_l2"]
    assert math.isinf(rel[0].item()) and rel[1].item() == 0.0


def test_robust_accuracy_from_minimal_norms_by_hand():
    correct = [True, True, True, False, True]
    success = [True, True, False, True, True]
    norms = [0.1, 0.3, 0.0, 0.0, 0.2]
    acc = robust_accuracy_from_norms(correct, success, norms, [0.0, 0.1, 0.2, 0.25, 0.3, 1.0])
    # robust: correct and no adversarial within eps. Sample 2 (failed) stays robust.
    assert acc == {0.0: 0.8, 0.1: 0.6, 0.2: 0.4, 0.25: 0.4, 0.3: 0.2, 1.0: 0.2}


def test_summarize_by_hand():
    samples = {
        "label": [0, 1, 2, 3],
        "clean_pred": [0, 1, 2, 0],
        "adv_pred": [1, 1, 0, 0],
        "success": [1, 0, 1, 1],
        "l0": [3, 0, 5, 0],
        "l1": [1.0, 0, 2.0, 0],
        "l2": [0.5, 0, 1.5, 0],
        "linf": [0.1, 0, 0.3, 0],
        "seconds": [0.5] * 4,
        "forwards": [10] * 4,
        "backwards": [9] * 4,
    }
    s = summarize(samples, norm="l2", minimal_norm=True, epsilons=[0.5, 1.0, 2.0])
    assert s["clean_accuracy"] == 0.75
    assert s["success_rate"] == 0.75
    assert s["fooling_ratio"] == pytest.approx(2 / 3)
    assert s["norm_stats"] == {"mean": 1.0, "median": 1.0, "max": 1.5}
    assert s["robust_accuracy"] == {0.5: 0.5, 1.0: 0.5, 2.0: 0.25}
    assert (s["seconds_per_sample"], s["forwards_per_sample"]) == (0.5, 10)
    bounded = summarize(samples, norm="linf", minimal_norm=False, eps=0.3)
    assert bounded["robust_accuracy"] == {0.3: 0.25} and bounded["all_within_budget"]


def test_target_case_summary():
    inf = math.inf
    norms = [[1.0, 2.0, inf], [3.0, 4.0, 5.0]]
    s = target_case_summary(norms)
    assert s["best"] == {"success_rate": 1.0, "mean_norm": 2.0}
    assert s["worst"] == {"success_rate": 0.5, "mean_norm": 5.0}
    assert s["average"]["success_rate"] == pytest.approx(5 / 6)
    assert s["average"]["mean_norm"] == pytest.approx(3.0)


# -------------------------------------------------------------------------------- runner


def lying_attack(model, inputs, labels, *, targeted=False, eps=0.1):
    """Claims success but returns the inputs unchanged."""
    return inputs.clone()


def out_of_box_attack(model, inputs, labels, *, targeted=False, eps=0.1):
    return inputs + 2 * eps


def test_runner_reverifies_success(linear_problem):
    model, x, y = linear_problem
    result = run_attack(model, x, y, lying_attack, hyperparameters={"eps": 0.1}, progress=False)
    assert result.summary["success_rate"] == 0.0
    assert result.summary["robust_accuracy"] == {0.1: 1.0}
    assert result.samples["adv_pred"].tolist() == y.tolist()


def test_runner_rejects_out_of_box_examples(linear_problem):
    model, x, y = linear_problem
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        run_attack(model, x, y, out_of_box_attack, hyperparameters={"eps": 0.5}, progress=False)


def test_runner_budget_and_counts(linear_problem):
    model, x, y = linear_problem
    result = run_attack(
        model, x, y, "pgd", hyperparameters={"eps": 0.2, "steps": 5}, batch_size=3, progress=False
    )
    summary = result.summary
    assert summary["all_within_budget"] and summary["max_norm"] <= 0.2 + 1e-6
    assert summary["backwards_per_sample"] == 5
    assert result.computed.all()
    assert result.adversarials.shape == x.shape


def test_runner_counts_over_budget_as_failure(linear_problem):
    model, x, y = linear_problem

    def greedy(model, inputs, labels, *, targeted=False, eps=0.1):
        return pgd(model, inputs, labels, eps=1.0, steps=5)

    result = run_attack(model, x, y, greedy, hyperparameters={"eps": 0.001}, progress=False)
    assert not result.summary["all_within_budget"]
    assert result.summary["success_rate"] == 0.0
    assert result.summary["robust_accuracy"][0.001] == 1.0


class Interrupt(RuntimeError):
    pass


def _flaky_pgd(fail_after: int | None):
    calls = {"n": 0}

    def attack(model, inputs, labels, *, targeted=False, eps=0.1, norm=float("inf")):
        calls["n"] += 1
        if fail_after is not None and calls["n"] > fail_after:
            raise Interrupt("simulated interruption")
        return pgd(model, inputs, labels, eps=eps, norm=norm, steps=5)  # random start

    attack.__name__ = "pgd-flaky"
    return attack


def _drop_timing(samples):
    return {k: v.tolist() for k, v in samples.items() if k not in TIMING}


def test_store_resume_equals_uninterrupted_run(tmp_path):
    from linear_harness import make_problem

    model, x, y = make_problem(n=40, d=16)
    kwargs = dict(hyperparameters={"eps": 0.05}, batch_size=10, progress=False, model_name="lin")
    with ResultsStore(tmp_path / "a.sqlite") as store:
        with pytest.raises(Interrupt):
            run_attack(model, x, y, _flaky_pgd(2), store=store, **kwargs)
        (run,) = store.runs()
        assert run["status"] == "interrupted"
        assert len(store.samples(run["id"])["sample_index"]) == 20
        resumed = run_attack(model, x, y, _flaky_pgd(2), store=store, **kwargs)
        assert resumed.computed.sum().item() == 20  # only the missing half ran
        assert store.runs()[0]["status"] == "complete"
    with ResultsStore(tmp_path / "b.sqlite") as store:
        full = run_attack(model, x, y, _flaky_pgd(None), store=store, **kwargs)
    assert resumed.key == full.key
    assert _drop_timing(resumed.samples) == _drop_timing(full.samples)
    for key in ("success_rate", "fooling_ratio", "norm_stats", "robust_accuracy", "mean_norms"):
        assert resumed.summary[key] == full.summary[key]
    assert len(resumed.samples["sample_index"]) == 40


def test_store_round_trip_and_report(tmp_path):
    from linear_harness import make_problem

    model, x, y = make_problem(n=12, d=16)
    with ResultsStore(tmp_path / "r.sqlite") as store:
        for eps in (0.02, 0.05):
            run_attack(
                model,
                x,
                y,
                "pgd",
                hyperparameters={"eps": eps, "steps": 3},
                store=store,
                progress=False,
                batch_size=5,
            )
        run_attack(
            model,
            x,
            y,
            "fgm",
            norm=2,
            targeted=True,
            hyperparameters={"eps": 0.3},
            store=store,
            progress=False,
        )
        runs = store.runs()
        assert [r["status"] for r in runs] == ["complete"] * 3
        assert runs[0]["summary"]["robust_accuracy"].keys() == {0.02}
        assert len(store.images(runs[0]["id"])) == 8
        table = runs_table(runs)
        assert "pgd" in table and "fgm (targeted)" in table
        written = write_report(store, tmp_path / "out")
    assert {p.name for p in written} == {
        "robust_accuracy.png",
        "norm_vs_time.png",
        "adversarial_grid.png",
    }
    assert all(p.stat().st_size > 1000 for p in written)


def test_resolve_db_path(monkeypatch, tmp_path):
    monkeypatch.setenv("ADVX_RESULTS", str(tmp_path / "env.sqlite"))
    assert resolve_db_path("x.sqlite").name == "x.sqlite"
    assert resolve_db_path().name == "env.sqlite"
    monkeypatch.delenv("ADVX_RESULTS")
    assert resolve_db_path().name == "advx-results.sqlite"


def test_minimal_norm_runner_robust_curve(linear_problem):
    model, x, y = linear_problem

    def tiny_minimal(model, inputs, labels, *, targeted=False, norm=float("inf")):
        """Bounded PGD with a growing eps: a stand-in minimal-norm attack."""
        out = inputs.clone()
        for eps in (0.02, 0.05, 0.1, 0.2):
            adv = pgd(model, inputs, labels, eps=eps, steps=10, random_start=False)
            fooled = model(adv).argmax(1) != labels
            fresh = fooled & (out == inputs).flatten(1).all(1)
            out[fresh] = adv[fresh]
        return out

    result = run_attack(model, x, y, tiny_minimal, epsilons=[0.0, 0.2, 1.0], progress=False)
    assert result.summary["minimal_norm"]
    acc = result.summary["robust_accuracy"]
    assert acc[0.0] == 1.0 and acc[1.0] == 1.0 - result.summary["success_rate"]
    assert np.all(np.diff(list(acc.values())) <= 0)


def test_counting_wrapper_keeps_the_model_in_eval_mode_after_an_attack():
    """Regression: a fresh wrapper defaulted to train mode and, when an attack restored the
    wrapper's mode, switched the wrapped model (and its dropout) to train mode."""
    from advx.attacks import fgm

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 3))
    model.eval()
    x = torch.rand(4, 1, 4, 4)
    fgm(CountingModel(model), x, model(x).argmax(1), eps=0.1)
    assert not model.training
