"""The benchmark scripts whose grid rows run as ``advx bench`` sweeps (benchmarks/trust_region.py,
benchmarks/ddn_anu.py): tiny end-to-end runs on mnist-cnn, checking that the table rows come from
the sweep's store (which a second run reuses without running a job) and equal its summaries."""

import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from advx.evaluation import bench
from advx.evaluation.store import ResultsStore

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
DATA = os.environ.get("ADVX_DATA", str(Path(__file__).parents[2] / "shared" / "data"))
needs_mnist = pytest.mark.skipif(
    not (Path(DATA) / "MNIST").is_dir(), reason="MNIST not available (set ADVX_DATA)"
)


@pytest.fixture
def scripts(monkeypatch):
    """Import benchmark scripts by name (they import ``_harness`` from their own folder)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("ADVX_DATA", DATA)
    yield importlib.import_module
    for name in ("trust_region", "ddn_anu", "_harness", "_results"):
        sys.modules.pop(name, None)


def _no_job(*args, **kwargs):
    raise AssertionError("a job ran although the store holds it complete")


def _stored(db: Path) -> tuple[dict, dict]:
    with ResultsStore(db) as store:
        runs = {run["id"]: run for run in store.runs()}
        return runs, {i: store.samples(i) for i in runs}


def _same(a: float, b: float) -> bool:
    """Equal, NaN included (a row without successes has NaN norms)."""
    return a == b or (a != a and b != b)


def _json(rows) -> str:
    """Rows as JSON (NaN compares equal to NaN)."""
    values = rows.values() if isinstance(rows, dict) else rows
    return json.dumps(list(values), sort_keys=True)


def _rho(samples: dict, norm: str) -> np.ndarray:
    ok = (samples["success"] == 1) & (samples["clean_pred"] == samples["label"])
    return samples[f"rel_{norm}"][ok]


TR_ARGS = (
    "--models mnist-cnn --n 2 --tables 1 2 --cw-search 1 --cw-steps 5 --refine-steps 1 "
    "--ifgsm-bisect 1 --ifgsm-max-steps 5 --batch-size 3"
).split()


@needs_mnist
def test_trust_region_rows_come_from_the_sweep(scripts, tmp_path, monkeypatch, capsys):
    trust_region = scripts("trust_region")
    out = ["--out", str(tmp_path)]
    rows = trust_region.main(TR_ARGS + out)
    printed = capsys.readouterr().out
    runs, samples = _stored(tmp_path / "sweep.sqlite")
    grid = [r for r in rows.values() if "run_id" in r]
    # Table 1: DeepFool x2, TR fixed/adaptive x2, + refine x2, C&W, fixed-step I-FGSM;
    # Table 2: DeepFool [hardest], TR fixed/adaptive [hardest], + refine, each x2.
    assert len(grid) == len(runs) == 18
    assert {r["run_id"] for r in grid} == set(runs)
    assert all(run["status"] == "complete" for run in runs.values())
    for row in grid:
        summary, columns = runs[row["run_id"]]["summary"], samples[row["run_id"]]
        assert row["n"] == summary["n"] == 2
        assert _same(row["success"], summary["success_rate"])
        assert _same(row["avg_norm"], summary["norm_stats"]["mean"])
        assert _same(row["median_norm"], summary["norm_stats"]["median"])
        assert row["seconds_per_image"] == summary["seconds_per_sample"]
        rho = _rho(columns, row["norm"])
        if rho.size:
            assert row["avg_rho"] == pytest.approx(rho.mean(), rel=1e-12)
            assert row["worst_rho"] == rho.max()
            line = f"{100 * row['avg_rho']:.2f}% / {100 * row['worst_rho']:.2f}%"
            assert any(row["attack"] in t and line in t for t in printed.splitlines())
    assert rows[("mnist-cnn", "accuracy", "clean", "-", None, 1000)]["accuracy"] > 0.9
    script = {k: r for k, r in rows.items() if "run_id" not in r and r["table"] != "accuracy"}
    assert {(r["table"], r["attack"], r["norm"]) for r in script.values()} == {
        ("1", "I-FGSM", "linf"),
        ("2", "DeepFool -> class", "l2"),
        ("2", "DeepFool -> class", "linf"),
        ("2", "TR adaptive -> class", "l2"),
        ("2", "TR adaptive -> class", "linf"),
    }
    stored = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(stored) == len(script) + 1  # and the accuracy
    budgets = {r["budget"] for r in grid if r["attack"] == "C&W"}
    assert budgets == {"1x5 c0=0.001"}
    assert "Paper targets" in printed and (tmp_path / "fig4_perturbation_vs_time.png").is_file()

    monkeypatch.setattr(bench, "execute_job", _no_job)
    monkeypatch.setattr(trust_region.harness, "measure", _no_job)
    again = trust_region.main(TR_ARGS + out)
    printed = capsys.readouterr().out
    assert "10 of 10 jobs already complete" in printed and "8 of 8 jobs already" in printed
    assert _json(again) == _json(rows)
    assert _stored(tmp_path / "sweep.sqlite")[0].keys() == runs.keys()


@needs_mnist
def test_ddn_anu_rows_come_from_the_sweep(scripts, tmp_path, monkeypatch, capsys):
    ddn_anu = scripts("ddn_anu")
    argv = (
        "--models mnist-cnn --n 3 --targeted-n 1 --budgets 5 8 --curve-steps 5 --curve-n 3 "
        f"--threads 1 --out {tmp_path}"
    ).split()
    rows = ddn_anu.main(argv)
    printed = capsys.readouterr().out
    runs, _ = _stored(tmp_path / "sweep.sqlite")
    # untargeted and targeted (every other class) x DDN and ANU x 2 budgets
    assert len(rows) == len(runs) == 8
    for row in rows:
        run = runs[row["run_id"]]
        summary = run["summary"]
        assert run["config"]["attack"] == row["method"]
        assert run["config"]["hyperparameters"]["steps"] == row["steps"]
        assert _same(row["success"], summary["success_rate"])
        assert _same(row["mean_l2"], summary["norm_stats"]["mean"])
        assert _same(row["median_l2"], summary["norm_stats"]["median"])
        assert row["n"] == (3 if row["mode"] == "untargeted" else 9)
        assert (row["mode"] == "targeted") == ("target_cases" in summary)
        assert f"{row['success']:>8.3f} {row['mean_l2']:>8.4f}" in printed
    curves = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {(c["method"], len(c["values"])) for c in curves} == {("ddn", 6), ("anu", 6)}
    assert (tmp_path / "best_norm_vs_iteration.png").is_file()

    monkeypatch.setattr(bench, "execute_job", _no_job)
    monkeypatch.setattr(ddn_anu, "_curve", _no_job)
    assert _json(ddn_anu.main(argv)) == _json(rows)
    assert "4 of 4 jobs already complete" in capsys.readouterr().out


def test_grid_config_applies_the_script_options(scripts):
    harness = scripts("_harness")
    path = BENCHMARKS / "configs" / "trust_region_table1_mnist.toml"
    config = harness.grid_config(
        path,
        models=["mnist-mlp"],
        n=7,
        batch_size=4,
        cpus=2,
        overrides={"trust-region": {"refine_steps": 2, "steps": 3}, "cw-l2": {"steps": 9}},
        drop=("deepfool",),
    )
    jobs = config.jobs
    assert {j.model for j in jobs} == {"mnist-mlp"}
    assert {(j.n, j.batch_size, j.cpus) for j in jobs} == {(7, 4, 2)}
    assert "deepfool" not in {j.attack for j in jobs}
    tr = [j.hyperparameters for j in jobs if j.attack == "trust-region"]
    # only the tables that set refine_steps change; a key no table sets is not added
    assert sorted(hp.get("refine_steps", 0) for hp in tr) == [0, 0, 0, 0, 2, 2]
    assert all("steps" not in hp for hp in tr)
    assert [j.hyperparameters["steps"] for j in jobs if j.attack == "cw-l2"] == [9]
    unchanged = harness.grid_config(path, models=["mnist-cnn"], n=7).jobs
    assert {(j.batch_size, j.cpus) for j in unchanged} == {(100, 1)}


def test_run_figures_reads_relative_norms_over_successes(scripts):
    harness = scripts("_harness")
    samples = {
        "success": np.array([1, 1, 0, 1]),
        "clean_pred": np.array([0, 1, 2, 0]),
        "label": np.array([0, 1, 2, 3]),  # the last input was misclassified: left out
        "rel_l2": np.array([0.1, 0.3, 0.9, 0.0]),
    }
    summary = {
        "norm": "l2",
        "clean_accuracy": 0.75,
        "robust_accuracy": {},
        "success_rate": 0.75,
        "norm_stats": {"mean": 1.0, "median": 1.0},
        "seconds_per_sample": 0.5,
        "backwards_per_sample": 2.0,
        "forwards_per_sample": 3.0,
    }
    figures = harness.run_figures(summary, samples)
    assert figures["relative_mean"] == pytest.approx(0.2)
    assert figures["relative_median"] == pytest.approx(0.2)
    assert figures["relative_worst"] == pytest.approx(0.3)
    assert figures["success"] == 0.75 and figures["gradients_per_image"] == 2.0
    summary["norm"] = "l3"  # no relative column
    assert np.isnan(harness.run_figures(summary, samples)["relative_mean"])


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_every_shipped_trust_region_job_names_one_table_row(scripts, dataset):
    trust_region = scripts("trust_region")
    expected = {
        "1": {
            (a, n)
            for n, names in (("l2", trust_region.L2_BEST), ("linf", trust_region.LINF_BEST))
            for a in names
            if a != "I-FGSM"
        },
        "2": {(a, n) for n in ("l2", "linf") for a in trust_region.HARDEST if "->" not in a},
    }
    for table, rows in expected.items():
        path = BENCHMARKS / "configs" / f"trust_region_table{table}_{dataset}.toml"
        jobs = bench.load_config(path).jobs
        model = jobs[0].model
        names = [
            (trust_region._grid_name(j), bench.expected_config(j)["norm"])
            for j in jobs
            if j.model == model
        ]
        assert sorted(names) == sorted(rows)  # each row once, none missing


@needs_mnist
def test_trust_region_refresh_rows_order_the_rules_by_cost_and_resume(scripts, tmp_path, capsys):
    """Each rule re-evaluates the candidates' gradients less often than the one before it, so
    the backward passes the runner counts fall along ``RULES``; a rerun measures nothing."""
    refresh = scripts("trust_region_refresh")
    out, md = tmp_path / "rows", tmp_path / "report.md"
    argv = ["--models", "mnist-cnn", "--n", "3", "--out", str(out), "--report", str(md)]
    refresh.main(argv)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["rule"] for r in rows] == list(refresh.RULES)
    cost = [r["gradients_per_image"] for r in rows]
    assert cost[0] > cost[1] >= cost[2] >= cost[3] > 0
    assert all(r["success"] == 1.0 and r["n"] == 3 for r in rows)
    assert "| every 3rd, in doubt | 1.000 |" in md.read_text()
    capsys.readouterr()
    refresh.main(argv)
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
    assert "mnist-cnn" not in capsys.readouterr().out
    sys.modules.pop("trust_region_refresh", None)
