"""Adversarial training with any attack of the registry (DDN, ANU, PGD-L2, PGD-Linf, ...).

Liu & Cao, "Self-adaptive Norm Update ...", Eq. (6): the training loss mixes the clean and the
adversarial cross-entropy,

    L = beta * CE(f(x), y) + (1 - beta) * CE(f(x_adv), y),

and beta = 0 (their Eq. 7, the setting of DDN's and ANU's adversarial training) trains on
adversarial examples only. The adversarial examples are generated on the fly, per batch, against
the current weights (model in eval mode while attacked), with the perturbation limited to
``max_norm`` (minimal-norm attacks get it as ``max_norm``, bounded attacks as ``eps``).

Training itself is the zoo's: fixed seed, progress bars, a checkpoint every epoch and resume after
an interruption (``advx.models.train``); the result is cached as ``<name>-adv-<attack>``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks.registry import get_attack
from ..models import train

__all__ = ["adversarial_training", "mixed_loss", "adversarial_batches"]


def mixed_loss(logits: Tensor, labels: Tensor, *, beta: float) -> Tensor:
    """Eq. (6): ``beta * CE(clean) + (1 - beta) * CE(adversarial)``. With ``beta > 0`` the batch
    holds the clean half first and the adversarial half second; with ``beta == 0`` it holds the
    adversarial examples only (Eq. 7)."""
    if beta == 0:
        return F.cross_entropy(logits, labels)
    clean, adv = logits.chunk(2), labels.chunk(2)
    return beta * F.cross_entropy(clean[0], adv[0]) + (1 - beta) * F.cross_entropy(clean[1], adv[1])


def adversarial_batches(
    model: nn.Module, x: Tensor, y: Tensor, *, attack: str, limit: float, beta: float, **kwargs
) -> tuple[Tensor, Tensor]:
    """Replace a training batch by its adversarial examples (and keep the clean half when
    ``beta > 0``). The attack sees the model in eval mode; train mode is restored after."""
    info = get_attack(attack)
    budget = {"max_norm": limit} if info.minimal_norm else {"eps": limit}
    adv = info.function(model, x, y, **budget, **kwargs)
    model.train()
    if beta == 0:
        return adv.detach(), y
    return torch.cat([x, adv.detach()]), torch.cat([y, y])


def adversarial_training(
    name: str,
    attack: str = "ddn",
    *,
    max_norm: float,
    beta: float = 0.0,
    attack_kwargs: dict | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_samples: int | None = None,
    progress: bool = True,
    save_as: str | None = None,
    init_from: str | None = None,
    select: Callable[[nn.Module], float] | None = None,
    recipe_extra: dict | None = None,
) -> tuple[nn.Module, dict]:
    """Train zoo architecture ``name`` on adversarial examples of ``attack`` (Liu & Cao, Eq. 6-7;
    Rony et al. 2019, Sec. 3.3; Madry et al. 2018 for PGD).

    ``max_norm`` bounds the perturbation (MNIST: 2.4 in L2 as in DDN's paper); ``beta`` mixes
    clean and adversarial loss (0: adversarial only); ``attack_kwargs`` go to the attack (e.g.
    ``{"steps": 100}``; for PGD also ``norm``). Returns ``(model, metrics)`` as
    ``advx.models.train`` does, with the checkpoint saved as ``save_as`` (default
    ``<name>-adv-<attack>``) and resumed from after an interruption. ``init_from`` fine-tunes
    the weights of a trained zoo model (e.g. the clean ``name``) instead of starting from scratch.
    ``select`` keeps the best-scoring epoch (early stopping, ``advx.models.train``), with its
    settings in ``recipe_extra`` (added to the recipe a checkpoint must match).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta!r}")
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm!r}")
    info = get_attack(attack)
    kwargs = dict(attack_kwargs or {})
    transform = partial(
        adversarial_batches, attack=info.name, limit=float(max_norm), beta=beta, **kwargs
    )
    extra = {
        "attack": info.name,
        "max_norm": float(max_norm),
        "beta": beta,
        "attack_kwargs": kwargs,
        **(recipe_extra or {}),
    }
    return train(
        name,
        data_dir,
        epochs=epochs,
        seed=seed,
        cache_dir=cache_dir,
        progress=progress,
        loss_fn=partial(mixed_loss, beta=beta),
        batch_transform=transform,
        max_samples=max_samples,
        save_as=save_as or f"{name}-adv-{info.name}",
        recipe_extra=extra,
        init_from=init_from,
        select=select,
    )
