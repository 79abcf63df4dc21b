"""Argument checks of the attack contract, shared by every attack and by the evaluation runner.

Each check raises ``TypeError`` or ``ValueError`` with a message that names the argument, says
what was given and what is expected (the contract is in the README, "The attack contract").
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

NormLike = int | float | str

INF = float("inf")
BOX_TOLERANCE = 1e-6
"""How far outside [0, 1] a value may lie and still count as inside the box (float rounding)."""


def parse_norm(norm: NormLike, allowed: tuple[float, ...] | None = (1.0, 2.0, INF)) -> float:
    """Return ``norm`` as a float p >= 1 (``'inf'``, ``'linf'`` and ``float('inf')`` give inf).

    Args:
        norm: 1, 2, ``float('inf')``, ``'inf'``, ``'l2'``, any number >= 1 ...
        allowed: the accepted values; ``None`` accepts any p >= 1.
    """
    if isinstance(norm, bool):
        raise TypeError(f"norm must be a number or 'inf', got {norm!r}")
    if isinstance(norm, str):
        text = norm.strip().lower()
        if text in ("inf", "linf", "infinity", "max"):
            value = INF
        else:
            try:
                value = float(text.lstrip("l"))
            except ValueError:
                raise ValueError(f"norm must be 1, 2 or 'inf', got {norm!r}") from None
    elif isinstance(norm, (int, float)):
        value = float(norm)
    else:
        raise TypeError(f"norm must be a number or 'inf', got {type(norm).__name__}")
    if math.isnan(value) or value < 1:
        raise ValueError(f"norm must be >= 1, got {norm!r}")
    if allowed is not None and value not in allowed:
        names = ", ".join("inf" if a == INF else f"{a:g}" for a in allowed)
        raise ValueError(f"norm must be one of {names}; got {norm!r}")
    return value


def check_inputs(inputs: Tensor, name: str = "inputs") -> None:
    """Reject anything that is not a finite float batch in [0, 1] of rank >= 2."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {inputs.dtype}")
    if inputs.dim() < 2:
        raise ValueError(
            f"{name} must be a batch (N, C, H, W) or (N, D); got shape {tuple(inputs.shape)}"
        )
    if inputs.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")
    if not torch.isfinite(inputs).all():
        raise ValueError(f"{name} contains NaN or inf")
    low, high = inputs.min().item(), inputs.max().item()
    if low < -BOX_TOLERANCE or high > 1 + BOX_TOLERANCE:
        raise ValueError(f"{name} must lie in [0, 1]; got values in [{low:.4g}, {high:.4g}]")


def check_labels(
    labels: Tensor, batch_size: int, num_classes: int | None, name: str = "labels"
) -> None:
    """Labels must be an integer vector of length N (any integer dtype) with classes in
    [0, num_classes)."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(f"{name} must have shape (N,), got {tuple(labels.shape)}")
    if labels.shape[0] != batch_size:
        raise ValueError(
            f"{name} has {labels.shape[0]} entries but inputs has batch size {batch_size}"
        )
    if num_classes is not None and labels.numel() > 0:
        low, high = labels.min().item(), labels.max().item()
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{name} must be classes in [0, {num_classes}); got values in [{low}, {high}]"
            )


def as_labels(labels: Tensor, batch_size: int, name: str = "labels") -> Tensor:
    """Check ``labels`` (any integer dtype) and return them as int64, the dtype torch's indexing
    and losses need."""
    check_labels(labels, batch_size, None, name)
    return labels.long()


def check_logits(logits, batch_size: int) -> None:
    """The model must return an (N, K) logits tensor; outputs that look like probabilities are
    refused."""
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"model must return a logits tensor of shape (N, K); its forward returned "
            f"{type(logits).__name__}: wrap it so that forward returns the logits alone"
        )
    if logits.dim() != 2 or logits.shape[0] != batch_size:
        raise ValueError(
            f"model must return logits of shape (N, K) = ({batch_size}, K); got {tuple(logits.shape)}"
        )
    if logits.shape[1] < 2:
        raise ValueError("model must return at least two class scores")
    nonneg = bool((logits >= 0).all())
    sums_to_one = bool(torch.allclose(logits.sum(1), torch.ones_like(logits[:, 0]), atol=1e-4))
    if nonneg and sums_to_one:
        raise ValueError(
            "model output looks like probabilities (non-negative rows summing to 1); "
            "attacks need logits: remove the final softmax from the model"
        )


def check_positive(value: float, name: str, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless value > 0 (or >= 0)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and not math.isnan(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a number {bound}, got {value!r}")


def check_int(value: int, name: str, minimum: int = 1) -> None:
    """Raise ``ValueError`` naming ``name`` unless value is an int >= minimum."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _first_layer(model: nn.Module) -> nn.Module | None:
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return module
    return None


