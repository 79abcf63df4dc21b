"""The Carlini & Wagner L2 attack (Carlini & Wagner, "Towards evaluating the robustness of neural
networks", IEEE S&P 2017), in its original formulation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._core import (
    BatchRows,
    attack_mode,
    binary_search_step,
    check_int,
    check_positive,
    contract,
    decision_distance,
    flat,
    keep_best,
    margin,
    validate,
)

_TANH_SHRINK = 1 - 1e-6  # keeps atanh finite on pixels at exactly 0 or 1
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
_NO_BOUND = 1e10


def to_tanh_space(x: Tensor) -> Tensor:
    """w = atanh(2x - 1), the inverse of the change of variables x = (tanh(w) + 1) / 2
    (Carlini & Wagner 2017, Sec. V.A, "change of variables"); 2x - 1 is shrunk by 1e-6."""
    return torch.atanh((2 * x - 1) * _TANH_SHRINK)


def from_tanh_space(w: Tensor) -> Tensor:
    """x = (tanh(w) + 1) / 2, which lies in [0, 1] for every w."""
    return (torch.tanh(w) + 1) / 2


def cw_success(margins: Tensor, confidence: float) -> Tensor:
    """Adversarial with margin ``confidence`` (the ``compare`` of the reference code), from the
    margins of ``_core.margin``: untargeted max_{j != y} z_j > z_y + kappa, targeted
    z_t > max_{j != t} z_j + kappa. Strict, so the argmax of a fresh forward pass agrees."""
    return margins < -confidence


@dataclass(frozen=True)
class _Settings:
    targeted: bool
    confidence: float
    steps: int
    lr: float
    abort_early: bool
    beta: float = 0.0  # weight of an L1 term (the elastic-net COV baseline of EAD); 0 for C&W
    rule: str = "l2"  # the distance that ranks successful iterates (decision_distance)


class _Adam:
    """Adam (Kingma & Ba 2015) on one tensor, in place, with torch.optim.Adam's arithmetic and
    defaults of the C&W reference code; a few fused kernels per step and no host syncs."""

    def __init__(self, param: Tensor, lr: float):
        self.param, self.lr, self.t = param, lr, 0
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)

    def keep(self, mask: Tensor) -> None:
        """Drop the rows (samples) where ``mask`` is False from the parameter and the moments."""
        self.param, self.m, self.v = self.param[mask], self.m[mask], self.v[mask]

    def step(self, grad: Tensor) -> None:
        b1, b2 = _ADAM_BETAS
        self.t += 1
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.v.sqrt() / (1 - b2**self.t) ** 0.5).add_(_ADAM_EPS)
        self.param.addcdiv_(self.m, denom, value=-self.lr / (1 - b1**self.t))


def _objective(
    model: nn.Module, w: Tensor, inputs: Tensor, labels: Tensor, const: Tensor, settings: _Settings
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """C&W eq. for L2: ||x - x0||_2^2 + c * f(x) with f = max(margin + kappa, 0) (f_6), plus
    beta * ||x - x0||_1 when ``settings.beta`` > 0 (the change-of-variable elastic-net problem,
    Chen et al. 2018, Eq. (16) with the tanh parametrisation).

    Returns the per-sample loss (graph attached), the iterate x, its ranking distance
    (``settings.rule``; the L2 norm for C&W) and its margin."""
    x = from_tanh_space(w)
    delta = flat(x - inputs)
    squared = delta.square().sum(1)
    margins = margin(model(x), labels, settings.targeted)
    loss = squared + const * (margins + settings.confidence).clamp_min(0)
    l1 = delta.abs().sum(1)
    if settings.beta > 0:
        loss = loss + settings.beta * l1
    distance = decision_distance(l1.detach(), squared.detach(), settings.beta, settings.rule)
    return loss, x.detach(), distance, margins.detach()


def _optimise_const(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    const: Tensor,
    best: tuple[Tensor, Tensor],
    settings: _Settings,
) -> tuple[Tensor, Tensor, Tensor]:
    """Adam on w for one value of the constant per sample (the inner loop of C&W).

    With ``abort_early`` a sample stops when its own loss has not fallen by 0.01% over
    steps // 10 iterations (the reference code's rule at its batch size of one) and leaves the
    batch, so a sample's result does not depend on the other samples of its batch.

    Returns the updated overall best (adversarial, norm) and whether this constant produced
    any successful iterate per sample."""
    best_adv, best_norm = best[0].clone(), best[1].clone()
    found = torch.zeros_like(best_norm, dtype=torch.bool)
    index = torch.arange(inputs.shape[0], device=inputs.device)
    start_loss = torch.full_like(const, float("inf"))
    rows = _ActiveRows(
        index,
        inputs,
        labels,
        const,
        to_tanh_space(inputs),
        best_adv,
        best_norm,
        found.clone(),
        start_loss,
    )
    adam = _Adam(torch.zeros_like(inputs), settings.lr)
    check_every = max(settings.steps // 10, 1)
    for step in range(settings.steps):
        w = (rows.w_start + adam.param).requires_grad_(True)
        with torch.enable_grad():
            loss, x, norm, margins = _objective(
                model, w, rows.inputs, rows.labels, rows.const, settings
            )
            (grad,) = torch.autograd.grad(loss.sum(), w)
        success = cw_success(margins, settings.confidence)
        rows.found |= success
        rows.best_adv, rows.best_norm, _ = keep_best(
            rows.best_adv, rows.best_norm, x, norm, success
        )
        if settings.abort_early and step % check_every == 0:
            loss = loss.detach()
            stalled = loss > rows.previous_loss * 0.9999
            rows.previous_loss = loss
            if bool(stalled.any()):
                rows.keep(stalled).write_back(best_adv, best_norm, found)
                rows, grad = rows.keep(~stalled), grad[~stalled]
                adam.keep(~stalled)
                if rows.index.numel() == 0:
                    break
        adam.step(grad)
    if rows.index.numel() > 0:
        rows.write_back(best_adv, best_norm, found)
    return best_adv, best_norm, found


@dataclass
class _ActiveRows(BatchRows):
    """The samples of one C&W round still iterating (compacted as they abort)."""

    index: Tensor  # positions in the round's batch
    inputs: Tensor
    labels: Tensor
    const: Tensor
    w_start: Tensor
    best_adv: Tensor
    best_norm: Tensor
    found: Tensor
    previous_loss: Tensor

    def write_back(self, best_adv: Tensor, best_norm: Tensor, found: Tensor) -> None:
        """Copy these rows' results to their positions in the round's batch."""
        best_adv[self.index] = self.best_adv
        best_norm[self.index] = self.best_norm
        found[self.index] = self.found


@contract
def carlini_wagner_l2(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    targeted: bool = False,
    confidence: float = 0.0,
    c_init: float = 1e-3,
    binary_search_steps: int = 9,
    steps: int = 1000,
    lr: float = 0.01,
    abort_early: bool = True,
) -> Tensor:
    """Carlini & Wagner L2 attack (IEEE S&P 2017, Sec. V.A), the original formulation.

    Solves min_w ||x(w) - x0||_2^2 + c * f(x(w)) with the change of variables
    x(w) = (tanh(w) + 1) / 2 (so the box holds for any w) and the margin objective f_6,
    f(x) = max(z_y - max_{j != y} z_j + kappa, 0) untargeted, or
    f(x) = max(max_{j != t} z_j - z_t + kappa, 0) targeted (``labels`` are then the targets),
    kappa = ``confidence``. The inner problem runs ``steps`` Adam iterations (lr ``lr``) from
    w = atanh(2 x0 - 1); a sample aborts early when its loss has not decreased by 0.01% over
    steps // 10 iterations (the reference code's rule at batch size one), so batch results
    equal per-sample results. The constant c starts at ``c_init`` and is binary-searched
    per sample over ``binary_search_steps`` rounds (initial upper bound 1e10; multiplied by 10
    while no successful c is known); as in the reference code, with 10 or more rounds the last
    one repeats the search at the upper bound.

    Returns, per sample, the lowest-L2 adversarial iterate found over all steps and all
    constants (success with margin kappa), and the original input where none was found; clean
    inputs that are already adversarial are returned unchanged. One forward and one backward
    pass per step for the samples still iterating; the only host synchronisation inside the loop
    is the early-abort check every steps // 10 iterations.
    """
    check_positive(confidence, "confidence", allow_zero=True)
    check_positive(c_init, "c_init")
    check_int(binary_search_steps, "binary_search_steps", 1)
    check_int(steps, "steps", 1)
    check_positive(lr, "lr")
    settings = _Settings(targeted, float(confidence), steps, float(lr), abort_early)
    return search_constant(model, inputs, labels, settings, float(c_init), binary_search_steps)


def search_constant(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    settings: _Settings,
    c_init: float,
    binary_search_steps: int,
) -> Tensor:
    """The outer loop of C&W (and of its elastic-net variant): a per-sample binary search on c
    over ``binary_search_steps`` rounds of Adam; returns the best successful iterate per
    sample (the original input where none was found)."""
    clean_logits = validate(model, inputs, labels)
    inputs = inputs.detach()
    clean_success = cw_success(margin(clean_logits, labels, settings.targeted), settings.confidence)
    best_norm = torch.where(clean_success, 0.0, float("inf")).to(inputs.dtype)
    best_adv = inputs.clone()
    const = torch.full_like(best_norm, float(c_init))
    lower, upper = torch.zeros_like(const), torch.full_like(const, _NO_BOUND)
    with attack_mode(model):
        for search in range(binary_search_steps):
            if binary_search_steps >= 10 and search == binary_search_steps - 1:
                const = upper.clone()
            best_adv, best_norm, found = _optimise_const(
                model, inputs, labels, const, (best_adv, best_norm), settings
            )
            const = binary_search_step(const, lower, upper, found)
    return best_adv.detach()


__all__ = ["carlini_wagner_l2", "cw_success", "from_tanh_space", "to_tanh_space"]
