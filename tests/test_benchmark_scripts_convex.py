"""The benchmark scripts moved onto the shared harness (benchmarks/_harness.py): convex.py's
Figure 2 comes from the sweep store, regression.py and adversarial_training.py keep what they
measure. Tiny settings on real MNIST images (skipped without them)."""

import argparse
import importlib.util
import json
import math
import os
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from advx.attacks import ANU_DEFAULTS, anu, deepfool, lp_norm
from advx.evaluation import bench
from advx.evaluation.robustness import eps_for_fooling_from_norms, rho1
from advx.evaluation.store import ResultsStore
from advx.models import get_spec, load
from advx.models.checkpoints import save_model

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
DATA = Path(os.environ.get("ADVX_DATA", str(Path(__file__).parents[2] / "shared" / "data")))
pytestmark = pytest.mark.skipif(
    not (DATA / "MNIST").is_dir(), reason="MNIST not available (set ADVX_DATA)"
)

TINY_FIGURE2 = """
[data]
dataset = "mnist"
split = "test"
n = 1000

[[models]]
name = "mnist-fcnn"

[[attacks]]
name = "gn"
norm = "inf"
eps = [0.1, 0.2]
pieces = ["active", "all"]

[[attacks]]
name = "fgm"
norm = "inf"
eps = [0.1, 0.2]

[[attacks]]
name = "deepfool"
norm = "inf"
steps = 5
overshoot = 0.02
candidates = 10
"""


def _script(name: str):
    """Import benchmarks/<name>.py (its own imports of _harness and _results included)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def environment(tmp_path, monkeypatch):
    """Data from ADVX_DATA, a fresh model cache (mnist-cnn is bundled) and results folder."""
    monkeypatch.setenv("ADVX_DATA", str(DATA))
    monkeypatch.setenv("ADVX_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _stored_curves(db: Path) -> dict:
    """{(method, eps): fooling ratio} read straight from the store, as the paper defines it."""
    labels = {"gn": "Alg 1", "fgm": "FGSM"}
    points, deepfool = {}, None
    with ResultsStore(db) as store:
        for run in store.runs():
            config, hyper = run["config"], run["config"]["hyperparameters"]
            if config["attack"] == "deepfool":
                deepfool = store.samples(run["id"])
                continue
            method = labels[config["attack"]] + (" all" if hyper.get("pieces") == "all" else "")
            points[(method, hyper["eps"])] = run["summary"]["success_rate"]
    for eps in (0.1, 0.2):
        fooled = (deepfool["success"] == 1) & (deepfool["linf"] <= eps)
        points[("DeepFool", eps)] = float(fooled.mean())
    return points


def test_convex_figure2_comes_from_the_sweep_store(environment, monkeypatch):
    convex = _script("convex")
    config = environment / "figure2.toml"
    config.write_text(TINY_FIGURE2)
    out = environment / "convex"
    argv = ["--models", "mnist-cnn", "--n", "3", "--configs", str(config)]
    argv += ["--timing-images", "0", "--out", str(out)]
    (first,) = convex.main(argv)

    db = out / "sweep.sqlite"
    with ResultsStore(db) as store:
        runs = store.runs()
    assert len(runs) == 7 and all(r["status"] == "complete" for r in runs)
    assert all(r["config"]["data"]["n"] == 3 for r in runs)
    stored = _stored_curves(db)
    curves = {(m, e): v for m, points in first["curves"].items() for e, v in points.items()}
    assert curves == stored

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished sweep job ran again")

    monkeypatch.setattr(bench, "execute_job", must_not_run)
    (second,) = convex.main(argv)
    assert second["curves"] == first["curves"]
    with ResultsStore(db) as store:
        assert len(store.runs()) == 7

    # Table I's rho1 and DeepFool column, read from the stored run, equal the library's
    # functions on DeepFool run afresh on the same images.
    model = load("mnist-cnn", train_if_missing=False)
    from advx.data import first_correct, load_dataset

    images, labels = load_dataset("mnist", "test", DATA)
    x, y, _ = first_correct(model, images[:1000], labels[:1000], 3)
    attack = partial(deepfool, norm=math.inf, steps=5, overshoot=0.02, candidates=10)
    table = first["table"]
    assert table["rho1"] == pytest.approx(rho1(model, x, y, attack, norm=math.inf), rel=1e-5)
    adv = attack(model, x, y)
    with torch.no_grad():
        fooled = model(adv).argmax(1) != y
    norms = torch.where(fooled, lp_norm(adv - x, math.inf), torch.full((3,), math.inf))
    assert table["deepfool_eps"] == pytest.approx(eps_for_fooling_from_norms(norms), rel=1e-5)
    assert (out / "fig2_mnist-cnn.png").is_file()


def test_regression_script_rows_and_resume(environment):
    regression = _script("regression")
    torch.manual_seed(0)
    model = get_spec("mnist-regress").build()
    save_model(model, "mnist-regress", environment / "cache" / "mnist-regress.pt")
    out = environment / "regression"
    argv = ["--n", "4", "--batch-size", "4", "--out", str(out)]
    regression.main(argv)
    lines = (out / "results.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    attacks = [r for r in rows if r["kind"] == "attack"]
    assert len(attacks) == sum(len(grid) for grid in regression.GRIDS.values())
    for row in attacks:  # the attack keeps its budget and moves the output more than noise
        assert row["attack"]["norm"] <= row["eps"] * (1 + 1e-5)
        assert row["attack"]["change"] > row["random"]["change"]
    regression.main(argv)
    assert (out / "results.jsonl").read_text().splitlines() == lines  # resumed, nothing new


def test_adversarial_training_evaluation_keeps_its_robust_accuracy(environment):
    """The runner's robust accuracy per radius equals the script's former definition: minimal
    norm per image (0 when misclassified already, inf when the attack failed) above the radius."""
    script = _script("adversarial_training")
    model = load("mnist-cnn", train_if_missing=False)
    from advx.data import load_dataset

    images, labels = load_dataset("mnist", "test", DATA)
    x, y = images[:6], labels[:6]
    y = y.clone()
    y[0] = (y[0] + 1) % 10  # one image the model gets wrong: it counts as not robust
    radii = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]
    args = argparse.Namespace(data_dir=None, eval_steps=5, batch_size=6, radii=radii)
    row = script._evaluate("mnist-cnn", x, y, "mnist", args)

    torch.manual_seed(0)  # run_attack's seed for its first batch
    adv = anu(model, x, y, **(dict(ANU_DEFAULTS["mnist"]) | {"steps": 5}))
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
        fooled = model(adv).argmax(1) != y
    norms = torch.where(fooled, lp_norm(adv - x, 2), torch.full((6,), math.inf))
    norms = torch.where(wrong, torch.zeros(6), norms)
    expected = [float((norms > r).float().mean()) for r in radii]
    assert row["robust_accuracy"] == pytest.approx(expected)
    assert row["clean_accuracy_eval"] == pytest.approx(5 / 6)
    assert np.isfinite(row["median_l2"])
