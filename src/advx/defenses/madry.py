"""The Madry defense model recipe (Madry et al., "Towards deep learning models resistant to
adversarial attacks", ICLR 2018; thesis Sec. 4.3.7.2): adversarial training on PGD-Linf examples
at eps 0.3, 40 steps of 0.01 from a random start, trained on the adversarial examples only.

On 2 CPU cores the MNIST challenge network (conv32-conv64-fc1024) does not train in reasonable
time, so the default architecture is the C&W MNIST CNN (``mnist-cnn``). Training goes through
``advx.defenses.adversarial_training`` and so through the zoo's per-epoch checkpoints: an
interrupted run resumes from its last finished epoch (``advx.models.train``). The result is cached
as ``mnist-madry`` for eps 0.3 and ``mnist-madry-eps<eps>`` otherwise (thesis Table 9).

PGD-40 costs 41 forward-backward passes per batch, hours per epoch on 2 cores. Two cheaper
recipes take 2 passes per batch:

- ``method="fgsm-rs"`` (Wong, Rice & Kolter, "Fast is better than free: revisiting adversarial
  training", ICLR 2020, Alg. 3): one signed-gradient step of 1.25 eps from a uniform random
  start in the eps-ball, projected back onto the ball. On MNIST at eps 0.3 it overfits
  catastrophically (docs/results/madry.md).
- ``method="n-fgsm"`` (de Jorge et al., "Make some noise: reliable and efficient single-step
  adversarial training", NeurIPS 2022, Alg. 1): noise uniform in [-2 eps, 2 eps], then one
  signed-gradient step of eps, with no projection onto the eps-ball (only onto [0, 1]); the
  stronger noise and the missing clip avoid catastrophic overfitting at large eps.

Early stopping (Wong et al. 2020, Sec. 5.3): after every epoch, PGD accuracy on the first
``early_stopping`` training images (20 steps, random start) scores the model, and the best epoch
is the one saved (``advx.models.train``'s ``select``).
"""

from __future__ import annotations

import os
from functools import partial

import torch
from torch import Tensor, nn

from ..attacks.gradient import pgd
from ..data import load_dataset
from ..models import train
from .adversarial_training import adversarial_training

__all__ = [
    "MADRY_EPOCHS",
    "MADRY_METHODS",
    "madry_attack_settings",
    "madry_eps",
    "madry_name",
    "madry_training",
]

MADRY_EPOCHS = 20  # Madry et al.: 100k iterations of batch 50 (about 83 epochs)
MADRY_METHODS = ("pgd", "fgsm-rs", "n-fgsm")
FGSM_RS_STEP = 1.25  # Wong et al. 2020: alpha = 1.25 eps
N_FGSM_NOISE = 2.0  # de Jorge et al. 2022: noise U[-2 eps, 2 eps], step eps
CHECK_STEPS = 20  # PGD steps of the per-epoch early-stopping check


def madry_attack_settings(eps: float, method: str, steps: int, step_size: float) -> dict:
    """The attack settings of one training batch: Madry et al.'s ``steps`` PGD-Linf steps of
    ``step_size`` from a random start; Wong et al.'s (2020, Alg. 3) FGSM with a random start, one
    step of 1.25 eps; or N-FGSM's (de Jorge et al. 2022, Alg. 1) noise half-width 2 eps and step
    eps (``noise_fgsm_batch``'s arguments). ``steps`` and ``step_size`` are ignored by the
    last two."""
    if method not in MADRY_METHODS:
        raise ValueError(f"method must be one of {MADRY_METHODS}, got {method!r}")
    if method == "n-fgsm":
        return {"noise": N_FGSM_NOISE * float(eps), "step_size": float(eps)}
    if method == "fgsm-rs":
        steps, step_size = 1, FGSM_RS_STEP * float(eps)
    return {"norm": float("inf"), "steps": steps, "step_size": step_size, "random_start": True}


