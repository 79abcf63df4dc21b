"""Gradient baselines with a norm budget: FGM (fast gradient method), I-FGM/BIM and PGD."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from ._core import (
    INF,
    EpsLike,
    NormLike,
    attack_mode,
    check_int,
    check_positive,
    clip_box,
    contract,
    flat,
    is_adversarial,
    l1_normalized_direction,
    loss_and_grad,
    lp_norm,
    parse_norm,
    per_sample,
    project_lp_ball,
    steepest_direction,
    validate,
    view_like,
)

L1_STEPS = ("steepest", "normalized")
PGD_L1_STEPS = ("sparse", "normalized")
KEEP = ("first", "last")


def _check_keep(keep: str) -> None:
    """``keep`` of the iterative attacks: which iterate a sample returns."""
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")


def _direction(grad: Tensor, p: float, l1_step: str) -> Tensor:
    if p == 1 and l1_step == "normalized":
        return l1_normalized_direction(grad)
    return steepest_direction(grad, p)


@contract
def fgm(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    eps: EpsLike,
    norm: NormLike = INF,
    targeted: bool = False,
    loss: str = "ce",
    l1_step: str = "steepest",
) -> Tensor:
    """Fast gradient method: one step of size ``eps`` along the steepest-ascent direction of the
    loss for the given norm (Goodfellow et al. 2015, FGSM for Linf; Miyato et al. / Kurakin et al.
    for L2), x' = clip_[0,1](x + eps * argmax_{||d||_p <= 1} <grad, d>).

    ``norm=inf`` steps along sign(grad); ``norm=2`` along grad/||grad||_2. For ``norm=1``,
    ``l1_step='steepest'`` (the default) is the exact dual-norm argmax: it moves the single
    largest-|gradient| coordinate by eps, which is what linearised-optimal L1 attacks do (the
    convex-programming paper's p=1 case); ``l1_step='normalized'`` steps along grad/||grad||_1
    scaled by eps, the convention of foolbox/ART. ``eps`` is a float or an (N,) tensor.
    ``targeted=True`` decreases the loss towards ``labels`` as targets.
    """
    p = parse_norm(norm)
    if l1_step not in L1_STEPS:
        raise ValueError(f"l1_step must be one of {L1_STEPS}, got {l1_step!r}")
    validate(model, inputs, labels)
    radius = per_sample(eps, inputs, "eps")
    with attack_mode(model):
        _, _, grad = loss_and_grad(model, inputs, labels, loss, targeted)
    step = _direction(grad, p, l1_step)
    return clip_box(inputs + view_like(radius, inputs) * step).detach()


def _random_start(
    inputs: Tensor, radius: Tensor, p: float, generator: torch.Generator | None
) -> Tensor:
    """A random point of the Lp ball of each sample's radius (uniform for Linf and L2)."""
    shape, kw = inputs.shape, {"device": inputs.device, "dtype": inputs.dtype}
    if p == INF:
        noise = torch.rand(shape, generator=generator, **kw) * 2 - 1
        return noise * view_like(radius, inputs)
    gauss = torch.randn(shape, generator=generator, **kw)
    d = flat(gauss).shape[1]
    if p == 2:
        direction = gauss / view_like(lp_norm(gauss, 2).clamp_min(1e-12), inputs)
        scale = torch.rand(shape[0], generator=generator, **kw).pow(1.0 / d) * radius
        return direction * view_like(scale, inputs)
    laplace = gauss.sign() * torch.empty(shape, **kw).exponential_(generator=generator)
    direction = laplace / view_like(lp_norm(laplace, 1).clamp_min(1e-12), inputs)
    scale = torch.rand(shape[0], generator=generator, **kw).pow(1.0 / d) * radius
    return direction * view_like(scale, inputs)


def _sparse_l1_step(grad: Tensor, sparsity: float) -> Tensor:
    """L1 ascent step of unit L1 norm spread over the top ``sparsity`` fraction of |grad|
    coordinates (the SLIDE step of Tramèr & Boneh 2019); sparsity -> 0 is the steepest step."""
    g = flat(grad)
    k = max(1, int(round(sparsity * g.shape[1])))
    top = g.abs().topk(k, dim=1).indices
    d = torch.zeros_like(g).scatter_(1, top, g.gather(1, top).sign())
    return (d / k).reshape(grad.shape)


def _projected_ascent(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    start: Tensor,
    radius: Tensor,
    p: float,
    steps: int,
    step_size: Tensor,
    targeted: bool,
    loss: str,
    l1_direction: Callable[[Tensor], Tensor],
    keep: str = "first",
) -> tuple[Tensor, Tensor]:
    """Run projected steepest ascent; return, per sample, the first adversarial iterate (the
    last one where none succeeded) or, with ``keep='last'``, the last iterate, and the success
    mask of what is returned."""
    x = start.clone()
    found = torch.zeros(inputs.shape[0], dtype=torch.bool, device=inputs.device)
    kept = x.clone()
    alpha = view_like(step_size, inputs)
    for _ in range(steps):
        logits, _, grad = loss_and_grad(model, x, labels, loss, targeted)
        newly = is_adversarial(logits, labels, targeted) & ~found
        kept[newly], found = x[newly], found | newly
        if p == 1:
            direction = l1_direction(grad)
        else:
            direction = steepest_direction(grad, p)
        delta = project_lp_ball(x + alpha * direction - inputs, radius, p)
        x = clip_box(inputs + delta).detach()
    with torch.no_grad():
        last_success = is_adversarial(model(x), labels, targeted)
    if keep == "last":
        return x, last_success
    kept = torch.where(view_like(found, x), kept, x)
    kept = torch.where(view_like(last_success & ~found, x), x, kept)
    return kept, found | last_success


@contract
def pgd(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    eps: EpsLike,
    norm: NormLike = INF,
    steps: int = 40,
    step_size: EpsLike | None = None,
    random_start: bool = True,
    restarts: int = 1,
    targeted: bool = False,
    loss: str = "ce",
    l1_sparsity: float = 0.01,
    l1_step: str = "sparse",
    keep: str = "first",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient descent (Madry et al. 2018): from a random point of the eps-ball, repeat
    x <- Proj_{B_p(x0, eps) ∩ [0,1]^D}(x + alpha * d), d the steepest-ascent direction of the loss
    for the Lp norm (sign for Linf, normalised gradient for L2, for L1 the sparse SLIDE step over
    the top ``l1_sparsity`` of the coordinates, or with ``l1_step='normalized'`` grad / ||grad||_1,
    the L1 step of CleverHans 2.0 that the EAD paper's I-FGM-L1 used).

    ``step_size`` defaults to 2.5 * eps / steps; ``restarts`` runs again from new random starts on
    the samples not yet fooled. Returns, per sample, the first adversarial iterate found, else the
    final iterate; ``keep='last'`` runs every step and returns the final iterate, as Madry et
    al.'s PGD does (further past the boundary: the examples of transfer attacks, thesis Table
    10). Every output lies in the budget and in [0, 1]. ``eps`` may be an (N,) tensor.
    """
    p = parse_norm(norm)
    check_int(steps, "steps", 0)
    check_int(restarts, "restarts", 1)
    check_positive(l1_sparsity, "l1_sparsity")
    if l1_step not in PGD_L1_STEPS:
        raise ValueError(f"l1_step must be one of {PGD_L1_STEPS}, got {l1_step!r}")
    _check_keep(keep)
    validate(model, inputs, labels)
    if l1_step == "sparse":
        l1_direction = partial(_sparse_l1_step, sparsity=l1_sparsity)
    else:
        l1_direction = l1_normalized_direction
    radius = per_sample(eps, inputs, "eps")
    alpha = (
        2.5 * radius / max(steps, 1)
        if step_size is None
        else per_sample(step_size, inputs, "step_size")
    )
    best = inputs.clone()
    done = torch.zeros(inputs.shape[0], dtype=torch.bool, device=inputs.device)
    with attack_mode(model):
        for restart in range(restarts):
            todo = (~done).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            x0, y, r = inputs[todo], labels[todo], radius[todo]
            start = x0
            if random_start:
                start = clip_box(x0 + _random_start(x0, r, p, generator))
            adv, success = _projected_ascent(
                model, x0, y, start, r, p, steps, alpha[todo], targeted, loss, l1_direction, keep
            )
            if restart == 0:
                best[todo] = adv
            else:
                best[todo[success]] = adv[success]
            done[todo] = success
    return best.detach()


@contract
def ifgm(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    eps: EpsLike,
    norm: NormLike = INF,
    steps: int = 10,
    step_size: EpsLike | None = None,
    targeted: bool = False,
    loss: str = "ce",
    l1_step: str = "sparse",
    keep: str = "first",
) -> Tensor:
    """Iterative FGM / basic iterative method (Kurakin et al. 2017): ``steps`` gradient steps of
    size ``step_size`` (default eps/steps) from the clean input, each followed by projection onto
    the eps-ball and the box. Alias: ``bim``. Equals ``pgd`` without random start (``l1_step``
    and ``keep``: as for ``pgd``)."""
    check_int(steps, "steps", 1)
    if step_size is None:
        step_size = eps / steps
    return pgd(
        model,
        inputs,
        labels,
        eps=eps,
        norm=norm,
        steps=steps,
        step_size=step_size,
        random_start=False,
        targeted=targeted,
        loss=loss,
        l1_step=l1_step,
        keep=keep,
    )


bim = ifgm
