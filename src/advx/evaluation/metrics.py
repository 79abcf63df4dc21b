"""Per-sample perturbation norms and run summaries (success rate, norms, fooling ratio, robust
accuracy against epsilon, cost per sample, best/average/worst case over target classes).

Norm conventions: norms are computed per sample over all non-batch dimensions of
``delta = adversarial - original``. ``l0`` counts *coordinates* (an entry of the (C, H, W) tensor,
so a colour pixel counts up to three times) whose absolute change exceeds ``L0_TOLERANCE = 1e-6``:
float32 round-off of an image in [0, 1] is about 6e-8, while the smallest meaningful change of an
8-bit image is 1/255 ~ 3.9e-3, so the tolerance separates rounding noise from real changes.
Relative norms are ``||delta||_p / ||x||_p`` (0 where both are 0, inf where only x is 0).
The elastic-net distance ``en`` is ``||delta||_2^2 + beta ||delta||_1`` with the beta of Chen et
al. (AAAI 2018), ``ELASTIC_NET_BETA = 1e-3``; it is derived from the L1 and L2 columns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

L0_TOLERANCE = 1e-6
NORM_NAMES = ("l0", "l1", "l2", "linf")
ELASTIC_NET_BETA = 1e-3
INF = float("inf")

# Budget check for bounded attacks: ||delta|| <= eps * (1 + rtol) + atol counts as within budget.
BUDGET_RTOL = 1e-4
BUDGET_ATOL = 1e-6

DEFAULT_EPSILONS: dict[str, tuple[float, ...]] = {
    "linf": (0.01, 0.03, 0.05, 0.1, 0.2, 0.3, 0.4),
    "l2": (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0),
    "l1": (1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0),
    "l0": (1.0, 5.0, 10.0, 20.0, 50.0, 100.0),
}


def norm_name(p: float) -> str:
    """Name of the Lp norm: 0 -> 'l0', 1 -> 'l1', 2 -> 'l2', inf -> 'linf', 3 -> 'l3',
    2.5 -> 'l2.5'."""
    if p == INF:
        return "linf"
    if isinstance(p, (int, float)) and not isinstance(p, bool) and (p in (0, 1) or p >= 1):
        return f"l{p:g}"
    raise ValueError(f"norm must be 0 or a number >= 1, got {p!r}")


def primary_column(norm: str) -> str:
    """The per-sample column that holds the run's own norm: ``l0`` ... ``linf``, else ``lp``."""
    return norm if norm in NORM_NAMES else "lp"


def _norms_of(values: Tensor, tolerance: float) -> dict[str, Tensor]:
    flat = values.reshape(values.shape[0], -1).double()
    magnitude = flat.abs()
    return {
        "l0": (magnitude > tolerance).sum(1).double(),
        "l1": magnitude.sum(1),
        "l2": flat.norm(p=2, dim=1),
        "linf": magnitude.amax(1) if flat.shape[1] else torch.zeros(flat.shape[0]),
    }


def perturbation_norms(
    originals: Tensor, adversarials: Tensor, tolerance: float = L0_TOLERANCE, p: float = 2.0
) -> dict[str, Tensor]:
    """Per-sample L0/L1/L2/Linf norms of ``adversarials - originals``, the relative norms
    ``rel_l0`` ... ``rel_linf`` = ||delta||_p / ||x||_p, ``lp``, the norm of the run's own
    ``p`` (any p >= 1), and the elastic-net distance ``en`` (beta = ``ELASTIC_NET_BETA``), as
    float64 (N,) tensors on the CPU."""
    if originals.shape != adversarials.shape:
        raise ValueError(
            f"adversarials has shape {tuple(adversarials.shape)}, "
            f"originals {tuple(originals.shape)}"
        )
    delta = adversarials.detach().cpu() - originals.detach().cpu()
    norms = _norms_of(delta, tolerance)
    reference = _norms_of(originals.detach().cpu(), tolerance)
    for name in NORM_NAMES:
        ratio = norms[name] / reference[name].clamp_min(1e-300)
        ratio = torch.where(norms[name] == 0, torch.zeros_like(ratio), ratio)
        ratio = torch.where((reference[name] == 0) & (norms[name] > 0), INF, ratio)
        norms[f"rel_{name}"] = ratio
    name = norm_name(p)
    if name in NORM_NAMES:
        norms["lp"] = norms[name].clone()
    else:
        norms["lp"] = delta.reshape(delta.shape[0], -1).double().norm(p=p, dim=1)
    norms["en"] = elastic_net(norms["l1"], norms["l2"])
    return norms


