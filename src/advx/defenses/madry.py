"""The Madry defense model recipe (Madry et al., "Towards deep learning models resistant to
adversarial attacks", ICLR 2018; thesis Sec. 4.3.7.2): adversarial training on PGD-Linf examples
at eps 0.3, 40 steps of 0.01 from a random start, trained on the adversarial examples only.

On 2 CPU cores the MNIST challenge network (conv32-conv64-fc1024) does not train in reasonable
time, so the default architecture is the C&W MNIST CNN (``mnist-cnn``). Training goes through
``advx.defenses.adversarial_training`` and so through the zoo's per-epoch checkpoints: an
interrupted run resumes from its last finished epoch (``advx.models.train``). The result is cached
as ``mnist-madry`` for eps 0.3 and ``mnist-madry-eps<eps>`` otherwise (thesis Table 9).
"""

from __future__ import annotations

import os

from torch import nn

from .adversarial_training import adversarial_training

__all__ = ["MADRY_EPOCHS", "madry_name", "madry_training"]

MADRY_EPOCHS = 20  # Madry et al.: 100k iterations of batch 50 (about 83 epochs)


def madry_name(eps: float = 0.3) -> str:
    """Cache name of the model trained at ``eps``: ``mnist-madry`` at 0.3."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= 1:
        raise ValueError(f"eps must lie in (0, 1], got {eps!r}")
    return "mnist-madry" if eps == 0.3 else f"mnist-madry-eps{eps:g}"


def madry_training(
    eps: float = 0.3,
    *,
    steps: int = 40,
    step_size: float = 0.01,
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
        attack_kwargs={
            "norm": float("inf"),
            "steps": steps,
            "step_size": step_size,
            "random_start": True,
        },
        epochs=epochs,
        seed=seed,
        data_dir=data_dir,
        cache_dir=cache_dir,
        max_samples=max_samples,
        progress=progress,
        save_as=name,
    )
