"""Target-class selection for targeted attacks (best, hardest, least likely, random) and the
expansion of a batch over every other class for best/average/worst-case evaluation (the
protocol of Carlini & Wagner 2017, Sec. VI)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._core import (
    INF,
    NormLike,
    attack_mode,
    check_int,
    check_labels,
    dual_exponent,
    parse_norm,
    validate,
)
from .linearisation import boundary_distance, candidate_classes, class_gradients

MODES = ("best", "hardest", "least_likely", "random")


def linearised_distances(
    model: nn.Module, inputs: Tensor, labels: Tensor, classes: Tensor, norm: NormLike = 2
) -> Tensor:
    """First-order distance from each input to the boundary between its label y and each class
    j of ``classes`` (N, C): |z_y - z_j| / ||grad(z_y - z_j)||_q, q the dual exponent of the norm
    (Moosavi-Dezfooli et al. 2016, eq. (8); exact for a linear model without box constraints).
    Returns (N, C); a class equal to the label, or a zero gradient difference, gives inf."""
    q = dual_exponent(parse_norm(norm))
    with attack_mode(model):
        logits, grads = class_gradients(model, inputs, torch.cat([labels[:, None], classes], 1))
    z = logits.gather(1, torch.cat([labels[:, None], classes], 1))
    dist = boundary_distance(z[:, :1] - z[:, 1:], grads[:, :1] - grads[:, 1:], q)
    return dist.masked_fill(classes == labels[:, None], INF)


def _other_classes(logits: Tensor, labels: Tensor, top_k: int | None) -> Tensor:
    """The classes other than the label to choose from: all of them, or the ``top_k``
    highest-logit ones."""
    count = logits.shape[1] - 1 if top_k is None else min(top_k, logits.shape[1] - 1)
    return candidate_classes(logits, labels, count + 1)[:, 1:]


def random_other_classes(
    labels: Tensor, num_classes: int, generator: torch.Generator | None = None
) -> Tensor:
    """A class drawn uniformly among the num_classes - 1 classes other than each label (the
    average case of Carlini & Wagner 2017, Sec. VI), from ``generator``."""
    device = labels.device if generator is None else generator.device
    draw = torch.randint(0, num_classes - 1, labels.shape, generator=generator, device=device)
    draw = draw.to(labels.device)
    return draw + (draw >= labels).long()


def select_targets(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    mode: str = "best",
    norm: NormLike = 2,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One target class per sample, never its label (``labels`` are the true classes).

    ``'best'``: the class with the smallest linearised distance |z_y - z_j| / ||grad(z_y - z_j)||_q
    (the easiest target, DeepFool's first-step choice); ``'hardest'``: the largest one;
    ``'least_likely'``: the lowest clean logit (Kurakin et al. 2017); ``'random'``: uniform over
    the other classes (Carlini & Wagner 2017's average case), drawn with ``generator``.
    ``top_k`` restricts ``'best'``/``'hardest'`` to the ``top_k`` highest-logit classes other
    than the label (fewer gradients); ``norm`` is the Lp norm of the distance (dual q inside).
    Returns an (N,) long tensor on the labels' device.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if top_k is not None:
        check_int(top_k, "top_k", 1)
    parse_norm(norm)
    logits = validate(model, inputs, labels)
    if mode == "least_likely":
        return logits.scatter(1, labels[:, None], INF).argmin(1)
    if mode == "random":
        return random_other_classes(labels, logits.shape[1], generator)
    classes = _other_classes(logits, labels, top_k)
    dist = linearised_distances(model, inputs.detach(), labels, classes, norm)
    if mode == "best":
        pick = dist.argmin(1)
    else:
        pick = dist.masked_fill(~torch.isfinite(dist), -1.0).argmax(1)
    return classes.gather(1, pick[:, None]).squeeze(1)


def all_targets(labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Expand a batch over every class other than each label.

    Returns ``(index, targets)``, both of length N * (num_classes - 1): sample ``index[m]`` of the
    batch paired with target ``targets[m]``, sample-major and classes ascending, so that
    ``attack(model, inputs[index], targets, targeted=True)`` attacks every (sample, target) pair
    and the results reshape to (N, num_classes - 1) for best/average/worst-case reporting.
    """
    check_int(num_classes, "num_classes", 2)
    check_labels(labels, labels.shape[0] if isinstance(labels, Tensor) else 0, num_classes)
    n = labels.shape[0]
    classes = torch.arange(num_classes, device=labels.device).expand(n, num_classes)
    others = classes[classes != labels[:, None]].reshape(n, num_classes - 1)
    index = torch.arange(n, device=labels.device).repeat_interleave(num_classes - 1)
    return index, others.reshape(-1)


__all__ = [
    "MODES",
    "all_targets",
    "linearised_distances",
    "random_other_classes",
    "select_targets",
]
