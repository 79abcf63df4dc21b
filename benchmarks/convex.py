"""Figure 2 and Table I of Balda, Behboodi & Mathar, "On Generation of Adversarial Examples
using Convex Programming" (../shared/papers/convex-programming-attacks.txt), on our models.

Figure 2: fooling ratio (fraction of the correctly classified images among the first N test
images whose prediction changes) against the Linf budget eps for

* Alg 1    ``gn``: one closed-form (GNII) step on the Eq. (3) margin linearised through its
  gradient at x, the active piece's (``pieces='active'``, the default: one backward pass);
* Alg 1 all  ``gn(pieces='all')``: every piece linearised, the best kept (K class gradients);
* Alg 1-n  ``gn_iterative`` with n steps of eps/n (``--steps``, default n = 10), active piece;
* Alg 1-n all  the same with ``pieces='all'`` (n times K class gradients: the costliest row);
* Alg 2    ``gn_simple``: (GNII) on the single score f_k;
* FGSM     ``fgm`` with norm inf (cross-entropy loss);
* DeepFool-Linf (50 iterations, overshoot 0.02): minimal-norm, so its perturbation is not
  within eps by construction; it counts as fooled at eps when it misclassifies and its Linf
  norm is <= eps (the paper's protocol for minimal-norm methods);
* Random   ``bernoulli_noise`` (+-eps entries, seed 0).

Table I: test error (whole test split), rho1 (mean ||delta||_inf / ||x||_inf of DeepFool-Linf,
``robustness.rho1``), rho2 (Proposition 1 bound, Linf, ``robustness.linearised_bounds``
averaged as ``robustness.rho2`` does, batched), the smallest eps with fooling ratio > 99% for
Alg 1 and Alg 1 all (``min_eps_for_fooling``: bisection between the curve's grid points
around the threshold) and, as in the paper's column, the same figure for DeepFool
(``eps_for_fooling_from_norms``).

Also the paper's orderings per eps (Alg 1 >= FGSM, Alg 1-n >= DeepFool, and the same for the
'all' variants) and the wall time of Alg 1 (active and all pieces) against one FGSM pass over
the first ``--timing-images`` test images (default 1000; same batch size, the three
interleaved in every repeat, medians; the issue's target: Alg 1 <= 2x FGSM).

    python benchmarks/convex.py --models mnist-fcnn mnist-lenet5 cifar-cnn --n 1000 \
        --out results/convex
    python benchmarks/convex.py --models cifar-cnn --n 300 --timing-images 500 \
        --methods Random FGSM "Alg 2" "Alg 1" "Alg 1 all" "Alg 1-n"

Rows are appended to ``<out>/results.jsonl`` as they are produced; a rerun skips the rows
already there (resume). One PNG per model: ``<out>/fig2_<model>.png``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import torch
from _results import Results

from advx.attacks._core import INF, lp_norm
from advx.attacks.convex import bernoulli_noise, gn, gn_iterative, gn_simple
from advx.attacks.gradient import fgm
from advx.data import load_dataset
from advx.evaluation.robustness import (
    eps_for_fooling_from_norms,
    fooling_ratio,
    linearised_bounds,
    min_eps_for_fooling,
    rho1,
)
from advx.models import get_spec, load, model_path

METHODS = ("Alg 1", "Alg 1 all", "Alg 1-n", "Alg 1-n all", "Alg 2", "FGSM", "DeepFool", "Random")
BOUNDED = ("Random", "FGSM", "Alg 2", "Alg 1", "Alg 1 all", "Alg 1-n", "Alg 1-n all")  # run order
VERSION = "v2"  # result keys: "Alg 1" meant all pieces in v1, the active piece since v2
DEFAULT_GRIDS = {
    "mnist": [0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2],
    "cifar10": [0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02],
}
THRESHOLD = 0.99


# --------------------------------------------------------------------------- helpers


def _batched(fn, x, y, batch: int, **kwargs) -> torch.Tensor:
    return torch.cat(
        [fn(x[i : i + batch], y[i : i + batch], **kwargs) for i in range(0, len(x), batch)]
    )


@torch.no_grad()
def _predict(model, x, batch: int) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])


def _bounded_attacks(model, steps: int, generator_seed: int):
    """name -> attack(x, y, eps=...) for the bounded (eps-ball) methods."""

    def random(x, y, eps):
        gen = torch.Generator().manual_seed(generator_seed)
        return bernoulli_noise(x, eps, generator=gen)

    return {
        "Alg 1": lambda x, y, eps: gn(model, x, y, eps=eps, norm=INF),
        "Alg 1 all": lambda x, y, eps: gn(model, x, y, eps=eps, norm=INF, pieces="all"),
        "Alg 1-n": lambda x, y, eps: gn_iterative(model, x, y, eps=eps, norm=INF, steps=steps),
        "Alg 1-n all": lambda x, y, eps: gn_iterative(
            model, x, y, eps=eps, norm=INF, steps=steps, pieces="all"
        ),
        "Alg 2": lambda x, y, eps: gn_simple(model, x, y, eps=eps, norm=INF),
        "FGSM": lambda x, y, eps: fgm(model, x, y, eps=eps, norm=INF),
        "Random": random,
    }


def _deepfool_fn():
    """The DeepFool attack, imported lazily (another engineer is writing it); None if absent."""
    try:
        from advx.attacks.deepfool import deepfool  # noqa: PLC0415
    except Exception as error:  # noqa: BLE001  (missing or broken module)
        print(f"DeepFool skipped: cannot import advx.attacks.deepfool.deepfool ({error!r})")
        return None
    return deepfool


def _run_deepfool(model, x, y, batch: int):
    """Per-sample Linf norm of DeepFool-Linf's perturbation (inf where it failed) and the
    adversarials; None if DeepFool is missing or raises."""
    deepfool = _deepfool_fn()
    if deepfool is None:
        return None
    try:
        adv = _batched(
            lambda a, b: deepfool(model, a, b, norm=INF, steps=50, overshoot=0.02, candidates=10),
            x,
            y,
            batch,
        )
    except Exception as error:  # noqa: BLE001
        print(f"DeepFool skipped: it raised {error!r}")
        return None
    fooled = _predict(model, adv, batch) != y
    norms = lp_norm(adv - x, INF)
    norms = torch.where(fooled, norms, torch.full_like(norms, INF))
    return norms, adv


def _fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value == INF:
        return "inf"
    return f"{value:.{digits}f}"


# --------------------------------------------------------------------------- per model


def _table_i(model, name, x, y, x_all, y_all, df, args, results, prefix):
    key = f"{prefix}|table"
    row = results.get(key)
    if row is not None:
        return row
    batch = args.batch
    error = (_predict(model, x_all, batch) != y_all).float().mean().item()
    r1 = math.nan
    if df is not None:
        adv = df[1]
        r1 = rho1(model, x, y, lambda _m, _x, _y: adv, norm=INF)
    # rho2 = robustness.rho2(model, x, y, norm=inf), computed in batches (inputs all correct).
    bounds = torch.cat(
        [linearised_bounds(model, x[i : i + batch], norm=INF) for i in range(0, len(x), batch)]
    )
    finite = bounds[torch.isfinite(bounds)]
    r2 = finite.mean().item() if finite.numel() else math.nan
    return results.add(
        key,
        {"kind": "table", "model": name, "test_error": error, "rho1": r1, "rho2": r2},
    )


def _curves(model, name, x, y, grid, df_norms, args, results, prefix) -> dict:
    attacks = _bounded_attacks(model, args.steps, args.seed)
    curves: dict[str, dict[float, float]] = {m: {} for m in METHODS}
    # Cheap methods first; Alg 1-n (n times the cost of Alg 1) last.
    for method in (m for m in BOUNDED if m in args.methods):
        for eps in grid:
            key = f"{prefix}|{VERSION}|curve|{method}|{eps:g}"
            row = results.get(key)
            if row is None:
                start = time.perf_counter()
                adv = _batched(attacks[method], x, y, args.batch, eps=eps)
                ratio = fooling_ratio(model, x, y, adv)
                row = results.add(
                    key,
                    {
                        "kind": "curve",
                        "model": name,
                        "method": method,
                        "eps": eps,
                        "fooling_ratio": ratio,
                        "seconds": time.perf_counter() - start,
                    },
                )
                print(
                    f"  {name} {method:8s} eps={eps:g}: {ratio:.4f} ({row['seconds']:.1f}s)",
                    flush=True,
                )
            curves[method][eps] = row["fooling_ratio"]
    if df_norms is not None:
        for eps in grid:
            curves["DeepFool"][eps] = (df_norms <= eps).float().mean().item()
    return curves


def _alg1_min_eps(model, name, x, y, grid, curve, args, results, prefix, pieces) -> float:
    """min_eps_for_fooling for Alg 1 (``pieces`` 'active' or 'all'), scanning only the two curve
    grid points around the first one above the threshold (the rest of the scan is already in
    the curve)."""
    if not curve:
        return math.nan
    key = f"{prefix}|{VERSION}|alg1_min_eps|{pieces}"
    row = results.get(key)
    if row is not None:
        return row["eps"]
    above = [e for e in grid if curve[e] > THRESHOLD]
    if above:
        upper = above[0]
        lower = max([e for e in grid if e < upper], default=0.0)
        scan = [lower, upper] if lower > 0 else [upper]
    else:  # extend the scan geometrically up to eps = 1
        scan = torch.logspace(math.log10(max(grid)), 0.0, 8, dtype=torch.float64).tolist()
    start = time.perf_counter()

    def attack(m, xs, ys, eps):
        return _batched(
            lambda a, b: gn(m, a, b, eps=eps, norm=INF, pieces=pieces), xs, ys, args.batch
        )

    eps = min_eps_for_fooling(model, x, y, attack, threshold=THRESHOLD, eps_grid=scan)
    row = results.add(
        key,
        {
            "kind": "alg1_min_eps",
            "model": name,
            "pieces": pieces,
            "eps": eps,
            "scan": scan,
            "seconds": time.perf_counter() - start,
        },
    )
    return eps


def _timing(model, name, x_all, y_all, args, results, prefix) -> dict:
    """Alg 1 (active piece and all pieces) vs one FGSM pass over the first
    ``args.timing_images`` test images, the three interleaved in every repeat (medians)."""
    key = f"{prefix}|{VERSION}|timing|{args.timing_images}"
    row = results.get(key)
    if row is not None:
        return row
    x, y = x_all[: args.timing_images], y_all[: args.timing_images]
    eps = 0.1 if get_spec(name).dataset == "mnist" else 0.01

    def runner(attack, **kwargs):
        return lambda: _batched(
            lambda a, b: attack(model, a, b, eps=eps, norm=INF, **kwargs), x, y, args.batch
        )

    runs = {
        "FGSM": runner(fgm),
        "Alg 1": runner(gn, pieces="active"),
        "Alg 1 all": runner(gn, pieces="all"),
    }
    for run in runs.values():  # warm-up
        run()
    times: dict[str, list[float]] = {m: [] for m in runs}
    for _ in range(args.repeats):
        for method, run in runs.items():
            start = time.perf_counter()
            run()
            times[method].append(time.perf_counter() - start)
    medians = {m: statistics.median(t) for m, t in times.items()}
    return results.add(
        key,
        {
            "kind": "timing",
            "model": name,
            "images": len(x),
            "batch": args.batch,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "fgsm_median_s": medians["FGSM"],
            "alg1_median_s": medians["Alg 1"],
            "alg1_all_median_s": medians["Alg 1 all"],
            "ratio": medians["Alg 1"] / medians["FGSM"],
            "ratio_all": medians["Alg 1 all"] / medians["FGSM"],
            "times": times,
            "loadavg": os.getloadavg()[0],
        },
    )


def _print_curves(name, n_correct, grid, curves, steps):
    methods = [m for m in METHODS if curves[m]]
    print(
        f"\nFigure 2, {name}: fooling ratio vs Linf eps ({n_correct} correctly classified images; "
        f"Alg 1-n with n = {steps})"
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
            lines.append(f"  {first} >= {second}: not checked ({second} skipped)")
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
            label = method.replace("1-n", f"1-{steps}")
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


def run_model(name: str, args, results: Results) -> dict | None:
    if not model_path(name).is_file() and not args.train:
        print(f"\n{name}: skipped, no checkpoint at {model_path(name)} (use --train to train it)")
        return None
    dataset = get_spec(name).dataset
    model = load(name, args.data_dir, train_if_missing=args.train).eval()
    x_all, y_all = load_dataset(dataset, "test", args.data_dir)
    x_first, y_first = x_all[: args.n], y_all[: args.n]
    correct = _predict(model, x_first, args.batch) == y_first
    x, y = x_first[correct], y_first[correct]
    grid = sorted(args.eps_grid or DEFAULT_GRIDS[dataset])
    prefix = f"{name}|n={args.n}"
    print(
        f"\n{name}: {int(correct.sum())} of the first {args.n} test images correctly classified",
        flush=True,
    )

    df_key = f"{prefix}|deepfool"
    df_row = results.get(df_key)
    df = None
    if df_row is None or df_row.get("skipped"):
        start = time.perf_counter()
        df = _run_deepfool(model, x, y, args.batch)
        if df is not None:
            df_row = results.add(
                df_key,
                {
                    "kind": "deepfool",
                    "model": name,
                    "norms": df[0].tolist(),
                    "seconds": time.perf_counter() - start,
                },
            )
            print(f"  {name} DeepFool-Linf done ({df_row['seconds']:.1f}s)", flush=True)
    df_norms = torch.tensor(df_row["norms"]) if df_row is not None and "norms" in df_row else None
    if df is None and df_norms is not None and results.get(f"{prefix}|table") is None:
        df = _run_deepfool(model, x, y, args.batch)  # rho1 needs the adversarials again

    table = _table_i(model, name, x, y, x_all, y_all, df, args, results, prefix)
    curves = _curves(model, name, x, y, grid, df_norms, args, results, prefix)
    alg1_eps = {
        pieces: _alg1_min_eps(
            model, name, x, y, grid, curves[method], args, results, prefix, pieces
        )
        for pieces, method in (("active", "Alg 1"), ("all", "Alg 1 all"))
    }
    df_eps = eps_for_fooling_from_norms(df_norms, THRESHOLD) if df_norms is not None else math.nan
    timing = (
        _timing(model, name, x_all, y_all, args, results, prefix) if args.timing_images else None
    )

    _print_curves(name, len(x), grid, curves, args.steps)
    _check_orderings(name, grid, curves)
    _plot(name, grid, curves, args.steps, args.out / f"fig2_{name}.png")
    return {
        "model": name,
        "table": table,
        "alg1_eps": alg1_eps,
        "df_eps": df_eps,
        "timing": timing,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mnist-fcnn", "mnist-lenet5", "cifar-cnn"])
    parser.add_argument(
        "--n", type=int, default=1000, help="first N test images (correct ones count)"
    )
    parser.add_argument(
        "--eps-grid",
        type=float,
        nargs="+",
        default=None,
        help="Linf budgets (default per dataset: MNIST 0.025..0.2, CIFAR 0.0025..0.02)",
    )
    parser.add_argument("--steps", type=int, default=10, help="n of Alg 1-n")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats")
    parser.add_argument(
        "--timing-images", type=int, default=1000, help="images of the timing run (0: no timing)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(BOUNDED),
        choices=BOUNDED,
        help="bounded methods to run (DeepFool always runs when importable)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the Random baseline")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train", action="store_true", help="train models without a checkpoint")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=Path("results/convex"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results = Results(args.out / "results.jsonl")

    summaries = [s for s in (run_model(m, args, results) for m in args.models) if s is not None]

    print(
        f"\nTable I (Linf; first {args.n} test images, correctly classified ones; test error on "
        "the whole test split)"
    )
    header = (
        f"{'model':14s} {'test err':>8s} {'rho1':>7s} {'rho2':>7s} {'Alg1 >99%':>10s} "
        f"{'Alg1all >99%':>12s} {'DF >99%':>8s}"
    )
    print(header)
    for s in summaries:
        t = s["table"]
        print(
            f"{s['model']:14s} {100 * t['test_error']:7.2f}% {_fmt(t['rho1']):>7s} "
            f"{_fmt(t['rho2']):>7s} {_fmt(s['alg1_eps']['active'], 4):>10s} "
            f"{_fmt(s['alg1_eps']['all'], 4):>12s} {_fmt(s['df_eps'], 4):>8s}"
        )
    for s in summaries:
        t = s["timing"]
        if t is None:
            continue
        print(
            f"\nTiming {s['model']} over {t['images']} images (batch {t['batch']}, "
            f"{t['threads']} threads, median of {t['repeats']} interleaved repeats, load avg "
            f"{t['loadavg']:.1f}): FGSM {t['fgsm_median_s']:.3f}s; Alg 1 (active) "
            f"{t['alg1_median_s']:.3f}s = {t['ratio']:.2f}x FGSM "
            f"({'within' if t['ratio'] <= 2 else 'ABOVE'} the 2x target); Alg 1 all "
            f"{t['alg1_all_median_s']:.3f}s = {t['ratio_all']:.2f}x FGSM"
        )


if __name__ == "__main__":
    main()