def elastic_net(l1, l2, beta: float = ELASTIC_NET_BETA):
    """The elastic-net distance ||delta||_2^2 + beta ||delta||_1 from the L1 and L2 norms
    (tensors or arrays; Chen et al., AAAI 2018, Eq. (16))."""
    return l2**2 + beta * l1


def within_budget(norms: np.ndarray | Tensor, eps: float) -> np.ndarray:
    """Boolean array: each norm is <= eps up to a relative 1e-4 and absolute 1e-6 tolerance."""
    values = np.asarray(norms, dtype=np.float64)
    return values <= eps * (1 + BUDGET_RTOL) + BUDGET_ATOL


def robust_accuracy_from_norms(
    correct: Sequence[bool] | np.ndarray,
    success: Sequence[bool] | np.ndarray,
    norms: Sequence[float] | np.ndarray,
    epsilons: Iterable[float],
) -> dict[float, float]:
    """Robust accuracy at each eps from a minimal-norm attack's per-sample results.

    A sample is robust at eps when it was correctly classified and no misclassified example with
    norm <= eps was found (``success`` here is "the example is misclassified", false where the
    attack failed, whatever the mode): the fraction of robust samples among all samples. This is
    an upper bound on the true robust accuracy.
    """
    correct = np.asarray(correct, dtype=bool)
    success = np.asarray(success, dtype=bool)
    norms = np.asarray(norms, dtype=np.float64)
    out = {}
    for eps in epsilons:
        broken = success & within_budget(norms, float(eps))
        robust = correct & ~broken
        out[float(eps)] = float(robust.mean()) if robust.size else math.nan
    return out


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"mean": math.nan, "median": math.nan, "max": math.nan}
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "max": float(values.max()),
    }


def summarize(
    samples: Mapping[str, Sequence | np.ndarray],
    *,
    norm: str = "linf",
    minimal_norm: bool,
    eps: float | None = None,
    epsilons: Iterable[float] | None = None,
) -> dict:
    """Summary of a run from per-sample columns.

    ``samples`` holds equal-length columns ``label``, ``clean_pred``, ``adv_pred``, ``success``
    (the verified success: prediction != label, or == target when targeted), the norms ``l0``
    ... ``linf`` and ``seconds``, ``forwards``, ``backwards`` (per-sample shares of the batch
    cost). ``norm`` names the attack's norm column.

    Returns: ``n``, ``clean_accuracy``, ``success_rate`` (over all samples), ``fooling_ratio``
    (among correctly classified inputs, the fraction whose adversarial prediction differs from
    the label), ``norm`` statistics (mean/median/max of the attack's norm, and means of every
    norm and of the elastic-net distance ``en``, over successes on correctly classified inputs;
    misclassified inputs succeed at norm 0 and are left out), ``robust_accuracy`` ({eps: accuracy}: for minimal-norm attacks from the
    per-sample norms at ``epsilons``; for bounded attacks the fraction classified correctly after
    the attack at ``eps``, counting an example outside the budget as a failure; in every mode,
    targeted included, an input stops being robust when its example is misclassified, whether or
    not it reached the target),
    ``all_within_budget`` and ``max_norm`` (bounded attacks), ``seconds_per_sample``,
    ``forwards_per_sample``, ``backwards_per_sample`` and ``queries_per_sample`` (images the
    model evaluated for each sample: counted per sample by black-box attacks' QueryModel, the
    batch's forward share otherwise).
    """
    label = np.asarray(samples["label"], dtype=np.int64)
    correct = np.asarray(samples["clean_pred"], dtype=np.int64) == label
    adv_pred = np.asarray(samples["adv_pred"], dtype=np.int64)
    success = np.asarray(samples["success"], dtype=bool)
    primary = np.asarray(samples[primary_column(norm)], dtype=np.float64)
    misclassified = adv_pred != label
    n = int(label.size)
    counted = success & correct
    summary: dict = {
        "n": n,
        "norm": norm,
        "minimal_norm": bool(minimal_norm),
        "clean_accuracy": float(correct.mean()) if n else math.nan,
        "success_rate": float(success.mean()) if n else math.nan,
        "fooling_ratio": float((adv_pred[correct] != label[correct]).mean())
        if correct.any()
        else math.nan,
        "norm_stats": _stats(primary[counted]),
        "mean_norms": {
            name: float(np.asarray(samples[name], dtype=np.float64)[counted].mean())
            if counted.any()
            else math.nan
            for name in NORM_NAMES
        },
    }
    en = elastic_net(
        np.asarray(samples["l1"], dtype=np.float64), np.asarray(samples["l2"], dtype=np.float64)
    )
    summary["mean_norms"]["en"] = float(en[counted].mean()) if counted.any() else math.nan
    if minimal_norm:
        grid = DEFAULT_EPSILONS.get(norm, ()) if epsilons is None else epsilons
        summary["robust_accuracy"] = robust_accuracy_from_norms(
            correct, misclassified, primary, grid
        )
    elif eps is not None:
        inside = within_budget(primary, eps)
        robust = correct & ~(misclassified & inside)
        summary["robust_accuracy"] = {float(eps): float(robust.mean()) if n else math.nan}
        summary["all_within_budget"] = bool(inside.all())
        summary["max_norm"] = float(primary.max()) if n else math.nan
        summary["eps"] = float(eps)
    else:
        summary["robust_accuracy"] = {}
    for column in ("seconds", "forwards", "backwards", "queries"):
        if column not in samples:
            continue
        values = np.asarray(samples[column], dtype=np.float64)
        summary[f"{column}_per_sample"] = float(values.mean()) if n else math.nan
    return summary


