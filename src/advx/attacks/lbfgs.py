"""Box-constrained L-BFGS attack (Szegedy et al., "Intriguing properties of neural networks",
ICLR 2014), solved with scipy's L-BFGS-B, one problem per sample, the samples' model
evaluations batched in lock-step."""

from __future__ import annotations

from collections.abc import Callable

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
    keep_best,
    update_best,
    validate,
)
from ._lockstep import run_in_lockstep


def classification_loss(logits: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    """Per-sample loss_f to minimise: cross-entropy -log p_t towards the target (Szegedy et al.
    2014, Sec. 4.1), or, untargeted, -log(1 - p_y) = logsumexp_j z_j - logsumexp_{j != y} z_j,
    which decreases as the true class loses probability and is bounded below by 0."""
    if targeted:
        return torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    mask = torch.nn.functional.one_hot(labels, logits.shape[1]).bool()
    return logits.logsumexp(1) - logits.masked_fill(mask, -float("inf")).logsumexp(1)


class _BatchObjective:
    """f_i(x) = ||x - x0_i||_2^2 + c_i * loss_f(x) for every sample i, evaluated on whichever
    samples ask at once (float64 in, float64 value and gradient out). Every evaluated point is
    in the box, so the lowest-norm adversarial seen at any evaluation is kept per sample."""

    def __init__(
        self, model: nn.Module, inputs: Tensor, labels: Tensor, const: Tensor, targeted: bool
    ):
        self.model, self.inputs, self.labels = model, inputs, labels
        self.const, self.targeted = const, targeted
        self.best_adv = inputs.clone()
        self.best_norm = torch.full_like(const, float("inf"))

    def __call__(self, points: dict[int, np.ndarray]) -> dict[int, tuple[float, np.ndarray]]:
        index = torch.tensor(sorted(points), device=self.inputs.device)
        origin = self.inputs[index]
        stacked = np.stack([points[i] for i in index.tolist()])
        x = torch.from_numpy(stacked).to(origin).reshape(origin.shape).requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(x)
            squared = flat(x - origin).square().sum(1)
            loss_f = classification_loss(logits, self.labels[index], self.targeted)
            value = squared + self.const[index] * loss_f
            (grad,) = torch.autograd.grad(value.sum(), x)
        self._track(index, x.detach(), squared.detach().sqrt(), logits.detach())
        values = value.detach().cpu().double().numpy()
        grads = flat(grad).detach().cpu().double().numpy()
        return {i: (float(values[k]), grads[k]) for k, i in enumerate(index.tolist())}

    def _track(self, index: Tensor, x: Tensor, norm: Tensor, logits: Tensor) -> None:
        adversarial = is_adversarial(logits, self.labels[index], self.targeted)
        adv, norm, _ = keep_best(self.best_adv[index], self.best_norm[index], x, norm, adversarial)
        self.best_adv[index], self.best_norm[index] = adv, norm


def _solve(objective: _BatchObjective, start: Tensor, max_iter: int) -> Tensor:
    """Run one L-BFGS-B per sample (scipy, bounds [0, 1], its own line search and stopping
    test) from ``start``; the samples' evaluations are batched through the model in lock-step.
    Returns the solutions."""
    n = start.shape[0]
    starts = flat(start).detach().cpu().double().numpy()
    bounds = Bounds(np.zeros(starts.shape[1]), np.ones(starts.shape[1]))

    def minimise(i: int, evaluate: Callable[[np.ndarray], tuple[float, np.ndarray]]):
        options = {"maxiter": max_iter}
        return minimize(
            evaluate, starts[i], jac=True, method="L-BFGS-B", bounds=bounds, options=options
        ).x

    solutions = run_in_lockstep(n, minimise, objective)
    return torch.from_numpy(np.stack(solutions)).to(start).reshape(start.shape).clamp(0.0, 1.0)


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
    Each round solves one L-BFGS-B problem per sample (scipy, at most ``max_iter`` iterations,
    bounds [0, 1]) from the clean input; the samples' function evaluations go through the
    model together, so a batch costs about as many forward passes as one sample, and its
    result equals the per-sample results.

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
            found = torch.isfinite(objective.best_norm)
            update_best(best_adv, best_norm, objective.best_adv, objective.best_norm, found)
            const = binary_search_step(const, lower, upper, solved)
    return best_adv.detach()


__all__ = ["classification_loss", "lbfgs"]
