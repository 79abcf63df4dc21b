"""Reports of stored runs: a fixed-width text table and PNG plots."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .metrics import robust_accuracy_from_norms
from .plots import CostPoint, Curve, plot_image_grid, plot_norm_vs_time, plot_robust_accuracy
from .store import ResultsStore

NORM_LABELS = {"l0": "L0", "l1": "L1", "l2": "L2", "linf": "Linf"}
_SKIP_PARAMS = ("generator",)


def _percent(value) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{100 * value:.1f}%")
    )


def _number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


def params_text(hyperparameters: Mapping) -> str:
    """Compact ``key=value`` text of a run's hyperparameters."""
    parts = []
    for key, value in sorted(hyperparameters.items()):
        if key in _SKIP_PARAMS:
            continue
        parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


def run_label(run: Mapping) -> str:
    """Short label of a run: model, attack, norm, eps (and 'targeted')."""
    config = run["config"]
    label = f"{config['attack']} {NORM_LABELS.get(config['norm'], config['norm'])}"
    eps = config["hyperparameters"].get("eps")
    if isinstance(eps, (int, float)) and not config.get("minimal_norm"):
        label += f" eps={eps:g}"
    if config.get("targeted"):
        label += " targeted"
    return label


def _robust_text(summary: Mapping) -> str:
    robust = summary.get("robust_accuracy") or {}
    if not robust:
        return "-"
    items = list(robust.items())
    if len(items) > 3:
        items = items[:: max(1, len(items) // 3)][:3]
    return " ".join(f"{eps:g}:{_percent(acc)}" for eps, acc in items)


COLUMNS: list[tuple[str, Callable[[Mapping], str]]] = [
    ("id", lambda r: str(r["id"])),
    ("model", lambda r: r["config"]["model"]),
    ("attack", lambda r: r["config"]["attack"] + (" (t)" if r["config"].get("targeted") else "")),
    ("norm", lambda r: NORM_LABELS.get(r["config"]["norm"], r["config"]["norm"])),
    ("params", lambda r: params_text(r["config"]["hyperparameters"])),
    ("n", lambda r: str(r["summary"]["n"])),
    ("clean", lambda r: _percent(r["summary"]["clean_accuracy"])),
    ("success", lambda r: _percent(r["summary"]["success_rate"])),
    ("fooling", lambda r: _percent(r["summary"]["fooling_ratio"])),
    ("mean", lambda r: _number(r["summary"]["norm_stats"]["mean"])),
    ("median", lambda r: _number(r["summary"]["norm_stats"]["median"])),
    ("max", lambda r: _number(r["summary"]["norm_stats"]["max"])),
    ("robust acc @eps", lambda r: _robust_text(r["summary"])),
    ("s/sample", lambda r: _number(r["summary"]["seconds_per_sample"])),
    ("fwd/s", lambda r: _number(r["summary"]["forwards_per_sample"])),
    ("bwd/s", lambda r: _number(r["summary"]["backwards_per_sample"])),
    ("queries/s", lambda r: _number(r["summary"].get("queries_per_sample"))),
]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Fixed-width text table: columns padded to their widest cell, a rule under the header."""
    widths = [
        max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
        for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def runs_table(runs: Sequence[Mapping]) -> str:
    """Text table of runs (as returned by ``ResultsStore.runs()``) that have a summary."""
    done = [r for r in runs if r.get("summary")]
    if not done:
        return "(no completed runs)"
    return format_table([h for h, _ in COLUMNS], [[f(r) for _, f in COLUMNS] for r in done])


# ------------------------------------------------------------------------------- plots


def _group_key(run: Mapping) -> str:
    config = run["config"]
    params = {k: v for k, v in config["hyperparameters"].items() if k != "eps"}
    return repr(
        (
            config["model"],
            config["attack"],
            config["norm"],
            config.get("targeted"),
            sorted(params.items()),
            config["data"],
        )
    )


def robust_accuracy_curves(store: ResultsStore, runs: Sequence[Mapping]) -> list[Curve]:
    """Curves of robust accuracy against eps: a step curve per minimal-norm run (from its
    per-sample norms) and one line per group of bounded runs that differ only in eps."""
    curves: list[Curve] = []
    bounded: dict[str, list[Mapping]] = {}
    for run in runs:
        if not run.get("summary"):
            continue
        if run["config"].get("minimal_norm"):
            curves.append(_minimal_curve(store, run))
        elif run["summary"].get("robust_accuracy"):
            bounded.setdefault(_group_key(run), []).append(run)
    for group in bounded.values():
        points = sorted(
            (eps, acc) for r in group for eps, acc in r["summary"]["robust_accuracy"].items()
        )
        clean = group[0]["summary"]["clean_accuracy"]
        eps = np.array([0.0] + [e for e, _ in points])
        acc = np.array([clean] + [a for _, a in points])
        label = run_label(group[0]).split(" eps=")[0] + f" [{group[0]['config']['model']}]"
        curves.append(Curve(label, group[0]["config"]["norm"], eps, acc))
    return curves


def _minimal_curve(store: ResultsStore, run: Mapping) -> Curve:
    norm = run["config"]["norm"]
    samples = store.samples(run["id"])
    correct = samples["clean_pred"] == samples["label"]
    success = samples["success"].astype(bool)
    norms = samples[norm]
    finite = norms[success & correct]
    top = float(finite.max()) * 1.05 if finite.size else 1.0
    grid = np.linspace(0.0, top, 200)
    accuracy = robust_accuracy_from_norms(correct, success, norms, grid)
    label = f"{run_label(run)} [{run['config']['model']}]"
    return Curve(label, norm, grid, np.array(list(accuracy.values())), steps=True)


def cost_points(runs: Sequence[Mapping]) -> list[CostPoint]:
    """Mean norm against seconds per sample for every completed run with successes."""
    points = []
    for run in runs:
        summary = run.get("summary")
        if not summary or math.isnan(summary["norm_stats"]["mean"]):
            continue
        points.append(
            CostPoint(
                run_label(run),
                run["config"]["norm"],
                summary["seconds_per_sample"],
                summary["norm_stats"]["mean"],
            )
        )
    return points


def image_grid(
    store: ResultsStore,
    runs: Sequence[Mapping],
    path: str | os.PathLike,
    max_runs: int = 6,
    max_images: int = 8,
) -> Path | None:
    """Grid of originals, perturbations and adversarials for the runs with stored images that
    share the first such run's data; ``None`` when no run has images."""
    chosen, originals = [], None
    for run in runs:
        images = store.images(run["id"])[:max_images] if run.get("summary") else []
        if not images:
            continue
        if originals is None:
            originals = [o for _, o, _ in images]
        if len(images) != len(originals) or any(
            o.shape != r.shape or not np.array_equal(o, r)
            for r, (_, o, _) in zip(originals, images)
        ):
            continue
        chosen.append((run_label(run), [a for _, _, a in images]))
        if len(chosen) == max_runs:
            break
    if not chosen:
        return None
    return plot_image_grid(originals, chosen, path)


def write_report(
    store: ResultsStore, out_dir: str | os.PathLike, run_ids: Sequence[int] | None = None
) -> list[Path]:
    """Write ``robust_accuracy.png``, ``norm_vs_time.png`` and ``adversarial_grid.png`` for the
    stored runs (or those in ``run_ids``) into ``out_dir``; return the paths written."""
    runs = [r for r in store.runs() if run_ids is None or r["id"] in run_ids]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    curves = robust_accuracy_curves(store, runs)
    if curves:
        written.append(plot_robust_accuracy(curves, out / "robust_accuracy.png"))
    points = cost_points(runs)
    if points:
        written.append(plot_norm_vs_time(points, out / "norm_vs_time.png"))
    grid = image_grid(store, runs, out / "adversarial_grid.png")
    if grid is not None:
        written.append(grid)
    return written