def target_case_summary(norms: np.ndarray | Tensor | Sequence[Sequence[float]]) -> dict:
    """Best / average / worst case over target classes (Carlini & Wagner 2017, Sec. VI).

    ``norms`` is (N, T): the norm of the adversarial example for sample i and target t, inf where
    the attack failed. Best case: the easiest target per sample (success if any target
    succeeded, norm = the minimum). Worst case: the hardest target (success only if all targets
    succeeded, norm = the maximum). Average case: a target drawn uniformly, i.e. success rate
    over all (sample, target) pairs and mean norm over the successful pairs. Each case gives
    ``success_rate`` and ``mean_norm`` (over successes; nan if none).
    """
    values = np.asarray(norms, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError(f"norms must have shape (N, T) with T >= 1, got {values.shape}")
    finite = np.isfinite(values)

    def case(success: np.ndarray, chosen: np.ndarray) -> dict[str, float]:
        rate = float(success.mean()) if success.size else math.nan
        mean = float(chosen[success].mean()) if success.any() else math.nan
        return {"success_rate": rate, "mean_norm": mean}

    return {
        "best": case(finite.any(1), values.min(1)),
        "average": case(finite.reshape(-1), values.reshape(-1)),
        "worst": case(finite.all(1), values.max(1)),
    }


def target_case_norms(
    norms: Mapping[str, Sequence[float] | np.ndarray],
    success: Sequence[bool] | np.ndarray,
    targets_per_sample: int,
    by: str,
) -> dict:
    """Best / average / worst case over target classes with every norm of the chosen target
    (Chen et al., AAAI 2018, Sec. 4.3.2; Carlini & Wagner 2017, Sec. VI).

    ``norms`` maps norm names (``l1``, ``l2``, ``linf``, ``en`` ...) to per-pair values and
    ``success`` marks the successful pairs, sample-major: ``targets_per_sample`` consecutive
    pairs per sample (the order of ``advx.attacks.all_targets``). The best (worst) case takes per
    sample the successful target with the least (largest) norm ``by``; best succeeds when any
    target did, worst only when all did. The average case is a uniformly drawn target: success
    over all pairs, norms averaged over the successful pairs. Each case gives ``success_rate``
    and the mean of every norm over its successes (nan if none).
    """
    success = np.asarray(success, dtype=bool)
    if success.size % targets_per_sample:
        raise ValueError(
            f"{success.size} pairs do not split into samples of {targets_per_sample} targets"
        )
    values = {
        name: np.asarray(v, dtype=np.float64).reshape(-1, targets_per_sample)
        for name, v in norms.items()
    }
    ok = success.reshape(-1, targets_per_sample)
    key = np.where(ok, values[by], np.inf)
    rows = np.arange(key.shape[0])

    def case(fooled: np.ndarray, picked: dict[str, np.ndarray]) -> dict[str, float]:
        out = {"success_rate": float(fooled.mean()) if fooled.size else math.nan}
        for name, chosen in picked.items():
            out[name] = float(chosen[fooled].mean()) if fooled.any() else math.nan
        return out

    best, worst = key.argmin(1), np.where(ok, values[by], -np.inf).argmax(1)
    return {
        "best": case(ok.any(1), {n: v[rows, best] for n, v in values.items()}),
        "average": case(ok.reshape(-1), {n: v.reshape(-1) for n, v in values.items()}),
        "worst": case(ok.all(1), {n: v[rows, worst] for n, v in values.items()}),
    }
