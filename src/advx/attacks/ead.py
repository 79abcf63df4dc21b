"""EAD, the elastic-net attack (Chen, Sharma, Zhang, Yi & Hsieh, "EAD: elastic-net attacks to deep
neural networks via adversarial examples", AAAI 2018; thesis chapter 4, Algorithm 4), and COV, the
change-of-variable baseline of its Table 5.

EAD solves  min_x  c * f(x, t) + beta * ||x - x0||_1 + ||x - x0||_2^2  s.t.  x in [0, 1]^p
(Eq. (16)), f the C&W margin loss on logits, by projected ISTA/FISTA: a gradient step on the
smooth part g(x) = c * f(x) + ||x - x0||_2^2 followed by the projected shrinkage-thresholding
operator S_beta (Eq. (18)), the proximal operator of the L1 term restricted to the box.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._core import (
    DECISION_RULES,
    BatchRows,
    EpsLike,
    attack_mode,
    binary_search_step,
    check_int,
    check_positive,
    contract,
    decision_distance,
    flat,
    margin,
    per_sample,
    validate,
    view_like,
)
from .cw import _Settings as _CWSettings
from .cw import cw_success, search_constant

_NO_BOUND = 1e10
_LR_POWER = 0.5  # the reference code's polynomial decay of the step size (square root)


def shrinkage_threshold(z: Tensor, inputs: Tensor, beta: float) -> Tensor:
    """The projected shrinkage-thresholding operator S_beta of Eq. (18) (thesis, Sec. 4.2.3):

    [S_beta(z)]_i = min(z_i - beta, 1)   if z_i - x0_i >  beta,
                    x0_i                 if |z_i - x0_i| <= beta,
                    max(z_i + beta, 0)   if z_i - x0_i < -beta,

    i.e. argmin_{u in [0,1]^p} 1/2 ||u - z||_2^2 + beta ||u - x0||_1 (Eq. (20)).

    Args:
        z: the point after the gradient step, shape of ``inputs``.
        inputs: the original images x0, in [0, 1].
        beta: the L1 threshold (>= 0).
    """
    diff = z - inputs
    shrunk_up = (z - beta).clamp_max(1.0)
    shrunk_down = (z + beta).clamp_min(0.0)
    return torch.where(diff > beta, shrunk_up, torch.where(diff < -beta, shrunk_down, inputs))


def elastic_net_distance(delta: Tensor, beta: float) -> Tensor:
    """beta * ||delta||_1 + ||delta||_2^2 per sample (the EN distance of Chen et al. 2018)."""
    d = flat(delta)
    return d.square().sum(1) + beta * d.abs().sum(1)


def step_size(lr: float, k: int, steps: int) -> float:
    """alpha_k = lr * (1 - k / steps) ** 0.5: the square-root polynomial decay of the reference
    code (tf.train.polynomial_decay to 0 over ``steps`` iterations, power 0.5)."""
    return lr * (1.0 - k / steps) ** _LR_POWER


@dataclass(frozen=True)
class _Settings:
    targeted: bool
    beta: float
    steps: int
    lr: float
    rule: str
    fista: bool
    abort_early: bool


@dataclass
class _Rows(BatchRows):
    """The samples still iterating in one round of the binary search (compacted as they stop)."""

    index: Tensor  # positions in the round's batch
    inputs: Tensor
    labels: Tensor
    const: Tensor
    confidence: Tensor
    x: Tensor  # the iterate x_k
    y: Tensor  # the slack point y_k
    best_x: Tensor
    best_dist: Tensor
    found: Tensor
    previous_loss: Tensor


def _gradient_of_smooth_part(model: nn.Module, y: Tensor, rows: _Rows, targeted: bool) -> Tensor:
    """grad g(y) with g(y) = c * max(margin(y) + kappa, 0) + ||y - x0||_2^2 (one forward and one
    backward pass; the squared distance is differentiated in closed form)."""
    y = y.detach().requires_grad_(True)
    with torch.enable_grad():
        margins = margin(model(y), rows.labels, targeted)
        hinge = (rows.const * (margins + rows.confidence).clamp_min(0)).sum()
        (grad,) = torch.autograd.grad(hinge, y)
    return grad + 2 * (y.detach() - rows.inputs)


def _rounding_slack(logits: Tensor) -> Tensor:
    """A few units of round-off of the logits, 4 eps (1 + max |z|) per sample: an iterate counts
    as adversarial only when its margin beats kappa by more than that, so that the verdict does
    not flip in a forward pass on another batch (a different batch size changes the summation
    order; the L2-optimal iterate lies right at the boundary)."""
    return 4 * torch.finfo(logits.dtype).eps * (1 + logits.abs().amax(1))


def _judge(model: nn.Module, rows: _Rows, settings: _Settings, every: bool) -> Tensor | None:
    """Judge the iterate x_k (never the slack point y_k) by a fresh forward pass, success with
    margin kappa per sample, and keep the best successful iterate.

    Only rows whose verdict can matter are passed through the model: those with no success yet
    in this round, or whose distance is below their best (any other success changes nothing).
    With ``every`` all rows are judged and the attack loss at x_k (the early-abort criterion,
    c f(x_k) + ||d||_2^2 + beta ||d||_1) is returned."""
    delta = flat(rows.x - rows.inputs)
    l1, squared = delta.abs().sum(1), delta.square().sum(1)
    dist = decision_distance(l1, squared, settings.beta, settings.rule)
    better = dist < rows.best_dist
    if every:
        judged = None
    else:
        judged = (~rows.found | better).nonzero().squeeze(1)
        if judged.numel() == 0:
            return None
        if judged.numel() == rows.index.numel():
            judged = None
    x = rows.x if judged is None else rows.x[judged]
    labels = rows.labels if judged is None else rows.labels[judged]
    with torch.no_grad():
        logits = model(x)
        margins = margin(logits, labels, settings.targeted) + _rounding_slack(logits)
    if judged is not None:
        margins = torch.full_like(dist, float("inf")).index_copy(0, judged, margins)
    success = cw_success(margins, rows.confidence)
    better = success & better
    rows.best_x = torch.where(view_like(better, rows.x), rows.x, rows.best_x)
    rows.best_dist = torch.where(better, dist, rows.best_dist)
    rows.found = rows.found | success
    if not every:
        return None
    return rows.const * (margins + rows.confidence).clamp_min(0) + squared + settings.beta * l1


def _write_back(out: tuple[Tensor, Tensor, Tensor], rows: _Rows) -> None:
    best_x, best_dist, found = out
    best_x[rows.index] = rows.best_x
    best_dist[rows.index] = rows.best_dist
    found[rows.index] = rows.found


def _fista_round(
    model: nn.Module, rows: _Rows, settings: _Settings
) -> tuple[Tensor, Tensor, Tensor]:
    """``settings.steps`` iterations of Algorithm 4 for one constant per sample:

    x_{k+1} = S_beta(y_k - alpha_k grad g(y_k)),  y_{k+1} = x_{k+1} + k/(k+3) (x_{k+1} - x_k)
    (ISTA: y_{k+1} = x_{k+1}). Each x_{k+1} is judged by its own forward pass. With abort_early
    a sample stops when its loss at x_k has not fallen by 0.01% over steps // 10 iterations (the
    reference code's rule at its batch size of one) and leaves the batch.

    Returns the best successful iterate, its distance and whether any iterate succeeded."""
    n = rows.index.shape[0]
    out = (rows.best_x.clone(), rows.best_dist.clone(), rows.found.clone())
    check_every = max(settings.steps // 10, 1)
    for k in range(settings.steps):
        grad = _gradient_of_smooth_part(model, rows.y, rows, settings.targeted)
        x_next = shrinkage_threshold(
            rows.y - step_size(settings.lr, k, settings.steps) * grad, rows.inputs, settings.beta
        )
        if settings.fista:
            rows.y = x_next + (k / (k + 3.0)) * (x_next - rows.x)
        else:
            rows.y = x_next
        rows.x = x_next
        check = settings.abort_early and k % check_every == 0
        loss = _judge(model, rows, settings, every=check)
        if check:
            stalled = loss > rows.previous_loss * 0.9999
            rows.previous_loss = loss
            if bool(stalled.any()):
                _write_back(out, rows.keep(stalled))
                rows = rows.keep(~stalled)
                if rows.index.shape[0] == 0:
                    break
    if rows.index.shape[0] > 0 or n == 0:
        _write_back(out, rows)
    return out


def _start_rows(
    inputs: Tensor, labels: Tensor, const: Tensor, confidence: Tensor, best: tuple[Tensor, Tensor]
) -> _Rows:
    n = inputs.shape[0]
    return _Rows(
        index=torch.arange(n, device=inputs.device),
        inputs=inputs,
        labels=labels,
        const=const,
        confidence=confidence,
        x=inputs.clone(),
        y=inputs.clone(),
        best_x=best[0].clone(),
        best_dist=best[1].clone(),
        found=torch.zeros(n, dtype=torch.bool, device=inputs.device),
        previous_loss=torch.full_like(const, float("inf")),
    )


def _check_ead_arguments(beta, c_init, binary_search_steps, steps, lr, decision_rule) -> None:
    check_positive(beta, "beta", allow_zero=True)
    check_positive(c_init, "c_init")
    check_int(binary_search_steps, "binary_search_steps", 1)
    check_int(steps, "steps", 1)
    check_positive(lr, "lr")
    if decision_rule not in DECISION_RULES:
        raise ValueError(f"decision_rule must be one of {DECISION_RULES}, got {decision_rule!r}")


@contract
def ead(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    targeted: bool = False,
    beta: float = 1e-3,
    confidence: EpsLike = 0.0,
    c_init: float = 1e-3,
    binary_search_steps: int = 9,
    steps: int = 1000,
    lr: float = 0.01,
    decision_rule: str = "en",
    fista: bool = True,
    abort_early: bool = True,
) -> Tensor:
    """Elastic-net attack EAD (Chen et al., AAAI 2018; thesis Algorithm 4, Eqs. (16)-(18)).

    Minimises c * f(x) + beta ||x - x0||_1 + ||x - x0||_2^2 over the box [0, 1]^p with f the
    C&W margin loss on the model's logits, f = max(z_y - max_{j != y} z_j + kappa, 0) untargeted
    or max(max_{j != t} z_j - z_t + kappa, 0) targeted (``labels`` are then the targets), by
    FISTA (or ISTA with ``fista=False``) from x_0 = y_0 = x0 with the projected shrinkage-
    thresholding operator S_beta of Eq. (18) and the step size alpha_k = lr (1 - k/steps)^0.5.
    The iterate x_k (not the slack point y_k) is judged by its own forward pass; among the
    successful iterates of all rounds the decision rule keeps the one with the least elastic-net
    distance (``'en'``, beta ||d||_1 + ||d||_2^2), L1 (``'l1'``) or L2 (``'l2'``) distortion.
    c starts at ``c_init`` and is binary-searched per sample (x10 while no success is known),
    the last of 10 or more rounds repeating at the upper bound, as in the reference code.

    Args:
        model: returns logits (N, K); a model returning probabilities is refused.
        inputs: images in [0, 1], (N, ...).
        labels: true classes, or target classes when ``targeted``.
        targeted: attack towards ``labels``.
        beta: the L1 weight and the threshold of S_beta (>= 0; 0 is C&W's objective).
        confidence: the margin kappa in logits, a float or one value per sample.
        c_init: initial constant c.
        binary_search_steps: rounds of the search on c.
        steps: iterations per round (I).
        lr: the initial step size alpha_0.
        decision_rule: ``'en'``, ``'l1'`` or ``'l2'``.
        fista: FISTA momentum k / (k + 3); False runs ISTA.
        abort_early: a sample stops a round when its loss at x_k has not decreased by 0.01%
            over steps // 10 iterations; stopped samples leave the batch.

    Returns the best adversarial per sample, the original input where none was found (inputs
    already adversarial with margin kappa are returned unchanged and not attacked).
    """
    _check_ead_arguments(beta, c_init, binary_search_steps, steps, lr, decision_rule)
    if not isinstance(fista, bool) or not isinstance(abort_early, bool):
        raise TypeError("fista and abort_early must be booleans")
    clean_logits = validate(model, inputs, labels)
    inputs = inputs.detach()
    kappa = per_sample(confidence, inputs, "confidence")
    settings = _Settings(
        bool(targeted), float(beta), steps, float(lr), decision_rule, fista, abort_early
    )
    clean_success = cw_success(margin(clean_logits, labels, targeted), kappa)
    result = inputs.clone()
    attacked = (~clean_success).nonzero().squeeze(1)
    if attacked.numel() == 0:
        return result
    x0, y0, kappa = inputs[attacked], labels[attacked], kappa[attacked]
    best = (x0.clone(), torch.full_like(kappa, float("inf")))
    const = torch.full_like(kappa, float(c_init))
    lower, upper = torch.zeros_like(const), torch.full_like(const, _NO_BOUND)
    with attack_mode(model):
        for search in range(binary_search_steps):
            if binary_search_steps >= 10 and search == binary_search_steps - 1:
                const = upper.clone()
            rows = _start_rows(x0, y0, const, kappa, best)
            best_x, best_dist, found = _fista_round(model, rows, settings)
            best = (best_x, best_dist)
            const = binary_search_step(const, lower, upper, found)
    result[attacked] = best[0]
    return result.detach()


@contract
def cov(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    targeted: bool = False,
    beta: float = 1e-3,
    confidence: float = 0.0,
    c_init: float = 1e-3,
    binary_search_steps: int = 9,
    steps: int = 1000,
    lr: float = 0.01,
    decision_rule: str = "en",
    abort_early: bool = True,
) -> Tensor:
    """The change-of-variable (COV) elastic-net baseline of Chen et al. 2018, Table 5.

    The problem of Eq. (16) with C&W's parametrisation x = (tanh(w) + 1) / 2 (Carlini & Wagner
    2017, Sec. V.A), so that the box holds for every w, solved with Adam on w (the subgradient of
    the L1 term passes through tanh): min_w c f(x(w)) + beta ||x(w) - x0||_1 + ||x(w) - x0||_2^2.
    It reuses C&W's inner loop (Adam, early abort when no sample's loss fell by 0.01% over
    steps // 10 iterations) and its per-sample binary search on c; the best successful iterate
    is kept by ``decision_rule`` as in :func:`ead`.

    Args:
        model: returns logits (N, K).
        inputs: images in [0, 1], (N, ...).
        labels: true classes, or target classes when ``targeted``.
        targeted: attack towards ``labels``.
        beta: the L1 weight (>= 0; 0 is C&W L2 with the EN ranking).
        confidence: the margin kappa in logits.
        c_init: initial constant c.
        binary_search_steps: rounds of the search on c.
        steps: Adam iterations per round.
        lr: Adam's learning rate.
        decision_rule: ``'en'``, ``'l1'`` or ``'l2'``.
        abort_early: C&W's early abort.
    """
    _check_ead_arguments(beta, c_init, binary_search_steps, steps, lr, decision_rule)
    check_positive(confidence, "confidence", allow_zero=True)
    settings = _CWSettings(
        bool(targeted),
        float(confidence),
        steps,
        float(lr),
        bool(abort_early),
        beta=float(beta),
        rule=decision_rule,
    )
    return search_constant(model, inputs, labels, settings, float(c_init), binary_search_steps)


__all__ = ["cov", "ead", "elastic_net_distance", "shrinkage_threshold", "step_size"]
