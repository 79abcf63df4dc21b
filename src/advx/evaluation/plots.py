"""Plots with matplotlib (Agg backend): robust accuracy against epsilon, norm against time per
sample, and grids of original / perturbation / adversarial images."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

NORM_LABELS = {"l0": "L0", "l1": "L1", "l2": "L2", "linf": "L∞"}


@dataclass
class Curve:
    """Robust accuracy against epsilon for one run (or one group of bounded runs)."""

    label: str
    norm: str
    epsilons: np.ndarray
    accuracy: np.ndarray
    steps: bool = False  # a step function read off minimal norms


@dataclass
class CostPoint:
    """One attack's mean norm against its seconds per sample."""

    label: str
    norm: str
    seconds: float
    mean_norm: float


def _norm_axes(norms: Sequence[str], width: float = 5.0):
    order = [n for n in ("l0", "l1", "l2", "linf") if n in norms] or ["linf"]
    fig, axes = plt.subplots(1, len(order), figsize=(width * len(order), 4), squeeze=False)
    return fig, dict(zip(order, axes[0]))


def plot_robust_accuracy(curves: Sequence[Curve], path: str | os.PathLike) -> Path:
    """Robust accuracy against epsilon, one line per curve, one panel per norm; saved as PNG."""
    fig, axes = _norm_axes({c.norm for c in curves})
    for curve in curves:
        ax = axes[curve.norm]
        if curve.steps:
            ax.step(curve.epsilons, curve.accuracy, where="post", label=curve.label)
        else:
            ax.plot(curve.epsilons, curve.accuracy, marker="o", label=curve.label)
    for norm, ax in axes.items():
        ax.set_xlabel(f"epsilon ({NORM_LABELS.get(norm, norm)})")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_norm_vs_time(points: Sequence[CostPoint], path: str | os.PathLike) -> Path:
    """Mean norm of successful examples against seconds per sample, one point per attack."""
    fig, axes = _norm_axes({p.norm for p in points})
    for point in points:
        ax = axes[point.norm]
        ax.scatter([point.seconds], [point.mean_norm])
        ax.annotate(
            point.label,
            (point.seconds, point.mean_norm),
            fontsize=7,
            textcoords="offset points",
            xytext=(4, 4),
        )
    for norm, ax in axes.items():
        ax.set_xscale("log")
        ax.set_xlabel("seconds per sample")
        ax.set_ylabel(f"mean {NORM_LABELS.get(norm, norm)} norm of successes")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _as_image(array: np.ndarray) -> tuple[np.ndarray, str | None]:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        return array[0], "gray"
    if array.ndim == 3:
        return np.transpose(array, (1, 2, 0)), None
    return array, "gray"


def scaled_perturbation(delta: np.ndarray) -> np.ndarray:
    """Map a perturbation to [0, 1] for display: 0.5 is no change, 0 and 1 the largest |delta|."""
    scale = float(np.abs(delta).max())
    return 0.5 + 0.5 * delta / scale if scale > 0 else np.full_like(delta, 0.5)


def plot_image_grid(
    originals: Sequence[np.ndarray],
    runs: Sequence[tuple[str, Sequence[np.ndarray]]],
    path: str | os.PathLike,
) -> Path:
    """Top row: originals; then, per run ``(label, adversarials)``, a row of perturbations
    (scaled, grey = unchanged) and a row of adversarial images."""
    columns = len(originals)
    rows = 1 + 2 * len(runs)
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.3 * columns + 1.5, 1.3 * rows), squeeze=False
    )
    grid = [("original", list(originals))]
    for label, adversarials in runs:
        deltas = [a - o for o, a in zip(originals, adversarials)]
        grid.append((f"{label}\nperturbation", [scaled_perturbation(d) for d in deltas]))
        grid.append((f"{label}\nadversarial", list(adversarials)))
    for r, (label, images) in enumerate(grid):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                image, cmap = _as_image(images[c])
                ax.imshow(np.clip(image, 0, 1), cmap=cmap, vmin=0, vmax=1)
        axes[r][0].set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
