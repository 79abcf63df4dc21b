"""Shared pieces of every attack: argument checks, norms and dual norms, steepest-ascent
directions, projections, margin losses, per-sample constants and best-so-far tracking.

Conventions (see the attack contract in the README):
inputs are float batches (N, ...) in [0, 1]; ``model(inputs)`` returns logits (N, K);
perturbation norms are computed per sample over all non-batch dimensions.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

NormLike = int | float | str
EpsLike = float | int | Tensor

INF = float("inf")
_BOX_TOLERANCE = 1e-6


# --------------------------------------------------------------------------- argument checks


def parse_norm(norm: NormLike, allowed: tuple[float, ...] | None = (1.0, 2.0, INF)) -> float:
    """Return ``norm`` as a float p >= 1 (``'inf'``, ``'linf'`` and ``float('inf')`` give inf).

    ``allowed`` restricts p to a set; ``None`` accepts any p >= 1.
    Raises ``ValueError`` naming the argument ``norm`` otherwise.
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


def dual_exponent(p: float) -> float:
    """The Hölder conjugate q of p, 1/p + 1/q = 1 (1 <-> inf)."""
    if p == 1:
        return INF
    if p == INF:
        return 1.0
    return p / (p - 1.0)


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
    if low < -_BOX_TOLERANCE or high > 1 + _BOX_TOLERANCE:
        raise ValueError(f"{name} must lie in [0, 1]; got values in [{low:.4g}, {high:.4g}]")


def check_labels(
    labels: Tensor, batch_size: int, num_classes: int | None, name: str = "labels"
) -> None:
    """Labels must be an integer vector of length N with classes in [0, num_classes)."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
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


def check_logits(logits: Tensor, batch_size: int) -> None:
    """The model must return (N, K) logits; outputs that look like probabilities are refused."""
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
    ok = value >= 0 if allow_zero else value > 0
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not ok
        or math.isnan(value)
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a number {bound}, got {value!r}")


def check_int(value: int, name: str, minimum: int = 1) -> None:
    """Raise ``ValueError`` naming ``name`` unless value is an int >= minimum."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def validate(model: nn.Module, inputs: Tensor, labels: Tensor, probe: int | None = None) -> Tensor:
    """Check the attack contract's arguments and return the clean logits (computed without grad,
    in eval mode like every attack's own passes: a model left in training mode would otherwise
    use batch statistics and update its BatchNorm running statistics here).

    ``probe=k`` runs the forward pass on the first k samples only (their logits are returned):
    for attacks whose own first pass computes the clean logits anyway, the model and the labels'
    class range are still checked, at a fraction of a batch's forward pass.
    """
    if not callable(model):
        raise TypeError("model must be a callable torch.nn.Module returning logits")
    check_inputs(inputs)
    check_labels(labels, inputs.shape[0], None)
    checked = inputs if probe is None else inputs[:probe]
    with torch.no_grad(), attack_mode(model):
        logits = model(checked)
    check_logits(logits, checked.shape[0])
    check_labels(labels, inputs.shape[0], logits.shape[1])
    return logits


def per_sample(value: EpsLike, like: Tensor, name: str = "eps", allow_zero: bool = True) -> Tensor:
    """Broadcast a float or an (N,) tensor to an (N,) tensor on ``like``'s device and dtype."""
    n = like.shape[0]
    if isinstance(value, Tensor):
        out = value.detach().to(device=like.device, dtype=like.dtype).flatten()
        if out.numel() == 1:
            out = out.expand(n).clone()
        if out.numel() != n:
            raise ValueError(
                f"{name} must be a float or a tensor of N={n} values; got {out.numel()}"
            )
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out = torch.full((n,), float(value), device=like.device, dtype=like.dtype)
    else:
        raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    if not torch.isfinite(out).all() or (out < 0).any() or (not allow_zero and (out == 0).any()):
        raise ValueError(f"{name} must be finite and {'>= 0' if allow_zero else '> 0'}")
    return out


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


