"""A linear classifier with closed-form minimal adversarial perturbations, reused by every
attack's tests.

For logits z = W x + b, the smallest Lp perturbation that moves x across the boundary between its
class i and class j is |z_i - z_j| / ||w_i - w_j||_q with q the dual exponent of p (Hölder), and
the minimal untargeted one is the minimum of that over j != i — as long as the box [0, 1] does
not bind, which ``make_problem`` ensures by keeping the points near the centre of the box and the
margins small.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advx.attacks._core import dual_exponent, lp_norm


class LinearClassifier(nn.Module):
    """logits = W flatten(x) + b."""

    def __init__(self, weight: Tensor, bias: Tensor, input_shape: tuple[int, ...]):
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)
        self.input_shape = input_shape

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.reshape(x.shape[0], -1))


def minimal_distance(
    model: LinearClassifier, inputs: Tensor, labels: Tensor, p: float, targets: Tensor | None = None
) -> Tensor:
    """Exact minimal Lp distance to the decision region of another class (untargeted), or to the
    half-space where ``targets`` beats ``labels`` (pairwise boundary, used for two-class targets)."""
    w, b = model.linear.weight.detach(), model.linear.bias.detach()
    q = dual_exponent(p)
    z = inputs.reshape(inputs.shape[0], -1) @ w.T + b
    zi = z.gather(1, labels[:, None])
    diff_w = w[labels][:, None, :] - w[None, :, :]  # (N, K, D)
    dist = (zi - z).abs() / lp_norm(diff_w.reshape(-1, w.shape[1]), q).reshape(z.shape).clamp_min(
        1e-12
    )
    if targets is not None:
        return dist.gather(1, targets[:, None]).squeeze(1)
    dist = dist.scatter(1, labels[:, None], float("inf"))
    return dist.min(1).values


def assert_within_factor_of_optimum(norms: Tensor, optimum: Tensor, factor: float) -> None:
    """Every norm lies in [optimum, factor * optimum] (up to 1e-6 relative): the attack found a
    perturbation no shorter than the exact minimum and at most ``factor`` times it."""
    ratio = norms / optimum
    assert (ratio >= 1 - 1e-6).all(), f"shorter than the optimum: min ratio {ratio.min():.6f}"
    assert (ratio <= factor + 1e-6).all(), f"max ratio {ratio.max():.6f} > {factor}"


def make_problem(n: int = 8, d: int = 16, k: int = 3, seed: int = 0, dtype=torch.float32):
    """A random linear classifier and n points near the box centre, with their predicted labels.

    Images have shape (n, 1, 4, d // 4). Returns (model, inputs, labels)."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(k, d, generator=gen, dtype=dtype)
    # centre the decision boundaries on the box centre so minimal perturbations stay small
    bias = -0.5 * weight.sum(1) + 0.1 * torch.randn(k, generator=gen, dtype=dtype)
    model = LinearClassifier(weight, bias, (1, 4, d // 4)).to(dtype)
    inputs = 0.5 + 0.05 * torch.randn(n, 1, 4, d // 4, generator=gen, dtype=dtype)
    inputs = inputs.clamp(0.3, 0.7)
    with torch.no_grad():
        labels = model(inputs).argmax(1)
    return model, inputs, labels


class ProbabilityModel(nn.Module):
    """Wraps a model with a softmax: attacks must refuse it (they need logits)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).softmax(1)
