"""Plots with matplotlib (Agg backend): robust accuracy against epsilon, norm against time per
sample, and grids of original / perturbation / adversarial images.

Every figure colours an attack the same way (:func:`attack_colour`, a fixed map for the
registered attacks and a stable hash for others), carries a title naming the model, the data
and the number of samples, and a legend. Bounded attacks are drawn as their measured points only;
minimal-norm attacks as the step curve read off their per-sample norms.
"""

from __future__ import annotations

import io
import os
import textwrap
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter  # noqa: E402

NORM_LABELS = {"l0": "L0", "l1": "L1", "l2": "L2", "linf": "L∞"}
NORM_ORDER = ("l0", "l1", "l2", "linf")

# One colour per attack in every figure (tab20 and tab10 entries, chosen to differ).
ATTACK_COLOURS = {
    "fgm": "#1f77b4",
    "ifgm": "#aec7e8",
    "bim": "#17becf",
    "pgd": "#ff7f0e",
    "deepfool": "#2ca02c",
    "cw-l2": "#d62728",
    "ddn": "#9467bd",
    "anu": "#c5b0d5",
    "lbfgs": "#8c564b",
    "trust-region": "#e377c2",
    "gn": "#7f7f7f",
    "gn-iterative": "#bcbd22",
    "gn-simple": "#dbdb8d",
    "bernoulli": "#9edae5",
    "fmn": "#ff9896",
    "ead": "#98df8a",
}
_FALLBACK = plt.get_cmap("tab20").colors
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def attack_colour(attack: str) -> str | tuple:
    """The colour of ``attack`` in every figure: a fixed entry for the known attacks, else a
    tab20 colour picked by a stable hash (CRC-32) of the name."""
    key = attack.strip().lower().replace("_", "-")
    if key in ATTACK_COLOURS:
        return ATTACK_COLOURS[key]
    return _FALLBACK[zlib.crc32(key.encode()) % len(_FALLBACK)]


@dataclass
class Curve:
    """Robust accuracy against epsilon for one run (or one group of bounded runs)."""

    label: str
    norm: str
    epsilons: np.ndarray
    accuracy: np.ndarray
    steps: bool = False  # a step function read off minimal norms; else measured points only
    attack: str = ""


@dataclass
class CostPoint:
    """One attack's mean norm against its seconds per sample."""

    label: str
    norm: str
    seconds: float
    mean_norm: float
    attack: str = ""


@dataclass
class GridRow:
    """One run's images for :func:`plot_image_grid`: adversarials and, per image, the class
    after the attack and whether the attack succeeded."""

    label: str
    adversarials: Sequence[np.ndarray]
    predictions: Sequence[str] = field(default_factory=list)
    success: Sequence[bool] = field(default_factory=list)


def _norm_axes(norms: Sequence[str], width: float = 5.2, height: float = 4.2):
    order = [n for n in NORM_ORDER if n in norms] or ["linf"]
    size = (max(width * len(order), 7.5), height)
    fig, axes = plt.subplots(1, len(order), figsize=size, squeeze=False)
    return fig, dict(zip(order, axes[0]))


def _title(fig, title: str | None) -> None:
    """A suptitle wrapped to the figure's width (about 11 characters per inch at 11 pt)."""
    if title:
        width = int(fig.get_size_inches()[0] * 11)
        fig.suptitle(textwrap.fill(title, width=max(width, 30)), fontsize=11)


def _finish_legend(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7, loc="best", framealpha=0.85)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def plot_robust_accuracy(
    curves: Sequence[Curve], path: str | os.PathLike | None = None, title: str | None = None
):
    """Robust accuracy against epsilon, one panel per norm, one colour per attack: minimal-norm
    runs as step curves, bounded runs as their measured points only (markers, no line).

    Args:
        curves: the curves (see :class:`Curve`).
        path: where to save the PNG; ``None`` returns the figure's PNG bytes instead.
        title: the figure title (model, data, n).
    """
    fig, axes = _norm_axes({c.norm for c in curves})
    for curve in curves:
        ax = axes[curve.norm]
        colour = attack_colour(curve.attack or curve.label.split()[0])
        if curve.steps:
            ax.step(curve.epsilons, curve.accuracy, where="post", label=curve.label, color=colour)
        else:
            ax.plot(
                curve.epsilons,
                curve.accuracy,
                linestyle="none",
                marker="o",
                markersize=7,
                label=curve.label,
                color=colour,
            )
    for norm, ax in axes.items():
        ax.set_title(f"{NORM_LABELS.get(norm, norm)} perturbations", fontsize=9)
        ax.set_xlabel(f"epsilon ({NORM_LABELS.get(norm, norm)} norm)")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.03, 1.03)
        top = max(
            (float(np.max(c.epsilons)) for c in curves if c.norm == norm and len(c.epsilons)),
            default=1.0,
        )
        ax.set_xlim(0, top * 1.08 if top > 0 else 1.0)
        ax.grid(alpha=0.3)
        _finish_legend(ax)
    _title(fig, title)
    fig.tight_layout()
    return _save(fig, path)