# --------------------------------------------------------------------------- norms


def flat(x: Tensor) -> Tensor:
    """View a batch as (N, D)."""
    return x.reshape(x.shape[0], -1)


def view_like(values: Tensor, x: Tensor) -> Tensor:
    """Reshape an (N,) tensor so that it broadcasts against the batch ``x``."""
    return values.reshape(-1, *([1] * (x.dim() - 1)))


def lp_norm(x: Tensor, p: float) -> Tensor:
    """Per-sample Lp norm over all non-batch dimensions (p = 0 counts non-zeros)."""
    x = flat(x)
    if p == 0:
        return (x != 0).sum(1).to(x.dtype)
    if p == INF:
        return x.abs().amax(1)
    if p == 1:
        return x.abs().sum(1)
    if p == 2:
        return x.norm(p=2, dim=1)
    return x.abs().pow(p).sum(1).pow(1.0 / p)


def steepest_direction(grad: Tensor, p: float) -> Tensor:
    """Unit-Lp-norm direction d maximising <grad, d> (the dual-norm argmax).

    p = inf: sign(grad); p = 2: grad/||grad||_2; p = 1: a one-hot vector at the largest |grad|
    coordinate; other p: sign(g)|g|^(q-1)/||g||_q^(q-1) with q the dual exponent. Then
    <grad, d> = ||grad||_q. A zero gradient gives a zero direction.
    """
    g = flat(grad)
    if p == INF:
        d = g.sign()
    elif p == 2:
        d = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    elif p == 1:
        idx = g.abs().argmax(1, keepdim=True)
        d = torch.zeros_like(g).scatter_(1, idx, g.gather(1, idx).sign())
    else:
        q = dual_exponent(p)
        mag = g.abs().pow(q - 1)
        d = g.sign() * mag / lp_norm(g, q).pow(q - 1).clamp_min(1e-12).unsqueeze(1)
    return d.reshape(grad.shape)


def l1_normalized_direction(grad: Tensor) -> Tensor:
    """grad / ||grad||_1: the L1 'FGM' direction used by several libraries (not steepest)."""
    g = flat(grad)
    return (g / g.abs().sum(1, keepdim=True).clamp_min(1e-12)).reshape(grad.shape)


def project_l1_ball(delta: Tensor, radius: Tensor) -> Tensor:
    """Euclidean projection of each sample onto the L1 ball (Duchi et al. 2008, sort-based)."""
    v = flat(delta)
    r = radius.reshape(-1, 1)
    inside = v.abs().sum(1, keepdim=True) <= r
    u = v.abs().sort(dim=1, descending=True).values
    css = u.cumsum(1)
    ks = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    cond = u * ks > (css - r)
    rho = (cond.sum(1, keepdim=True) - 1).clamp_min(0)  # cond holds on a prefix of the sort
    theta = ((css.gather(1, rho) - r) / (rho + 1).to(v.dtype)).clamp_min(0)
    projected = v.sign() * (v.abs() - theta).clamp_min(0)
    return torch.where(inside, v, projected).reshape(delta.shape)


def project_lp_ball(delta: Tensor, radius: Tensor, p: float) -> Tensor:
    """Project each sample's perturbation onto {||delta||_p <= radius} (radius is (N,))."""
    if p == INF:
        r = view_like(radius, delta)
        return torch.maximum(torch.minimum(delta, r), -r)
    if p == 2:
        norms = lp_norm(delta, 2)
        factor = torch.where(
            norms > radius, radius / norms.clamp_min(1e-12), torch.ones_like(norms)
        )
        return delta * view_like(factor, delta)
    if p == 1:
        return project_l1_ball(delta, radius)
    raise ValueError(f"projection onto the L{p:g} ball is not implemented; use 1, 2 or inf")


def clip_box(x: Tensor) -> Tensor:
    """Clamp into the image box [0, 1]."""
    return x.clamp(0.0, 1.0)


# --------------------------------------------------------------------------- losses