def madry_name(eps: float = 0.3) -> str:
    """Cache name of the model trained at ``eps``: ``mnist-madry`` at 0.3."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= 1:
        raise ValueError(f"eps must lie in (0, 1], got {eps!r}")
    return "mnist-madry" if eps == 0.3 else f"mnist-madry-eps{eps:g}"


def madry_eps(name: str) -> float | None:
    """The training eps that a cache name of :func:`madry_name` encodes (``mnist-madry``: 0.3,
    ``mnist-madry-eps0.1``: 0.1), or ``None`` for any other name."""
    if name == "mnist-madry":
        return 0.3
    prefix = "mnist-madry-eps"
    if not name.startswith(prefix):
        return None
    try:
        eps = float(name[len(prefix) :])
    except ValueError:
        return None
    return eps if 0 < eps <= 1 and madry_name(eps) == name else None


def noise_fgsm_batch(
    model: nn.Module, x: Tensor, y: Tensor, *, noise: float, step_size: float
) -> tuple[Tensor, Tensor]:
    """N-FGSM (de Jorge et al. 2022, Alg. 1): a training batch replaced by
    clip_[0,1](x + eta + step_size * sign(grad_x CE(f(x + eta), y))), eta ~ U[-noise, noise],
    with no projection onto an eps-ball. The gradient is taken in eval mode; train mode is
    restored. One forward and one backward pass."""
    model.eval()
    start = (x + torch.empty_like(x).uniform_(-noise, noise)).detach().requires_grad_(True)
    with torch.enable_grad():
        loss = nn.functional.cross_entropy(model(start), y)
        (grad,) = torch.autograd.grad(loss, start)
    model.train()
    return (start + step_size * grad.sign()).clamp(0, 1).detach(), y


def pgd_check(images: Tensor, labels: Tensor, eps: float) -> callable:
    """The early-stopping score of Wong et al. (2020, Sec. 5.3): PGD-Linf accuracy at ``eps``
    (``CHECK_STEPS`` steps of 2.5 eps / steps from a random start drawn from a fixed seed) on
    ``images``, as a function of the model."""

    def score(model: nn.Module) -> float:
        generator = torch.Generator().manual_seed(0)
        adv = pgd(model, images, labels, eps=eps, steps=CHECK_STEPS, generator=generator)
        with torch.no_grad():
            return (model(adv).argmax(1) == labels).float().mean().item()

    return score


def madry_training(
    eps: float = 0.3,
    *,
    steps: int = 40,
    step_size: float = 0.01,
    method: str = "pgd",
    early_stopping: int = 0,
    epochs: int = MADRY_EPOCHS,
    architecture: str = "mnist-cnn",
    seed: int | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_samples: int | None = None,
    progress: bool = True,
) -> tuple[nn.Module, dict]:
    """PGD-Linf adversarial training (Madry et al. 2018, Eq. 2.1 and Sec. 4; thesis Sec.
    4.3.7.2 and Table 9): every batch replaced by PGD examples at ``eps`` (random start,
    ``steps`` steps of ``step_size``) against the current weights; resumable per epoch.

    Args:
        eps: the Linf radius (0.3 for mnist-madry; Table 9: 0.1 to 0.4; the thesis's PGD step
            for other eps is 2 eps / 40, pass ``step_size`` accordingly).
        steps: PGD iterations per batch (40).
        step_size: PGD step (0.01).
        method: ``"pgd"`` (Madry et al.), ``"fgsm-rs"`` (Wong et al. 2020: one step of 1.25 eps
            from a random start) or ``"n-fgsm"`` (de Jorge et al. 2022: noise of 2 eps, one
            step of eps, no projection); ``steps`` and ``step_size`` are ignored by the last two.
        early_stopping: the number of training images whose PGD accuracy (``pgd_check``) picks
            the epoch saved (Wong et al. 2020, Sec. 5.3); 0 saves the last epoch.
        epochs: training epochs (default ``MADRY_EPOCHS``).
        architecture: the zoo architecture trained (default the C&W MNIST CNN).
        seed, data_dir, cache_dir, max_samples, progress: as for ``advx.models.train``.

    Returns:
        ``(model, metrics)`` of ``advx.models.train``, saved as :func:`madry_name` ``(eps)``.
    """
    name = madry_name(eps)
    settings = madry_attack_settings(eps, method, steps, step_size)
    if isinstance(early_stopping, bool) or not isinstance(early_stopping, int):
        raise TypeError(f"early_stopping must be an int, got {type(early_stopping).__name__}")
    if early_stopping < 0:
        raise ValueError(f"early_stopping must be >= 0, got {early_stopping}")
    select = None
    if early_stopping:
        images, labels = load_dataset("mnist", "train", data_dir)
        select = pgd_check(images[:early_stopping], labels[:early_stopping], float(eps))
    common = {
        "epochs": epochs,
        "seed": seed,
        "data_dir": data_dir,
        "cache_dir": cache_dir,
        "max_samples": max_samples,
        "progress": progress,
        "save_as": name,
        "select": select,
    }
    stopping = {"early_stopping": early_stopping, "check_steps": CHECK_STEPS}
    if method == "n-fgsm":
        extra = {"method": method, "eps": float(eps), **settings, **stopping}
        transform = partial(noise_fgsm_batch, **settings)
        return train(architecture, batch_transform=transform, recipe_extra=extra, **common)
    return adversarial_training(
        architecture,
        "pgd",
        max_norm=float(eps),
        beta=0.0,
        attack_kwargs=settings,
        recipe_extra=stopping if early_stopping else None,
        **common,
    )