def _seconds_text(value: float, _position=None) -> str:
    if value <= 0:
        return ""
    if value >= 1:
        return f"{value:g} s"
    if value >= 1e-3:
        return f"{value * 1e3:g} ms"
    return f"{value * 1e6:g} µs"


def _mantissa(value: float) -> float:
    return round(value / 10 ** np.floor(np.log10(value)), 6) if value > 0 else 0.0


def _log_ticks(low: float, high: float, mantissas: Sequence[int]) -> list[float]:
    """m x 10^k for the given mantissas m, within [low, high]."""
    ticks = []
    for k in range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1):
        ticks += [m * 10.0**k for m in mantissas if low <= m * 10.0**k <= high]
    return ticks


def log_seconds_axis(ax, low: float | None = None, high: float | None = None) -> None:
    """A log x-axis of seconds labelled in units (1 ms, 10 ms, 0.1 s, 1 s, ...) at powers of ten
    and, when it spans less than two decades, also at 2 and 5 times them; other minor ticks
    unlabelled, so labels never overlap. With ``low``/``high`` the axis is set to that range,
    widened about its geometric centre to at least one decade."""
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(_seconds_text))
    if low is None or high is None or low <= 0 or high <= low:
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=8))
        ax.xaxis.set_minor_formatter(NullFormatter())
        return
    if high / low < 10:
        centre = np.sqrt(low * high)
        low, high = centre / np.sqrt(10), centre * np.sqrt(10)
    ax.set_xlim(low, high)
    decades = _log_ticks(low, high, [1])
    step = max(1, int(np.ceil(len(decades) / 8)))  # at most about 8 labelled decades
    ax.xaxis.set_major_locator(FixedLocator(decades[::step]))
    ax.xaxis.set_minor_locator(FixedLocator(_log_ticks(low, high, range(2, 10))))
    if high / low < 100:
        ax.xaxis.set_minor_formatter(
            FuncFormatter(lambda v, p: _seconds_text(v) if _mantissa(v) in (2.0, 5.0) else "")
        )
    else:
        ax.xaxis.set_minor_formatter(NullFormatter())