def other_class_max(logits: Tensor, labels: Tensor) -> Tensor:
    """max_{j != label} logits_j for each row."""
    mask = torch.nn.functional.one_hot(labels, logits.shape[1]).bool()
    return logits.masked_fill(mask, -INF).amax(1)


def margin(logits: Tensor, labels: Tensor, targeted: bool = False) -> Tensor:
    """Per-sample margin that is positive while the attack has not yet succeeded.

    Untargeted: z_y - max_{j != y} z_j (labels are the true classes).
    Targeted:   max_{j != t} z_j - z_t (labels are the targets).
    Works equally on logits or log-probabilities (the C&W f_6 objective, Carlini & Wagner 2017).
    """
    chosen = logits.gather(1, labels[:, None]).squeeze(1)
    others = other_class_max(logits, labels)
    return others - chosen if targeted else chosen - others


def is_adversarial(logits: Tensor, labels: Tensor, targeted: bool = False) -> Tensor:
    """Boolean (N,): prediction differs from the label (untargeted) or equals the target."""
    pred = logits.argmax(1)
    return pred == labels if targeted else pred != labels


def reaches(logits: Tensor, labels: Tensor, attacked: Tensor | None = None) -> Tensor:
    """Boolean (N,): with ``attacked`` None, a class other than ``labels`` wins; otherwise the
    attacked class wins (a minimal-norm attack towards a given class per sample)."""
    if attacked is None:
        return is_adversarial(logits, labels)
    return is_adversarial(logits, attacked, targeted=True)


def loss_and_grad(
    model: nn.Module, x: Tensor, labels: Tensor, loss: str = "ce", targeted: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, per-sample loss to *increase* and its input gradient.

    ``loss='ce'``: cross-entropy (negated for targeted attacks); ``loss='margin'``: minus the margin.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        if loss == "ce":
            value = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
            value = -value if targeted else value
        elif loss == "margin":
            value = -margin(logits, labels, targeted)
        else:
            raise ValueError(f"loss must be 'ce' or 'margin', got {loss!r}")
        (grad,) = torch.autograd.grad(value.sum(), x)
    return logits.detach(), value.detach(), grad


# --------------------------------------------------------------------------- tracking

DECISION_RULES = ("en", "l1", "l2")


def decision_distance(l1: Tensor, squared_l2: Tensor, beta: float, rule: str) -> Tensor:
    """The distance that ranks successful iterates (Chen et al., AAAI 2018, Sec. 3, "decision
    rule"): ``'en'`` the elastic-net distance beta * ||delta||_1 + ||delta||_2^2, ``'l1'``
    ||delta||_1, ``'l2'`` ||delta||_2. Arguments are per-sample (N,) tensors."""
    if rule == "en":
        return squared_l2 + beta * l1
    if rule == "l1":
        return l1
    if rule == "l2":
        return squared_l2.sqrt()
    raise ValueError(f"decision_rule must be one of {DECISION_RULES}, got {rule!r}")


def update_best(
    best_adv: Tensor, best_norm: Tensor, candidate: Tensor, candidate_norm: Tensor, success: Tensor
) -> Tensor:
    """Keep, per sample, the lowest-norm successful candidate. Updates in place; returns the mask."""
    improved = success & (candidate_norm < best_norm)
    best_norm[improved] = candidate_norm[improved]
    best_adv[improved] = candidate[improved].to(best_adv.dtype)
    return improved


def binary_search_step(
    const: Tensor, lower: Tensor, upper: Tensor, success: Tensor, grow: float = 10.0
) -> Tensor:
    """One per-sample binary-search update on a constant (C&W 2017, Sec. V):
    success lowers the upper bound, failure raises the lower bound (or multiplies by ``grow``
    while no upper bound is known). Updates ``lower``/``upper`` in place; returns the new constant.
    """
    upper[success] = torch.minimum(upper[success], const[success])
    lower[~success] = torch.maximum(lower[~success], const[~success])
    bounded = upper < 1e10
    return torch.where(bounded, (lower + upper) / 2, const * grow)
