"""The first-order pieces that DeepFool, the trust-region attack, target selection and the
convex-programming family share: input gradients of several class scores at once, the
candidate classes, and the linearised distance to a class boundary (Moosavi-Dezfooli et al.,
CVPR 2016, eq. (8) for any Lp norm)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._core import INF, lp_norm

GRADIENT_METHODS = ("auto", "per-class", "vmap", "replicate")


def _backward_per_rank(selected: Tensor, x: Tensor) -> Tensor:
    """One batched backward per column of ``selected`` (N, C): returns (C, N, *x.shape[1:])."""
    columns = [
        torch.autograd.grad(selected[:, r].sum(), x, retain_graph=True)[0]
        for r in range(selected.shape[1])
    ]
    return torch.stack(columns)


def _backward_vmapped(selected: Tensor, x: Tensor) -> Tensor:
    """All C backward passes at once through ``torch.autograd.grad(is_grads_batched=True)``
    (vmap over the cotangent): returns (C, N, *x.shape[1:])."""
    n, c = selected.shape
    eye = torch.eye(c, dtype=selected.dtype, device=selected.device)
    cotangents = eye[:, None, :].expand(c, n, c)  # cotangent r picks column r in every row
    (grads,) = torch.autograd.grad(
        selected, x, cotangents, is_grads_batched=True, retain_graph=True
    )
    return grads


def column_gradients(selected: Tensor, x: Tensor, vectorize: bool | None = None) -> Tensor:
    """Input gradients of every column of ``selected`` (N, C), a function of the leaf ``x``
    computed row by row (samples must not interact: eval mode). Returns (N, C, *x.shape[1:]).

    Args:
        selected: (N, C) scores with their graph to ``x``.
        x: the leaf that requires grad.
        vectorize: vmap the C backward passes over the cotangents (falling back to one backward
            per column when an operator has no batching rule); ``None`` vectorises on
            accelerators only (on CPU one backward per column is faster; see the benchmarks).
    """
    if vectorize is None:
        vectorize = x.device.type != "cpu"
    grads = None
    with torch.enable_grad():
        if vectorize and selected.shape[1] > 1:
            try:
                grads = _backward_vmapped(selected, x)
            except (RuntimeError, NotImplementedError):
                grads = None
        if grads is None:
            grads = _backward_per_rank(selected, x)
    return grads.transpose(0, 1).detach()


def _replicated_gradients(
    model: nn.Module, x: Tensor, classes: Tensor, scores: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """The batch copied C times, copy r backpropagating class ``classes[:, r]``: one forward
    and one backward pass of N*C samples (memory: C times one batch)."""
    n, c = classes.shape
    copies = x.detach().repeat(c, *([1] * (x.dim() - 1))).requires_grad_(True)
    with torch.enable_grad():
        values = scores(model(copies)).reshape(c, n, -1)
        picked = values.gather(2, classes.T[:, :, None]).squeeze(2)  # (C, N)
        (grads,) = torch.autograd.grad(picked.sum(), copies)
    grads = grads.reshape(c, *x.shape).movedim(0, 1)
    return values[0].detach(), grads.detach()


def class_gradients(
    model: nn.Module,
    x: Tensor,
    classes: Tensor,
    vectorize: bool | None = None,
    *,
    method: str = "auto",
    scores: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Scores and input gradients of selected class scores, batched over samples and classes.

    Args:
        model: returns logits; samples must not interact (eval mode, as ``attack_mode`` sets).
        x: the inputs (N, ...).
        classes: integer (N, C): row i lists the C classes whose gradients sample i needs (rows
            may differ).
        vectorize: for ``method="auto"``: see :func:`column_gradients`.
        method: ``"auto"`` (one forward pass, then the C backward passes per class or vmapped),
            ``"per-class"``, ``"vmap"``, or ``"replicate"`` (the batch copied C times: one
            forward and one backward pass of N*C samples).
        scores: applied to the logits before selecting (e.g. a softmax); default the logits.

    Returns:
        ``(values, grads)``: the scores (N, K) at x and ``grads`` (N, C, *x.shape[1:]) with
        ``grads[i, r] = d scores_{classes[i, r]}(x_i) / d x_i``, both detached. No parameter
        gradients are accumulated.
    """
    if method not in GRADIENT_METHODS:
        raise ValueError(f"method must be one of {GRADIENT_METHODS}, got {method!r}")
    if classes.dim() != 2 or classes.shape[0] != x.shape[0]:
        raise ValueError(
            f"classes must have shape (N, C) with N={x.shape[0]}; got {tuple(classes.shape)}"
        )
    scores = scores or (lambda logits: logits)
    if method == "replicate":
        return _replicated_gradients(model, x, classes, scores)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        values = scores(model(x))
        selected = values.gather(1, classes)
    if method != "auto":
        vectorize = method == "vmap"
    return values.detach(), column_gradients(selected, x, vectorize)


def forward_with_graph(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(x as a leaf that requires grad, the logits at x with their graph): one forward pass
    whose backward passes the caller takes only when it needs them."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        return x, model(x)


def candidate_classes(logits: Tensor, first: Tensor, count: int) -> Tensor:
    """(N, count) classes: ``first`` in column 0, then the ``count - 1`` highest-logit other
    classes in decreasing order of logit (DeepFool's restriction to the top classes)."""
    count = min(count, logits.shape[1])
    others = logits.scatter(1, first[:, None], -INF).topk(count - 1, dim=1).indices
    return torch.cat([first[:, None], others], dim=1)


def boundary_distance(values: Tensor, grads: Tensor, q: float) -> Tensor:
    """The linearised distance |f| / ||grad f||_q to the zero level set of each f, q the dual
    exponent of the attack's norm (Moosavi-Dezfooli et al. 2016, eq. (8); exact for an affine f
    without box constraints); inf where the gradient is zero.

    Args:
        values: f, any shape S (e.g. (N, C) margins z_j - z_y).
        grads: their input gradients, shape S + the input shape.
        q: the dual exponent (1 for Linf, 2 for L2, inf for L1).
    """
    w_norm = lp_norm(grads.reshape(-1, *grads.shape[values.dim() :]), q).reshape(values.shape)
    return distance_over_norm(values, w_norm)


def distance_over_norm(values: Tensor, norms: Tensor) -> Tensor:
    """|f| / ||grad f||_q from the dual norms already computed (:func:`boundary_distance`);
    inf where the norm is zero."""
    distance = values.abs() / norms.clamp_min(1e-30)
    return torch.where(norms > 0, distance, torch.full_like(distance, INF))


__all__ = [
    "GRADIENT_METHODS",
    "boundary_distance",
    "candidate_classes",
    "class_gradients",
    "column_gradients",
    "distance_over_norm",
    "forward_with_graph",
]
