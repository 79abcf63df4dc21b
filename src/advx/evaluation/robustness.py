"""Robustness measures of Balda, Behboodi & Mathar (2018, Section II and Table I).

* ``rho1``: mean relative minimal perturbation ||r(x)||_p / ||x||_p (Moosavi-Dezfooli et al.
  2016, quoted in Section II), with r(x) from a minimal-norm attack passed as a callable
  (DeepFool in the paper).
* ``rho2``: mean of L(x) / ||grad L(x)||_q, the lower bound of Proposition 1 (Eq. 5) on the
  Lp norm any linearised adversarial perturbation must have, with L the margin of Eq. (3).
* ``min_eps_for_fooling``: the smallest eps at which a bounded attack reaches a fooling ratio
  above 99% (the last column of Table I), by a grid scan refined by bisection; and
  ``eps_for_fooling_from_norms`` for the same figure read off a minimal-norm attack's norms.

The fooling ratio (DeepFool, Section IV of the paper) is the fraction of correctly classified
inputs that the attack makes misclassified; it is always re-checked with a fresh forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from advx.attacks._core import (
    INF,
    NormLike,
    attack_mode,
    check_positive,
    dual_exponent,
    lp_norm,
    parse_norm,
    validate,
)
from advx.attacks.convex import all_class_gradients, linearised_loss, margin_pieces

Attack = Callable[..., Tensor]


def _predict(model: nn.Module, inputs: Tensor) -> Tensor:
    with attack_mode(model), torch.no_grad():
        return model(inputs).argmax(1)


def _correct_mask(model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
    return _predict(model, inputs) == labels


def fooling_ratio(model: nn.Module, inputs: Tensor, labels: Tensor, adversarials: Tensor) -> float:
    """Fraction of the correctly classified ``inputs`` whose ``adversarials`` are misclassified
    (a fresh forward pass decides). NaN when no input is correctly classified."""
    correct = _correct_mask(model, inputs, labels)
    if not bool(correct.any()):
        return math.nan
    fooled = _predict(model, adversarials[correct]) != labels[correct]
    return fooled.float().mean().item()


def relative_perturbations(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    attack: Attack,
    *,
    norm: NormLike = INF,
) -> Tensor:
    """Per-sample ||adv - x||_p / ||x||_p for the minimal-norm ``attack(model, inputs, labels)``;
    NaN where the returned example is not misclassified (the attack failed)."""
    p = parse_norm(norm, allowed=None)
    validate(model, inputs, labels)
    adversarials = attack(model, inputs, labels)
    fooled = _predict(model, adversarials) != labels
    ratio = lp_norm(adversarials - inputs, p) / lp_norm(inputs, p).clamp_min(1e-12)
    return torch.where(fooled, ratio, torch.full_like(ratio, math.nan))


def rho1(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    attack: Attack,
    *,
    norm: NormLike = INF,
    correct_only: bool = True,
) -> float:
    """rho_1(f) = mean over the data of ||r(x)||_p / ||x||_p (DeepFool's robustness measure,
    Balda et al. 2018, Section II; Table I with p = inf), r(x) the perturbation found by the
    minimal-norm ``attack`` (a callable ``attack(model, inputs, labels) -> adversarials``, e.g.
    ``functools.partial(deepfool, norm=inf)``). Averaged over the correctly classified inputs
    (``correct_only``) on which the attack succeeded; NaN if there are none."""
    ratios = relative_perturbations(model, inputs, labels, attack, norm=norm)
    if correct_only:
        ratios = ratios[_correct_mask(model, inputs, labels)]
    ratios = ratios[~ratios.isnan()]
    return ratios.mean().item() if ratios.numel() else math.nan


def linearised_bounds(
    model: nn.Module,
    inputs: Tensor,
    *,
    norm: NormLike = INF,
    margin: str = "logits",
    pieces: str = "all",
) -> Tensor:
    """Per-sample Proposition 1 bound (Eq. 5): the smallest eps for which the linearised
    problem (GN) is feasible at x, with L the margin of Eq. (3) at the predicted class k(x) and
    q the dual exponent of p.

    ``pieces='all'`` (default): min_{l != k} (f_k - f_l) / ||grad f_k - grad f_l||_q, the bound
    for the linearisation of every piece of the Eq. (3) minimum (what Algorithm 1 solves, and
    the authors' reference computation of rho_2); on a linear classifier with logits it is the
    exact minimal distance to the decision boundary. ``pieces='active'``: L(x) / ||grad L(x)||_q
    with the gradient of the active piece only, the literal reading of Eq. (5); it is >= the
    'all' value. ``margin`` as in ``advx.attacks.convex.gn``. inf where a gradient vanishes.
    """
    if pieces not in ("all", "active"):
        raise ValueError(f"pieces must be 'all' or 'active', got {pieces!r}")
    p = parse_norm(norm, allowed=None)
    predicted = _predict(model, inputs)
    validate(model, inputs, predicted)
    q = dual_exponent(p)
    with attack_mode(model):
        if pieces == "active":
            value, grad = linearised_loss(model, inputs, predicted, margin=margin)
            return _ratio(value, lp_norm(grad, q))
        scores, grads = all_class_gradients(model, inputs, margin=margin)
    values, piece_grads = margin_pieces(scores, grads, predicted)
    n, k, d = piece_grads.shape
    ratios = _ratio(values.flatten(), lp_norm(piece_grads.reshape(n * k, d), q))
    return ratios.reshape(n, k).amin(1)


def _ratio(value: Tensor, grad_norm: Tensor) -> Tensor:
    return torch.where(
        grad_norm > 0, value / grad_norm.clamp_min(1e-30), torch.full_like(value, INF)
    )


def rho2(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor | None = None,
    *,
    norm: NormLike = INF,
    margin: str = "logits",
    pieces: str = "all",
) -> float:
    """rho_2(f) = mean over the data of L(x) / ||grad L(x)||_q (Balda et al. 2018, Section II,
    from Proposition 1; Table I with p = inf, q = 1), per sample as in ``linearised_bounds``.
    With ``labels``, only correctly classified inputs count. Samples with a vanishing gradient
    (bound inf) are left out; NaN if none is left."""
    bounds = linearised_bounds(model, inputs, norm=norm, margin=margin, pieces=pieces)
    if labels is not None:
        validate(model, inputs, labels)
        bounds = bounds[_correct_mask(model, inputs, labels)]
    bounds = bounds[torch.isfinite(bounds)]
    return bounds.mean().item() if bounds.numel() else math.nan


def eps_for_fooling_from_norms(norms: Tensor, threshold: float = 0.99) -> float:
    """Smallest eps at which a minimal-norm attack with per-sample ``norms`` (inf or NaN where
    it failed) fools more than ``threshold`` of the samples: the norm of rank
    floor(threshold * n) + 1 in increasing order. inf if that many were never fooled."""
    check_positive(threshold, "threshold")
    values = norms.detach().flatten().nan_to_num(nan=INF).sort().values
    needed = math.floor(threshold * values.numel()) + 1
    if needed > values.numel():
        return INF
    return values[needed - 1].item()


def _ratio_at(model, inputs, labels, attack: Attack, eps: float) -> float:
    return fooling_ratio(model, inputs, labels, attack(model, inputs, labels, eps=eps))


def min_eps_for_fooling(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    attack: Attack,
    *,
    threshold: float = 0.99,
    eps_grid: Sequence[float] | None = None,
    bisection_steps: int = 8,
) -> float:
    """Smallest eps with fooling ratio > ``threshold`` for a bounded ``attack(model, inputs,
    labels, eps=...)`` (Balda et al. 2018, Table I, "fooled > 99%").

    Scans ``eps_grid`` (default: 20 points 0.005 ... 1.0, geometric) in increasing order for
    the first eps that reaches the threshold, then bisects ``bisection_steps`` times between it
    and the previous grid point. Assumes the fooling ratio grows with eps (not guaranteed for
    single-step attacks). Returns inf when no grid point reaches it; only correctly classified
    inputs count.
    """
    validate(model, inputs, labels)
    grid = sorted(eps_grid) if eps_grid is not None else _default_grid()
    if not grid or grid[0] < 0:
        raise ValueError("eps_grid must be a non-empty sequence of values >= 0")
    lower = 0.0
    for eps in grid:
        if _ratio_at(model, inputs, labels, attack, eps) > threshold:
            return _bisect(model, inputs, labels, attack, threshold, lower, eps, bisection_steps)
        lower = eps
    return INF


def _default_grid() -> list[float]:
    return torch.logspace(math.log10(0.005), 0.0, 20, dtype=torch.float64).tolist()


def _bisect(model, inputs, labels, attack, threshold, lower, upper, steps) -> float:
    for _ in range(steps):
        middle = (lower + upper) / 2
        if _ratio_at(model, inputs, labels, attack, middle) > threshold:
            upper = middle
        else:
            lower = middle
    return upper
