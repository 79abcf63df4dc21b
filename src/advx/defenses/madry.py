"""The Madry defense model recipe (Madry et al., "Towards deep learning models resistant to
adversarial attacks", ICLR 2018; thesis Sec. 4.3.7.2): adversarial training on PGD-Linf examples
at eps 0.3, 40 steps of 0.01 from a random start, trained on the adversarial examples only.

On 2 CPU cores the MNIST challenge network (conv32-conv64-fc1024) does not train in reasonable
time, so the default architecture is the C&W MNIST CNN (``mnist-cnn``). Training goes through
``advx.defenses.adversarial_training`` and so through the zoo's per-epoch checkpoints: an
interrupted run resumes from its last finished epoch (``advx.models.train``). The result is cached
as ``mnist-madry`` for eps 0.3 and ``mnist-madry-eps<eps>`` otherwise (thesis Table 9).

PGD-40 costs 41 forward-backward passes per batch, hours per epoch on 2 cores. The cheaper
recipe ``method="fgsm-rs"`` (Wong, Rice & Kolter, "Fast is better than free: revisiting
adversarial training", ICLR 2020, Alg. 3) takes one signed-gradient step of 1.25 eps from a
uniform random start in the eps-ball, projected back onto the ball: 2 passes per batch.
"""

from __future__ import annotations

import os

from torch import nn

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
MADRY_METHODS = ("pgd", "fgsm-rs")
FGSM_RS_STEP = 1.25  # Wong et al. 2020: alpha = 1.25 eps


def madry_attack_settings(eps: float, method: str, steps: int, step_size: float) -> dict:
    """The PGD-Linf settings of one training batch: Madry et al.'s ``steps`` steps of
    ``step_size`` from a random start, or Wong et al.'s (2020, Alg. 3) FGSM with a random start,
    one step of 1.25 eps (``steps`` and ``step_size`` then ignored)."""
    if method not in MADRY_METHODS:
        raise ValueError(f"method must be one of {MADRY_METHODS}, got {method!r}")
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


def madry_training(
    eps: float = 0.3,
    *,
    steps: int = 40,
    step_size: float = 0.01,
    method: str = "pgd",
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
        method: ``"pgd"`` (Madry et al.) or ``"fgsm-rs"`` (Wong et al. 2020: one step of
            1.25 eps from a random start; ``steps`` and ``step_size`` are then ignored).
        epochs: training epochs (default ``MADRY_EPOCHS``).
        architecture: the zoo architecture trained (default the C&W MNIST CNN).
        seed, data_dir, cache_dir, max_samples, progress: as for ``advx.models.train``.

    Returns:
        ``(model, metrics)`` of ``advx.models.train``, saved as :func:`madry_name` ``(eps)``.
    """
    name = madry_name(eps)
    return adversarial_training(
        architecture,
        "pgd",
        max_norm=float(eps),
        beta=0.0,
        attack_kwargs=madry_attack_settings(eps, method, steps, step_size),
        epochs=epochs,
        seed=seed,
        data_dir=data_dir,
        cache_dir=cache_dir,
        max_samples=max_samples,
        progress=progress,
        save_as=name,
    )