def plot_norm_vs_time(
    points: Sequence[CostPoint], path: str | os.PathLike | None = None, title: str | None = None
):
    """Mean norm of the successful examples against seconds per sample, one point per run, one
    colour per attack (its runs told apart by marker), one panel per norm; log time axis
    labelled at powers of ten.

    Args:
        points: the runs (see :class:`CostPoint`).
        path: where to save the PNG; ``None`` returns the figure's PNG bytes instead.
        title: the figure title (model, data, n).
    """
    fig, axes = _norm_axes({p.norm for p in points})
    seen: dict[tuple[str, str], int] = {}
    for point in points:
        ax = axes[point.norm]
        attack = point.attack or point.label.split()[0]
        # one colour per attack; runs of one attack in one panel differ by marker
        k = seen[(point.norm, attack)] = seen.get((point.norm, attack), -1) + 1
        ax.scatter(
            [point.seconds],
            [point.mean_norm],
            marker=MARKERS[k % len(MARKERS)],
            s=45,
            color=attack_colour(attack),
            label=point.label,
            edgecolors="black",
            linewidths=0.4,
            zorder=3,
        )
    for norm, ax in axes.items():
        seconds = [p.seconds for p in points if p.norm == norm and p.seconds > 0]
        if seconds:
            log_seconds_axis(ax, min(seconds) / 2.5, max(seconds) * 2.5)
        else:
            log_seconds_axis(ax)
        ax.set_xlabel("seconds per sample (log scale)")
        ax.set_ylabel(f"mean {NORM_LABELS.get(norm, norm)} norm of successes")
        ax.set_title(f"{NORM_LABELS.get(norm, norm)} perturbations", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        _finish_legend(ax)
    _title(fig, title)
    fig.tight_layout()
    return _save(fig, path)


def _as_image(array: np.ndarray) -> tuple[np.ndarray, str | None]:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        return array[0], "gray"
    if array.ndim == 3:
        return np.transpose(array, (1, 2, 0)), None
    if array.ndim == 1:  # a flat (D,) input shown as the nearest square
        side = int(np.ceil(np.sqrt(array.size)))
        padded = np.zeros(side * side, dtype=np.float32)
        padded[: array.size] = array
        return padded.reshape(side, side), "gray"
    return array, "gray"


def perturbation_scale(deltas: Sequence[np.ndarray]) -> float:
    """The largest |delta| over a row of perturbations (the grey scale's end points)."""
    return max((float(np.abs(d).max()) for d in deltas), default=0.0)


def scaled_perturbation(delta: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Map a perturbation to [0, 1] for display: 0.5 is no change, 0 and 1 are -scale and
    +scale (default: the largest |delta|)."""
    scale = float(np.abs(delta).max()) if scale is None else float(scale)
    return 0.5 + 0.5 * delta / scale if scale > 0 else np.full_like(delta, 0.5)


def _plain(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def plot_image_grid(
    originals: Sequence[np.ndarray],
    runs: Sequence[GridRow | tuple[str, Sequence[np.ndarray]]],
    path: str | os.PathLike | None = None,
    true_classes: Sequence[str] | None = None,
    title: str | None = None,
):
    """Top row: originals (captioned with their true class); then, per run, a row of
    perturbations on one grey scale per run (grey = unchanged, black/white = -/+ the largest
    |delta|, stated in the row label) and a row of adversarials captioned with the class after
    the attack and a success mark (✓ fooled / ✗ not).

    Args:
        originals: the clean images, (C, H, W) or (H, W) arrays in [0, 1].
        runs: a :class:`GridRow` per run (a ``(label, adversarials)`` pair is accepted).
        path: where to save the PNG; ``None`` returns the figure's PNG bytes instead.
        true_classes: the caption of each original.
        title: the figure title (model, data, n).
    """
    rows_in = [r if isinstance(r, GridRow) else GridRow(r[0], r[1]) for r in runs]
    columns = max(len(originals), 1)
    rows = 1 + 2 * len(rows_in)
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.25 * columns + 2.2, 1.45 * rows + 0.5), squeeze=False
    )
    for c in range(columns):
        ax = axes[0][c]
        _plain(ax)
        if c < len(originals):
            image, cmap = _as_image(originals[c])
            ax.imshow(np.clip(image, 0, 1), cmap=cmap, vmin=0, vmax=1)
            if true_classes is not None and c < len(true_classes):
                ax.set_title(f"true {true_classes[c]}", fontsize=7)
    axes[0][0].set_ylabel("original", fontsize=7, rotation=0, ha="right", va="center")
    for k, row in enumerate(rows_in):
        deltas = [a - o for o, a in zip(originals, row.adversarials)]
        scale = perturbation_scale(deltas)
        delta_axes, adv_axes = axes[1 + 2 * k], axes[2 + 2 * k]
        for c in range(columns):
            _plain(delta_axes[c])
            _plain(adv_axes[c])
            if c >= len(deltas):
                continue
            image, _ = _as_image(scaled_perturbation(deltas[c], scale))
            delta_axes[c].imshow(
                np.clip(image, 0, 1), cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1
            )
            adv, cmap = _as_image(row.adversarials[c])
            adv_axes[c].imshow(np.clip(adv, 0, 1), cmap=cmap, vmin=0, vmax=1)
            if c < len(row.predictions):
                fooled = bool(row.success[c]) if c < len(row.success) else False
                truth = true_classes[c] if true_classes is not None else None
                if fooled:
                    caption = f"✓ now {row.predictions[c]}"
                elif row.predictions[c] == truth:
                    caption = f"✗ still {truth}"
                else:
                    caption = f"✗ now {row.predictions[c]}"
                adv_axes[c].set_title(
                    caption,
                    fontsize=7,
                    color="#b00000" if fooled else "#333333",
                )
        delta_axes[0].set_ylabel(
            f"{row.label}\nperturbation\ngrey = 0, black/white\n= ∓{scale:.3g}",
            fontsize=6,
            rotation=0,
            ha="right",
            va="center",
        )
        adv_axes[0].set_ylabel(
            f"{row.label}\nadversarial", fontsize=6, rotation=0, ha="right", va="center"
        )
    _title(fig, title)
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / height) if title else None)
    return _save(fig, path)


def _save(fig, path: str | os.PathLike | None):
    """Save as PNG to ``path`` (returned as a Path) or, without a path, return the PNG bytes."""
    if path is None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        return buffer.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
