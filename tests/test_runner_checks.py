"""The runner is as strict as the attacks, reads robust accuracy the same way in every mode,
accepts any p >= 1 where the attack does, and warns about models whose numbers can't be trusted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from linear_harness import make_problem
from torch import nn

from advx.evaluation import run_attack, summarize
from advx.evaluation.sanity import masking_warning, probabilities_warning, randomness_warning


def _conv_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 26 * 26, 3))


def _images(n=4):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "change, word",
    [
        (lambda m, x, y: (m, x[:, 0], y), "images of shape"),
        (lambda m, x, y: (m, x[:, None], y), "images of shape"),
        (lambda m, x, y: (m, x.double(), y), "dtype"),
        (lambda m, x, y: (lambda z: (m(z), z), x, y), "tuple"),
        (lambda m, x, y: (m, x, y.float()), "labels"),
        (lambda m, x, y: (m, x, y + 5), "labels"),
    ],
)
def test_run_attack_refuses_bad_input_naming_it(change, word):
    model, x, y = change(_conv_model(), _images(), torch.zeros(4, dtype=torch.long))
    with pytest.raises((ValueError, TypeError), match=word):
        run_attack(model, x, y, "fgm", norm="inf", hyperparameters={"eps": 0.1}, progress=False)


def test_run_attack_accepts_int32_labels():
    model, x, y = make_problem(n=6)
    wide = run_attack(model, x, y, "fgm", norm=2, hyperparameters={"eps": 0.5}, progress=False)
    narrow = run_attack(
        model, x, y.int(), "fgm", norm=2, hyperparameters={"eps": 0.5}, progress=False
    )
    assert np.array_equal(wide.samples["adv_pred"], narrow.samples["adv_pred"])


def test_robust_accuracy_of_a_targeted_bounded_run_counts_every_misclassification():
    """Reported defect: a targeted PGD run where no example stayed correct printed 4% robust
    accuracy, because only hitting the target counted as losing accuracy."""
    samples = {
        "label": np.array([0, 1, 2, 3]),
        "clean_pred": np.array([0, 1, 2, 3]),
        "adv_pred": np.array([1, 2, 0, 3]),  # three misclassified, one reached its target
        "success": np.array([1, 0, 0, 0]),
        "target": np.array([1, 0, 1, 0]),
        **{name: np.full(4, 0.1) for name in ("l0", "l1", "l2", "linf", "lp")},
        **{name: np.zeros(4) for name in ("seconds", "forwards", "backwards")},
    }
    bounded = summarize(samples, norm="linf", minimal_norm=False, eps=0.3)
    assert bounded["robust_accuracy"][0.3] == pytest.approx(0.25)
    minimal = summarize(samples, norm="linf", minimal_norm=True, epsilons=[0.3])
    assert minimal["robust_accuracy"][0.3] == pytest.approx(0.25)


def test_targeted_pgd_run_robust_accuracy_equals_share_still_correct():
    model, x, y = make_problem(n=20, k=4, seed=3)
    result = run_attack(
        model,
        x,
        y,
        "pgd",
        norm="inf",
        targeted=True,
        hyperparameters={"eps": 0.5, "steps": 20},
        progress=False,
    )
    still_correct = (result.samples["adv_pred"] == result.samples["label"]).mean()
    assert result.summary["robust_accuracy"][0.5] == pytest.approx(still_correct)


def test_gn_runs_in_l3_through_the_runner_and_keeps_its_budget():
    model, x, y = make_problem(n=8)
    result = run_attack(model, x, y, "gn", norm=3, hyperparameters={"eps": 0.4}, progress=False)
    assert result.summary["norm"] == "l3"
    l3 = (result.adversarials - x).flatten(1).norm(p=3, dim=1).double().numpy()
    assert np.allclose(result.samples["lp"], l3, atol=1e-6)
    assert result.summary["all_within_budget"] and (l3 <= 0.4 + 1e-5).all()


def test_fixed_norm_attack_refuses_another_norm():
    model, x, y = make_problem(n=2)
    with pytest.raises(ValueError, match="norm"):
        run_attack(model, x, y, "ddn", norm=1, progress=False)


class _Noisy(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x) + 0.1 * torch.randn(x.shape[0], 1)


class _Quantised(nn.Module):
    """Rounds its input: piecewise constant, so input gradients are zero (masking)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 4) / 4)


def test_randomised_model_is_flagged_and_a_plain_one_is_not():
    model, x, _ = make_problem(n=8)
    assert randomness_warning(model, x) is None
    assert "randomised" in randomness_warning(_Noisy(model), x)


def test_gradient_masking_is_flagged():
    model, x, y = make_problem(n=8)
    assert masking_warning(model, x, y) is None
    assert "masking" in masking_warning(_Quantised(model), x, y)


def test_probabilities_are_flagged():
    model, x, _ = make_problem(n=8)
    assert probabilities_warning(model, x) is None
    assert "probabilities" in probabilities_warning(nn.Sequential(model, nn.Softmax(1)), x)


def test_warnings_are_stored_with_the_run(tmp_path):
    from advx.evaluation import ResultsStore

    model, x, y = make_problem(n=6)
    with ResultsStore(tmp_path / "r.sqlite") as store:
        run_attack(
            _Noisy(model),
            x,
            y,
            "fgm",
            norm=2,
            hyperparameters={"eps": 0.5},
            store=store,
            progress=False,
        )
        (run,) = store.runs()
    assert any("randomised" in w for w in run["summary"]["warnings"])