def expected_input(model) -> str | None:
    """What the model's first Linear or Conv layer expects, in words (None when unknown)."""
    layer = _first_layer(model) if isinstance(model, nn.Module) else None
    if isinstance(layer, nn.Linear):
        return f"a batch whose flattened sample has {layer.in_features} values"
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        rank = {nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5}[type(layer)]
        return f"a {rank}-D batch (N, {layer.in_channels}, ...) for its first convolution"
    return None


def check_model_matches(model, inputs: Tensor, name: str = "inputs") -> None:
    """The model's parameters must have the inputs' dtype and device (no silent casts)."""
    if not callable(model):
        raise TypeError(f"model must be a callable torch.nn.Module, got {type(model).__name__}")
    if not isinstance(model, nn.Module):
        return
    for parameter in model.parameters():
        if parameter.is_floating_point() and parameter.dtype != inputs.dtype:
            raise TypeError(
                f"{name} has dtype {inputs.dtype} but the model's parameters are "
                f"{parameter.dtype}: convert one to the other (model.to({inputs.dtype}) or "
                f"{name}.to({parameter.dtype}))"
            )
        if parameter.device != inputs.device:
            raise ValueError(
                f"{name} is on {inputs.device} but the model is on {parameter.device}: "
                f"move one to the other"
            )
        return


def forward(model, inputs: Tensor, name: str = "inputs") -> Tensor:
    """``model(inputs)``, with torch's shape errors turned into a ``ValueError`` that names the
    argument, the shape given and what the model expects; the output is checked as logits."""
    try:
        logits = model(inputs)
    except (RuntimeError, ValueError) as error:  # torch's shape and dtype errors
        expected = expected_input(model)
        wanted = f"; the model expects {expected}" if expected else ""
        raise ValueError(
            f"{name} of shape {tuple(inputs.shape)} cannot be fed to the model{wanted} "
            f"(torch said: {str(error).splitlines()[0]})"
        ) from error
    check_logits(logits, inputs.shape[0])
    return logits


def validate(model: nn.Module, inputs: Tensor, labels: Tensor, probe: int | None = None) -> Tensor:
    """Check the attack contract's arguments and return the clean logits (computed without grad,
    in eval mode like every attack's own passes: a model left in training mode would otherwise
    use batch statistics and update its BatchNorm running statistics here).

    Args:
        model: returns logits (N, K).
        inputs: float batch in [0, 1] with the model's dtype and device.
        labels: integer classes, one per sample, in [0, K).
        probe: run the forward pass on the first ``probe`` samples only (their logits are
            returned), for attacks whose own first pass computes the clean logits anyway.
    """
    check_inputs(inputs)
    check_labels(labels, inputs.shape[0], None)
    check_model_matches(model, inputs)
    checked = inputs if probe is None else inputs[:probe]
    with torch.no_grad(), attack_mode(model):
        logits = forward(model, checked)
    check_labels(labels, inputs.shape[0], logits.shape[1])
    return logits


def contract(function: Callable) -> Callable:
    """Decorator of public attacks: checks ``inputs`` and ``labels`` before the attack runs and
    passes integer labels of any dtype on as int64 (targets given as ``labels`` included)."""

    @functools.wraps(function)
    def checked(model, inputs, labels, *args, **kwargs):
        check_inputs(inputs)
        labels = as_labels(labels, inputs.shape[0])
        check_model_matches(model, inputs)
        return function(model, inputs, labels, *args, **kwargs)

    return checked


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with parameter gradients off; restore both afterwards."""
    was_training = getattr(model, "training", False)
    params = list(model.parameters()) if isinstance(model, nn.Module) else []
    grad_flags = [p.requires_grad for p in params]
    if isinstance(model, nn.Module):
        model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(params, grad_flags):
            p.requires_grad_(flag)
        if isinstance(model, nn.Module):
            model.train(was_training)
