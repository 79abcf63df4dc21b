"""Defensive distillation (Papernot et al., "Distillation as a defense to adversarial
perturbations against deep neural networks", IEEE S&P 2016; thesis Sec. 2.2.2 and 4.3.6).

1. The *teacher* is trained with the softmax at temperature ``T``: the loss is the
   cross-entropy of ``softmax(z / T)`` against the hard labels.
2. The *student* (the same architecture) is trained, also at temperature ``T``, on the teacher's
   soft labels ``softmax(z_teacher(x) / T)``:  ``L = -sum_k p_k log softmax(z_student / T)_k``.
3. The student is deployed at ``T = 1``: the saved model returns its raw logits ``z``, so that
   ``softmax(z)`` is a temperature-1 softmax, saturated for large ``T`` (the gradient masking
   the defense relies on, which C&W and EAD bypass by working on the logits).

Both models are trained with the zoo's recipe and machinery (``advx.models.train``: fixed seed,
per-epoch checkpoints, resume), cached as ``<name>-distill-teacher-t<T>`` and
``<name>-distilled-t<T>``; ``advx.models.load("mnist-cnn-distilled-t100")`` loads the student.
"""

from __future__ import annotations

import os
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import load, train
from ..models.registry import get_spec

__all__ = [
    "distillation",
    "distillation_loss",
    "soft_labels",
    "student_name",
    "teacher_name",
    "temperature_loss",
]


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if not temperature > 0 or temperature != temperature or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _temperature_tag(temperature: float) -> str:
    return f"{temperature:g}".replace(".", "p")


def teacher_name(name: str, temperature: float) -> str:
    """Cache name of the teacher of zoo model ``name`` at ``temperature``."""
    return f"{name}-distill-teacher-t{_temperature_tag(_check_temperature(temperature))}"


def student_name(name: str, temperature: float) -> str:
    """Cache name of the distilled (student) model, e.g. ``mnist-cnn-distilled-t100``."""
    return f"{name}-distilled-t{_temperature_tag(_check_temperature(temperature))}"


def temperature_loss(logits: Tensor, labels: Tensor, *, temperature: float) -> Tensor:
    """Cross-entropy of the softmax at temperature ``T`` against hard labels (the teacher's
    training loss, Papernot et al. 2016, Sec. IV-B): ``mean_i -log softmax(z_i / T)_{y_i}``.

    Args:
        logits: (N, K) logits ``z``.
        labels: (N,) class indices.
        temperature: ``T > 0``.
    """
    return F.cross_entropy(logits / _check_temperature(temperature), labels)


def distillation_loss(logits: Tensor, soft: Tensor, *, temperature: float) -> Tensor:
    """The student's loss (Papernot et al. 2016, Sec. IV-B; Hinton et al. 2015, Eq. 1):
    ``mean_i -sum_k p_ik log softmax(z_i / T)_k`` with the teacher's soft labels ``p``.

    Args:
        logits: (N, K) student logits ``z``.
        soft: (N, K) soft labels (rows are probability vectors), or (N,) hard labels.
        temperature: ``T > 0``.
    """
    temperature = _check_temperature(temperature)
    if soft.dim() == 1:
        return temperature_loss(logits, soft, temperature=temperature)
    if soft.shape != logits.shape:
        raise ValueError(f"soft: shape {tuple(soft.shape)} differs from logits' {logits.shape}")
    log_p = F.log_softmax(logits / temperature, dim=1)
    return -(soft.to(log_p.dtype) * log_p).sum(1).mean()


@torch.no_grad()
def soft_labels(teacher: nn.Module, x: Tensor, *, temperature: float) -> Tensor:
    """The teacher's softmax at temperature ``T`` (eval mode, no gradients): ``softmax(z / T)``.

    Args:
        teacher: a model returning logits.
        x: inputs it accepts.
        temperature: ``T > 0``.
    """
    was_training = teacher.training
    teacher.eval()
    probabilities = F.softmax(teacher(x) / _check_temperature(temperature), dim=1)
    teacher.train(was_training)
    return probabilities


def _soft_batches(model: nn.Module, x: Tensor, y: Tensor, *, teacher: nn.Module, temperature):
    """``batch_transform`` hook: replace the hard labels by the teacher's soft labels."""
    return x, soft_labels(teacher, x, temperature=temperature)


def distillation(
    name: str,
    temperature: float,
    *,
    epochs: int | None = None,
    teacher_epochs: int | None = None,
    seed: int | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_samples: int | None = None,
    progress: bool = True,
) -> tuple[nn.Module, dict]:
    """Defensive distillation of zoo architecture ``name`` at temperature ``T`` (Papernot et al.
    2016, Sec. IV; thesis Sec. 2.2.2): train the teacher at ``T``, then the student at ``T`` on
    the teacher's soft labels; return ``(student deployed at T = 1, metrics)``.

    Both runs are resumable (per-epoch checkpoints of ``advx.models.train``); a teacher already
    trained with the same recipe is loaded from the cache instead of retrained.

    Args:
        name: zoo architecture (e.g. ``"mnist-cnn"``).
        temperature: ``T > 0`` (the thesis: 1, 10, 20, 40, 60, 80, 100).
        epochs: student epochs (default: the recipe's).
        teacher_epochs: teacher epochs (default: ``epochs``).
        seed: overrides the recipe's seed (the teacher and the student use the same one).
        data_dir, cache_dir: as for ``advx.models.train``.
        max_samples: train both on the first training images only (reduced runs).
        progress: progress bars.

    Returns:
        The student model in eval mode and its metrics, with ``metrics["teacher"]`` the
        teacher's test accuracy.
    """
    temperature = _check_temperature(temperature)
    get_spec(name)
    teacher_epochs = epochs if teacher_epochs is None else teacher_epochs
    common = {"seed": seed, "cache_dir": cache_dir, "progress": progress}
    common["max_samples"] = max_samples
    teacher, teacher_metrics = train(
        name,
        data_dir,
        epochs=teacher_epochs,
        loss_fn=partial(temperature_loss, temperature=temperature),
        save_as=teacher_name(name, temperature),
        recipe_extra={"distillation": "teacher", "temperature": temperature},
        **common,
    )
    teacher = teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    student, metrics = train(
        name,
        data_dir,
        epochs=epochs,
        loss_fn=partial(distillation_loss, temperature=temperature),
        batch_transform=partial(_soft_batches, teacher=teacher, temperature=temperature),
        save_as=student_name(name, temperature),
        recipe_extra={
            "distillation": "student",
            "temperature": temperature,
            "teacher": teacher_name(name, temperature),
            "teacher_epochs": teacher_metrics["epochs"],
        },
        **common,
    )
    metrics["teacher_test_accuracy"] = teacher_metrics["test_accuracy"]
    metrics["temperature"] = temperature
    return student, metrics


def load_distilled(name: str, temperature: float, **kwargs) -> nn.Module:
    """Load the cached distilled model of ``name`` at ``temperature`` (``advx.models.load``)."""
    return load(student_name(name, temperature), train_if_missing=False, **kwargs)
