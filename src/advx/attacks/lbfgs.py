"""Box-constrained L-BFGS attack (Szegedy et al., "Intriguing properties of neural networks",
ICLR 2014), solved with scipy's L-BFGS-B as one separable problem per batch."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import Bounds, minimize
from torch import Tensor, nn

from ._core import (
    attack_mode,
    binary_search_step,
    check_int,
    check_positive,
    contract,
    flat,
    is_adversarial,
    validate,
    view_like,
)


def classification_loss(logits: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    """Per-sample loss_f to minimise: cross-entropy -log p_t towards the target (Szegedy et al.
    2014, Sec. 4.1), or, untargeted, -log(1 - p_y) = logsumexp_j z_j - logsumexp_{j != y} z_j,
    which decreases as the true class loses probability and is bounded below by 0."""
    if targeted:
        return torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    mask = torch.nn.functional.one_hot(labels, logits.shape[1]).bool()
    return logits.logsumexp(1) - logits.masked_fill(mask, -float("inf")).logsumexp(1)


class _BatchObjective:
    """f(X) = sum_i ||x_i - x0_i||_2^2 + c_i * loss_f(x_i) on the flattened batch, evaluated for
    scipy (float64 in, float64 value and gradient out). Every evaluated point is in the box, so
    the lowest-norm adversarial seen at any evaluation is kept."""

    def __init__(
        self, model: nn.Module, inputs: Tensor, labels: Tensor, const: Tensor, targeted: bool
    ):
        self.model, self.inputs, self.labels = model, inputs, labels
        self.const, self.targeted = const, targeted
        self.best_adv = inputs.clone()
        self.best_norm = torch.full_like(const, float("inf"))

    def __call__(self, flat_x: np.ndarray) -> tuple[float, np.ndarray]:
        x = torch.from_numpy(flat_x).to(self.inputs).reshape(self.inputs.shape).requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(x)
            squared = flat(x - self.inputs).square().sum(1)
            loss = squared + self.const * classification_loss(logits, self.labels, self.targeted)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        self._track(x.detach(), squared.detach().sqrt(), logits.detach())
        value = float(loss.detach().sum())
        return value, grad.detach().cpu().double().numpy().ravel()

    def _track(self, x: Tensor, norm: Tensor, logits: Tensor) -> None:
        better = is_adversarial(logits, self.labels, self.targeted) & (norm < self.best_norm)
        self.best_adv = torch.where(view_like(better, x), x, self.best_adv)
        self.best_norm = torch.where(better, norm, self.best_norm)


def _solve(objective: _BatchObjective, start: Tensor, max_iter: int) -> Tensor:
    """Run L-BFGS-B with bounds [0, 1] on every coordinate from ``start``; return the solution."""
    result = minimize(
        objective,
        start.detach().cpu().double().numpy().ravel(),
        jac=True,
        method="L-BFGS-B",
        bounds=Bounds(np.zeros(start.numel()), np.ones(start.numel())),
        options={"maxiter": max_iter},
    )
    return torch.from_numpy(result.x).to(start).reshape(start.shape).clamp(0.0, 1.0)


@contract
def lbfgs(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    targeted: bool = False,
    c_init: float = 1e-2,
    search_steps: int = 10,
    max_iter: int = 100,
) -> Tensor:
    """Szegedy et al. (ICLR 2014, Sec. 4.1): box-constrained L-BFGS,
    minimise c|r| + loss_f(x + r, l) subject to x + r in [0, 1]^D, with a search over c for the
    smallest perturbation whose minimiser is classified as l.

    Here the distance is the squared L2 norm and the constant weights the loss instead,
    ||r||_2^2 + c * loss_f(x + r) (c = 1 / c_paper; the same family of minimisers), so that the
    per-sample search is the one C&W use: start at ``c_init``, multiply by 10 until a minimiser
    is adversarial, then bisect, for ``search_steps`` rounds. ``loss_f`` is the cross-entropy to
    the target (``targeted=True``, ``labels`` are the targets) or -log(1 - p_y) (untargeted).
    Each round solves the whole batch as one separable L-BFGS-B problem (scipy, at most
    ``max_iter`` iterations, bounds [0, 1]) from the clean input.

    Returns, per sample, the lowest-L2 adversarial point seen at any evaluation of any round, and
    the original input where none was found (already adversarial inputs are returned as they are).
    """
    check_positive(c_init, "c_init")
    check_int(search_steps, "search_steps", 1)
    check_int(max_iter, "max_iter", 1)
    clean_logits = validate(model, inputs, labels)
    inputs = inputs.detach()
    clean_success = is_adversarial(clean_logits, labels, targeted)
    best_adv = inputs.clone()
    best_norm = torch.where(clean_success, 0.0, float("inf")).to(inputs.dtype)
    const = torch.full_like(best_norm, float(c_init))
    lower, upper = torch.zeros_like(const), torch.full_like(const, 1e10)
    with attack_mode(model):
        for _ in range(search_steps):
            objective = _BatchObjective(model, inputs, labels, const, targeted)
            solution = _solve(objective, inputs, max_iter)
            with torch.no_grad():
                solved = is_adversarial(model(solution), labels, targeted)
            better = objective.best_norm < best_norm
            best_adv = torch.where(view_like(better, inputs), objective.best_adv, best_adv)
            best_norm = torch.where(better, objective.best_norm, best_norm)
            const = binary_search_step(const, lower, upper, solved)
    return best_adv.detach()


__all__ = ["classification_loss", "lbfgs"]
