"""A model wrapper that counts what an attack costs: forward calls, samples forwarded and
backward passes (samples whose gradient flowed back to the input)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

try:  # torch.func internals, used to count the real rows of vmapped tensors
    from torch._C import _functorch
except ImportError:  # pragma: no cover
    _functorch = None


def rows(x: Tensor) -> int:
    """Rows (samples) a tensor carries: its first dimension, times the sizes of the
    ``torch.func.vmap`` dimensions it is batched over (so vmapped calls count every sample)."""
    count = int(x.shape[0]) if x.dim() > 0 else 1
    if _functorch is None:
        return count
    try:
        t = x
        while True:
            if _functorch.is_batchedtensor(t):
                inner, dim = _functorch._unwrap_batched(t, _functorch.maybe_get_level(t))
                count *= int(inner.shape[dim]) if dim is not None else 1
                t = inner
            elif _functorch.is_gradtrackingtensor(t) or _functorch.is_functionaltensor(t):
                t = _functorch.get_unwrapped(t)
            else:
                return count
    except (RuntimeError, AttributeError, TypeError):
        return int(x.shape[0]) if x.dim() > 0 else 1


@dataclass
class Counts:
    """Snapshot of a :class:`CountingModel`'s counters."""

    forward_calls: int = 0
    forward_samples: int = 0
    backward_calls: int = 0
    backward_samples: int = 0


class CountingModel(nn.Module):
    """Wrap ``model`` and count its use.

    ``forward_calls`` / ``forward_samples``: calls to ``forward`` and the rows they carried.
    ``backward_calls`` / ``backward_samples``: backward passes that reached the input of a
    forward call and the rows of that input gradient. The backward count uses one tensor hook on
    a view of the input, registered only when the input requires a gradient, so it costs nothing
    measurable. A gradient that reaches the same forward call's input twice (two backward passes
    through one graph) counts twice. Under ``torch.func.vmap`` one vmapped call counts once, with
    all the samples it carries (a per-class Jacobian by ``jacrev`` counts K gradient rows per
    sample).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.train(getattr(model, "training", False))  # mirror the wrapped model's mode
        self.reset()

    def reset(self) -> None:
        """Set every counter back to zero."""
        self.forward_calls = 0
        self.forward_samples = 0
        self.backward_calls = 0
        self.backward_samples = 0

    def counts(self) -> Counts:
        """The current counters as a :class:`Counts`."""
        return Counts(
            self.forward_calls, self.forward_samples, self.backward_calls, self.backward_samples
        )

    def _on_backward(self, grad: Tensor) -> None:
        self.backward_calls += 1
        self.backward_samples += rows(grad)

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        """Count the call, tap the input for the backward count, and run the wrapped model."""
        self.forward_calls += 1
        self.forward_samples += rows(x)
        if torch.is_grad_enabled() and x.requires_grad:
            x = x.view_as(x)
            x.register_hook(self._on_backward)
        return self.model(x, *args, **kwargs)
