"""Shared pieces of every attack: argument checks, norms and dual norms, steepest-ascent
directions, projections, margin losses, per-sample constants and best-so-far tracking.

Conventions (see the attack contract in the README):
inputs are float batches (N, ...) in [0, 1]; ``model(inputs)`` returns logits (N, K);
perturbation norms are computed per sample over all non-batch dimensions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import (  # noqa: F401  (the attacks' checks live in advx.checks)
    BOX_TOLERANCE,
    INF,
    NormLike,
    as_labels,
    attack_mode,
    check_inputs,
    check_int,
    check_labels,
    check_logits,
    check_model_matches,
    check_positive,
    contract,
    forward,
    parse_norm,
    validate,
)

EpsLike = float | int | Tensor


# --------------------------------------------------------------------------- per-sample values


def dual_exponent(p: float) -> float:
    """The Hölder conjugate q of p, 1/p + 1/q = 1 (1 <-> inf)."""
    if p == 1:
        return INF
    if p == INF:
        return 1.0
    return p / (p - 1.0)


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


# --------------------------------------------------------------------------- norms


def flat(x: Tensor) -> Tensor:
    """View a batch as (N, D)."""
    return x.reshape(x.shape[0], -1)


class BatchRows:
    """Mixin for a dataclass of per-sample tensors (one row per sample still iterating): ``keep``
    returns the rows where ``mask`` is True, so attacks can drop samples that have stopped."""

    def keep(self, mask: Tensor):
        return type(self)(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))


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


# --------------------------------------------------------------------------- targets


def attacked_classes(
    labels: Tensor, target: Tensor | None, targeted: bool, num_classes: int
) -> Tensor | None:
    """The class each sample is pushed towards by a minimal-norm attack that also takes a
    ``target=`` keyword: the labels themselves when ``targeted`` (they are the targets), the
    checked ``target`` tensor when given, else None (any other class)."""
    if targeted and target is not None:
        raise ValueError(
            "give the target classes either as labels with targeted=True or as target="
        )
    if targeted:
        return labels
    if target is not None:
        target = as_labels(target, labels.shape[0], name="target")
        check_labels(target, labels.shape[0], num_classes, name="target")
        return target.to(labels.device)
    return None


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


def keep_best(
    best_adv: Tensor, best_norm: Tensor, candidate: Tensor, candidate_norm: Tensor, success: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample, the lower-norm of the best so far and a successful candidate, without host
    synchronisation. Returns the new (best adversarial, best norm) and the mask of improved
    samples."""
    improved = success & (candidate_norm < best_norm)
    adv = torch.where(view_like(improved, candidate), candidate.to(best_adv.dtype), best_adv)
    return adv, torch.where(improved, candidate_norm, best_norm), improved


def update_best(
    best_adv: Tensor, best_norm: Tensor, candidate: Tensor, candidate_norm: Tensor, success: Tensor
) -> Tensor:
    """:func:`keep_best` in place on ``best_adv`` and ``best_norm``; returns the mask."""
    adv, norm, improved = keep_best(best_adv, best_norm, candidate, candidate_norm, success)
    best_adv.copy_(adv)
    best_norm.copy_(norm)
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
