"""Figure 2 and Table I of Balda, Behboodi & Mathar, "On Generation of Adversarial Examples
using Convex Programming" (../shared/papers/convex-programming-attacks.txt), on our models.

Figure 2 (fooling ratio against the Linf budget eps) is a grid, run as a sweep: the rows of
``benchmarks/configs/convex_figure2_{mnist,cifar10}.toml`` (the config of each model's dataset;
``--configs`` for others), with ``data.n`` and the models taken from ``--n`` and ``--models``,
through ``advx.evaluation.bench.run_sweep`` into ``<out>/sweep.sqlite`` (a rerun skips the
finished jobs, resumes a half-finished one). The curves are read from the stored runs:

* a bounded method's point at eps is its run's summary ``success_rate`` (every image is
  correctly classified, so this is the fooling ratio), with the methods named as in the paper:
  Alg 1 ``gn`` (active piece; "all": ``pieces='all'``), Alg 1-n ``gn-iterative`` (n = the
  config's ``steps``), Alg 2 ``gn-simple``, FGSM ``fgm``, Random ``bernoulli``;
* DeepFool-Linf is minimal-norm, so not within eps by construction: it counts as fooled at eps
  where its stored example is misclassified and its stored Linf norm is <= eps (the paper's
  protocol for minimal-norm methods).

Computed here, on the same images (the first ``--n`` correctly classified test images, as
``benchmarks/_harness.py`` and ``advx bench`` choose them):

* Table I: test error (whole test split: as recorded with the checkpoint when it was trained,
  else measured here), rho1 (mean ||delta||_inf / ||x||_inf of the stored DeepFool-Linf run
  over its successes, as ``robustness.rho1``), rho2 (Proposition 1 bound,
  ``robustness.linearised_bounds`` averaged as ``robustness.rho2`` does, batched), the smallest
  eps with fooling ratio > 99% for Alg 1 and Alg 1 all (``robustness.min_eps_for_fooling``
  with each trial run through ``run_attack``, bisecting between the curve's grid points around
  the threshold) and the same figure for DeepFool (``eps_for_fooling_from_norms`` on its stored
  norms);
* the paper's orderings per eps (Alg 1 >= FGSM, Alg 1-n >= DeepFool, and the same for the
  'all' variants);
* the attack time of Alg 1 (active and all pieces) against FGSM on the first
  ``--timing-images`` evaluation images (eps 0.1 on MNIST, 0.01 on CIFAR-10; each a
  ``run_attack`` run, which times every batch's attack call; the three runs interleaved in
  every repeat, medians; the issue's target: Alg 1 <= 2x FGSM).

    python benchmarks/convex.py --models mnist-fcnn mnist-lenet5 cifar-cnn --n 1000 \
        --out results/convex

The sweep's runs are the same jobs as ``advx bench`` on the config alone with the same ``n``
(stored once, found by either). Sweep jobs use the
config's batch size and one thread each (its ``[execution]``); the rest uses ``--batch-size``
and ``--threads``. Table I and timing rows are appended to ``<out>/results.jsonl`` and a rerun
skips those already there. One PNG per model: ``<out>/fig2_<model>.png``. The models must be
trained already (``advx train NAME``); the script never trains one.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import _harness as harness
import numpy as np
import torch

from advx.attacks._core import INF
from advx.data import load_dataset
from advx.evaluation.bench import load_config
from advx.evaluation.robustness import (
    eps_for_fooling_from_norms,
    linearised_bounds,
    min_eps_for_fooling,
)
from advx.evaluation.runner import run_attack
from advx.evaluation.store import ResultsStore
from advx.models import get_spec
from advx.models.training import evaluate

CONFIGS = Path(__file__).parent / "configs"
DEFAULT_CONFIGS = [str(CONFIGS / f"convex_figure2_{d}.toml") for d in ("mnist", "cifar10")]
METHODS = ("Alg 1", "Alg 1 all", "Alg 1-n", "Alg 1-n all", "Alg 2", "FGSM", "DeepFool", "Random")
LABELS = {
    "gn": "Alg 1",
    "gn-iterative": "Alg 1-n",
    "gn-simple": "Alg 2",
    "fgm": "FGSM",
    "bernoulli": "Random",
    "deepfool": "DeepFool",
}
THRESHOLD = 0.99
TIMING_EPS = {"mnist": 0.1, "cifar10": 0.01}


def _key(row: dict) -> str:
    fields = [row.get("kind"), row.get("model"), row.get("n"), row.get("settings")]
    return json.dumps(fields, sort_keys=True)


def _fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value == INF:
        return "inf"
    return f"{value:.{digits}f}"


# ------------------------------------------------------------------- Figure 2 from the sweep


def _config_for(dataset: str, paths: list[str]) -> str:
    """The sweep config among ``paths`` whose ``data.dataset`` is ``dataset``."""
    for path in paths:
        if load_config(path).raw["data"]["dataset"] == dataset:
            return path
    raise SystemExit(f"no Figure 2 config for {dataset} among {paths} (see --configs)")


def _method(job) -> str:
    """The paper's name of a sweep job's method (Figure 2's legend)."""
    if job.attack not in LABELS:
        raise SystemExit(f"{job.label()}: not a Figure 2 method (one of {sorted(LABELS)})")
    all_pieces = job.hyperparameters.get("pieces") == "all"
    return LABELS[job.attack] + (" all" if all_pieces else "")


def fooled_norms(samples: dict[str, np.ndarray]) -> np.ndarray:
    """Per-sample Linf norm of a stored minimal-norm run's examples, inf where it failed."""
    return np.where(samples["success"] == 1, samples["linf"], np.inf)


def figure2(outcomes, store: ResultsStore) -> tuple[list[float], dict, dict | None]:
    """The eps grid, the curves {method: {eps: fooling ratio}} and the stored DeepFool-Linf
    samples (None if the grid has no DeepFool row) of one model's sweep outcomes."""
    grid = sorted(
        {o.job.hyperparameters["eps"] for o in outcomes if "eps" in o.job.hyperparameters}
    )
    curves: dict[str, dict[float, float]] = {m: {} for m in METHODS}
    deepfool = None
    for outcome in outcomes:
        method = _method(outcome.job)
        if method == "DeepFool":
            deepfool = store.samples(outcome.run_id)
        else:
            curves[method][outcome.job.hyperparameters["eps"]] = outcome.summary["success_rate"]
    if deepfool is not None:
        norms = fooled_norms(deepfool)
        curves["DeepFool"] = {eps: float((norms <= eps).mean()) for eps in grid}
    return grid, curves, deepfool


# ----------------------------------------------------------------------- computed here


def _table_i(model, name, x, y, deepfool, args, results) -> dict:
    """Test error, rho1, rho2 and DeepFool's smallest eps above 99% (one stored row)."""
    row = {"kind": "table", "model": name, "n": len(x), "settings": None}
    if _key(row) in results:
        return results[_key(row)]
    accuracy = harness.recorded_test_accuracy(name)
    if accuracy is None:
        x_all, y_all = load_dataset(get_spec(name).dataset, "test", args.data_dir)
        with torch.no_grad():
            accuracy = evaluate(model, x_all, y_all, batch_size=args.batch_size)
    error = 1.0 - accuracy
    r1, df_eps = math.nan, math.nan
    if deepfool is not None:
        fooled = deepfool["success"] == 1
        r1 = float(deepfool["rel_linf"][fooled].mean()) if fooled.any() else math.nan
        df_eps = eps_for_fooling_from_norms(torch.from_numpy(fooled_norms(deepfool)), THRESHOLD)
    # rho2 = robustness.rho2(model, x, y, norm=inf), in batches (the inputs are all correct).
    batch = args.batch_size
    bounds = torch.cat(
        [linearised_bounds(model, x[i : i + batch], norm=INF) for i in range(0, len(x), batch)]
    )
    finite = bounds[torch.isfinite(bounds)]
    r2 = finite.mean().item() if finite.numel() else math.nan
    row |= {"test_error": error, "rho1": r1, "rho2": r2, "deepfool_eps": df_eps}
    return results.record(row)


def _through_runner(attack: str, batch: int, **fixed):
    """``attack(model, x, y, eps=...)`` for ``min_eps_for_fooling``, each call a ``run_attack``
    run (re-checked there, and again by ``min_eps_for_fooling``)."""

    def run(model, inputs, labels, eps):
        hyperparameters = fixed | {"eps": eps}
        result = run_attack(
            model,
            inputs,
            labels,
            attack,
            norm=INF,
            hyperparameters=hyperparameters,
            batch_size=batch,
            progress=False,
        )
        return result.adversarials

    return run


def _alg1_min_eps(model, name, x, y, grid, curve, args, results, pieces) -> float:
    """min_eps_for_fooling for Alg 1 (``pieces`` 'active' or 'all'), scanning only the two curve
    grid points around the first one above the threshold (the rest of the scan is already in
    the curve)."""
    if not curve:
        return math.nan
    above = [e for e in grid if curve[e] > THRESHOLD]
    if above:
        upper = above[0]
        lower = max([e for e in grid if e < upper], default=0.0)
        scan = [lower, upper] if lower > 0 else [upper]
    else:  # extend the scan geometrically up to eps = 1
        scan = torch.logspace(math.log10(max(grid)), 0.0, 8, dtype=torch.float64).tolist()
    row = {"kind": "alg1_min_eps", "model": name, "n": len(x)}
    row["settings"] = {"pieces": pieces, "scan": scan}
    if _key(row) not in results:
        attack = _through_runner("gn", args.batch_size, pieces=pieces)
        eps = min_eps_for_fooling(model, x, y, attack, threshold=THRESHOLD, eps_grid=scan)
        results.record(row | {"eps": eps})
    return results[_key(row)]["eps"]


def _timing(model, name, x, y, args, results) -> dict:
    """Attack seconds of FGSM and Alg 1 (active piece, all pieces) on the same images, each a
    ``run_attack`` run (its per-batch timing of the attack call), the three interleaved in every
    repeat so that the shared machine's load hits them alike (medians)."""
    eps = TIMING_EPS[get_spec(name).dataset]
    row = {"kind": "timing", "model": name, "n": len(x)}
    row["settings"] = {"eps": eps, "batch": args.batch_size, "repeats": args.repeats}
    if _key(row) in results:
        return results[_key(row)]
    runs = {"FGSM": ("fgm", {}), "Alg 1": ("gn", {"pieces": "active"})}
    runs["Alg 1 all"] = ("gn", {"pieces": "all"})

    def seconds(attack: str, extra: dict) -> float:
        hyperparameters = {"eps": eps, **extra}
        figures = harness.measure(
            model, x, y, attack, norm=INF, hyperparameters=hyperparameters, batch=args.batch_size
        )
        return figures["seconds_per_image"] * len(x)

    for attack, extra in runs.values():  # warm-up
        seconds(attack, extra)
    times: dict[str, list[float]] = {m: [] for m in runs}
    for _ in range(args.repeats):
        for method, (attack, extra) in runs.items():
            times[method].append(seconds(attack, extra))
    medians = {m: statistics.median(t) for m, t in times.items()}
    row |= {
        "threads": torch.get_num_threads(),
        "fgsm_median_s": medians["FGSM"],
        "alg1_median_s": medians["Alg 1"],
        "alg1_all_median_s": medians["Alg 1 all"],
        "ratio": medians["Alg 1"] / medians["FGSM"],
        "ratio_all": medians["Alg 1 all"] / medians["FGSM"],
        "times": times,
        "loadavg": os.getloadavg()[0],
    }
    return results.record(row)


# ---------------------------------------------------------------------------- printing


def _print_curves(name, n_correct, grid, curves, steps, db):
    methods = [m for m in METHODS if curves[m]]
    iterations = "" if steps is None else f"; Alg 1-n with n = {steps}"
    print(
        f"\nFigure 2, {name}: fooling ratio vs Linf eps ({n_correct} correctly classified "
        f"images{iterations}; from {Path(db).name})"
    )
    print(f"{'eps':>8s} " + " ".join(f"{m:>11s}" for m in methods))
    for eps in grid:
        print(f"{eps:8.4f} " + " ".join(f"{curves[m][eps]:11.4f}" for m in methods))


def _check_orderings(name, grid, curves) -> list[str]:
    lines = [f"\nOrderings, {name} (paper: Alg 1 >= FGSM, Alg 1-n >= DeepFool at every eps)"]
    pairs = [
        ("Alg 1", "FGSM"),
        ("Alg 1-n", "DeepFool"),
        ("Alg 1 all", "FGSM"),
        ("Alg 1-n all", "DeepFool"),
    ]
    for first, second in pairs:
        if not curves[first]:
            continue
        if not curves[second]:
            lines.append(f"  {first} >= {second}: not checked ({second} not in the grid)")
            continue
        fails = [e for e in grid if curves[first][e] < curves[second][e]]
        verdict = "holds at every eps" if not fails else f"FAILS at {len(fails)}/{len(grid)} eps"
        lines.append(f"  {first} >= {second}: {verdict}")
        for e in grid:
            diff = curves[first][e] - curves[second][e]
            mark = "ok  " if diff >= 0 else "FAIL"
            lines.append(
                f"    {mark} eps={e:g}: {first} {curves[first][e]:.4f} vs {second} "
                f"{curves[second][e]:.4f} (diff {diff:+.4f})"
            )
    print("\n".join(lines))
    return lines


def _plot(name, grid, curves, steps, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(5, 4))
    for method in METHODS:
        if curves[method]:
            label = method if steps is None else method.replace("1-n", f"1-{steps}")
            ax.plot(grid, [curves[method][e] for e in grid], marker="o", label=label)
    ax.set_xlabel("eps (Linf)")
    ax.set_ylabel("fooling ratio")
    ax.set_title(f"Fooling ratio vs eps: {name}")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _print_table_i(summaries: list[dict]) -> None:
    print("\nTable I (Linf; the evaluation images of each model; test error on the test split)")
    print(
        f"{'model':14s} {'n':>5s} {'test err':>8s} {'rho1':>7s} {'rho2':>7s} {'Alg1 >99%':>10s} "
        f"{'Alg1all >99%':>12s} {'DF >99%':>8s}"
    )
    for s in summaries:
        t = s["table"]
        print(
            f"{s['model']:14s} {t['n']:5d} {100 * t['test_error']:7.2f}% {_fmt(t['rho1']):>7s} "
            f"{_fmt(t['rho2']):>7s} {_fmt(s['alg1_eps']['active'], 4):>10s} "
            f"{_fmt(s['alg1_eps']['all'], 4):>12s} {_fmt(t['deepfool_eps'], 4):>8s}"
        )


def _print_timing(t: dict) -> None:
    settings = t["settings"]
    print(
        f"\nTiming {t['model']} over {t['n']} images (eps {settings['eps']:g}, batch "
        f"{settings['batch']}, {t['threads']} threads, median of {settings['repeats']} "
        f"interleaved repeats, load avg {t['loadavg']:.1f}): FGSM {t['fgsm_median_s']:.3f}s; "
        f"Alg 1 (active) {t['alg1_median_s']:.3f}s = {t['ratio']:.2f}x FGSM "
        f"({'within' if t['ratio'] <= 2 else 'ABOVE'} the 2x target); Alg 1 all "
        f"{t['alg1_all_median_s']:.3f}s = {t['ratio_all']:.2f}x FGSM"
    )


# -------------------------------------------------------------------------------- main


def run_model(name: str, args, results) -> dict:
    """Figure 2 (from the sweep), Table I and the timing check of one model."""
    dataset = get_spec(name).dataset
    wanted = max(args.n, args.timing_images)
    model, x_eval, y_eval = harness.evaluation_images(name, wanted, args.data_dir)
    x, y = x_eval[: args.n], y_eval[: args.n]
    print(f"\n{name}: the first {len(x)} correctly classified test images")
    db = Path(args.out) / "sweep.sqlite"
    sweep = harness.run_grid(
        _config_for(dataset, args.configs),
        models=[name],
        n=len(x),
        db=db,
        data_dir=args.data_dir,
        executor=args.executor,
        progress=True,
    )
    with ResultsStore(db) as store:
        grid, curves, deepfool = figure2(sweep.outcomes, store)
    steps = next(
        (
            o.job.hyperparameters.get("steps")
            for o in sweep.outcomes
            if o.job.attack == "gn-iterative"
        ),
        None,
    )
    table = _table_i(model, name, x, y, deepfool, args, results)
    alg1_eps = {
        pieces: _alg1_min_eps(model, name, x, y, grid, curves[method], args, results, pieces)
        for pieces, method in (("active", "Alg 1"), ("all", "Alg 1 all"))
    }
    timing = None
    if args.timing_images:
        xt, yt = x_eval[: args.timing_images], y_eval[: args.timing_images]
        timing = _timing(model, name, xt, yt, args, results)
    _print_curves(name, len(x), grid, curves, steps, db)
    _check_orderings(name, grid, curves)
    _plot(name, grid, curves, steps, Path(args.out) / f"fig2_{name}.png")
    return {"model": name, "curves": curves, "table": table, "alg1_eps": alg1_eps, "timing": timing}


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark (``argv``: the command-line arguments); returns one summary per model
    (its Figure 2 curves, Table I row, Alg 1 eps and timing row)."""
    parser = harness.parser(
        __doc__,
        models=["mnist-fcnn", "mnist-lenet5", "cifar-cnn"],
        n=1000,
        out="results/convex",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=DEFAULT_CONFIGS,
        help="Figure 2 sweep configs, one per dataset (default: benchmarks/configs/...)",
    )
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats")
    parser.add_argument(
        "--timing-images", type=int, default=1000, help="images of the timing run (0: no timing)"
    )
    args = parser.parse_args(argv)
    results = harness.setup(args, key=_key)
    summaries = [run_model(name, args, results) for name in args.models]
    _print_table_i(summaries)
    for s in summaries:
        if s["timing"] is not None:
            _print_timing(s["timing"])
    return summaries


if __name__ == "__main__":
    main()
