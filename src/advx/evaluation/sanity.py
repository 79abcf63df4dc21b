"""The runner's own checks of the model under evaluation, in the spirit of AutoAttack's
(Croce & Hein, ICML 2020, Sec. 5 "flags"): signs that the numbers of a run cannot be trusted as
they stand. Each check returns a warning sentence, stored with the run's summary."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import attack_mode

PROBE_SAMPLES = 32
ZERO_GRADIENT_SHARE = 0.1
"""Warn when at least this share of the probed inputs has an all-zero input gradient."""
RANDOM_TOLERANCE = 1e-5


def _probe(images: Tensor, labels: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    count = min(PROBE_SAMPLES, images.shape[0])
    return images[:count].to(device), labels[:count].to(device)


def randomness_warning(model: nn.Module, x: Tensor) -> str | None:
    """Warn when two eval-mode forward passes on the same inputs differ (a randomised model:
    attacks then need expectation over transformation, and success may not reproduce)."""
    with attack_mode(model), torch.no_grad():
        first, second = model(x), model(x)
    gap = (first - second).abs().max().item()
    scale = max(first.abs().max().item(), 1.0)
    if gap > RANDOM_TOLERANCE * scale:
        return (
            f"randomised model: two forward passes on the same inputs differ by up to {gap:.3g}; "
            "success is judged on one fresh pass and may not reproduce"
        )
    return None


def probabilities_warning(model: nn.Module, x: Tensor) -> str | None:
    """Warn when the outputs look like probabilities (non-negative rows summing to one):
    margin and cross-entropy losses on probabilities have vanishing gradients."""
    with attack_mode(model), torch.no_grad():
        out = model(x)
    if bool((out >= 0).all()) and torch.allclose(out.sum(1), torch.ones_like(out[:, 0]), atol=1e-4):
        return "the model outputs probabilities, not logits: remove its final softmax"
    return None


def masking_warning(model: nn.Module, x: Tensor, y: Tensor) -> str | None:
    """Warn when the input gradient of the cross-entropy is exactly zero (or not finite) for a
    noticeable share of the inputs: a sign of gradient masking (Athalye et al., ICML 2018), under
    which gradient attacks overstate robustness. Models that cannot be differentiated are not
    checked."""
    x = x.detach().clone().requires_grad_(True)
    try:
        with attack_mode(model), torch.enable_grad():
            loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
    except (RuntimeError, AssertionError):
        return None
    flat = grad.reshape(grad.shape[0], -1)
    dead = (flat.abs().amax(1) == 0) | ~torch.isfinite(flat).all(1)
    share = dead.double().mean().item()
    if share >= ZERO_GRADIENT_SHARE:
        return (
            f"gradient masking suspected: the input gradient is zero or not finite for "
            f"{100 * share:.0f}% of {flat.shape[0]} probed inputs; gradient-based attacks will "
            "overstate robustness (try a black-box or transfer attack)"
        )
    return None


def model_warnings(model: nn.Module, images: Tensor, labels: Tensor, device) -> list[str]:
    """All of the checks above on the first few inputs; the warnings that apply."""
    x, y = _probe(images, labels, device)
    found = [
        randomness_warning(model, x),
        probabilities_warning(model, x),
        masking_warning(model, x, y),
    ]
    return [w for w in found if w is not None]
