"""Boundary refinement of found adversarial examples (not in Yao et al. 2019; the backward step
and linearised projection of FAB, Croce & Hein, ICML 2020, Sec. 3), then a bisection towards the
input: the optional ``refine_steps`` stage of ``trust_region``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._core import INF, clip_box, flat, lp_norm, reaches, update_best, view_like

_BISECTION_STEPS = 10  # after the refinement: the boundary to 0.1% of the perturbation


def _boundary_margin(
    model: nn.Module, x: Tensor, labels: Tensor, attacked: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, the margin f that is negative exactly where x is adversarial, and its input
    gradient. Untargeted (``attacked`` None): f = z_y - max_{j != y} z_j. Towards a class i:
    f = max_{j != i} z_j - z_i."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xg)
        keep = labels if attacked is None else attacked
        other = logits.scatter(1, keep[:, None], -INF).amax(1)
        own = logits.gather(1, keep[:, None]).squeeze(1)
        f = own - other if attacked is None else other - own
        (g,) = torch.autograd.grad(f.sum(), xg)
    return logits.detach(), f.detach(), g


def _project_to_linear_boundary(base: Tensor, x: Tensor, f: Tensor, g: Tensor, p: float) -> Tensor:
    """The Lp-nearest point to ``base`` (in the box) that lies in the box and on the far side of
    the boundary of the linearisation at x, {u in [0, 1]^D : f + <g, u - x> <= 0}.

    By the KKT conditions of both problems it is u(lam) = clip(base - lam d) with d = g (L2) or
    d = sign(g) (Linf) and the smallest lam >= 0 that satisfies the constraint, the projection FAB
    (Croce & Hein, ICML 2020, Sec. 3.1) computes. h(lam) = f + <g, u(lam) - x> is piecewise
    linear and non-increasing; its breakpoints are where coordinates reach the box, so sorting
    them gives the segments and lam exactly, per sample, without a loop. Where no lam satisfies
    the constraint (the box forbids the crossing), every coordinate moves to its bound.
    """
    d = g.sign() if p == INF else g
    fd, fb = flat(d), flat(base)
    h0 = f + (flat(g) * (fb - flat(x))).sum(1)
    room = torch.where(fd > 0, fb, 1.0 - fb).clamp_min(0)  # distance to the bound it moves to
    stop = torch.where(fd != 0, room / fd.abs().clamp_min(1e-30), torch.zeros_like(fb))
    rate = flat(g) * fd  # >= 0: how fast coordinate i lowers h while it moves
    order = stop.argsort(1)
    stop, rate = stop.gather(1, order), rate.gather(1, order)
    after = rate.sum(1, keepdim=True) - rate.cumsum(1)  # rate still moving after breakpoint k
    h_at = h0[:, None] - (rate * stop).cumsum(1) - stop * after  # h at each breakpoint
    reached = h_at <= 0
    k = reached.to(torch.uint8).argmax(1, keepdim=True)  # first breakpoint where h <= 0
    before = (k - 1).clamp_min(0)
    first = k.squeeze(1) == 0
    stop_before = torch.where(first, 0.0, stop.gather(1, before).squeeze(1))
    h_before = torch.where(first, h0, h_at.gather(1, before).squeeze(1))
    slope = (after + rate).gather(1, k).squeeze(1)  # rate moving on the segment ending at k
    lam = stop_before + h_before.clamp_min(0) / slope.clamp_min(1e-30)
    lam = torch.where(reached.any(1), lam, stop[:, -1])  # infeasible: all to their bounds
    lam = torch.where(h0 <= 0, torch.zeros_like(lam), lam)
    return clip_box(base - view_like(lam, d) * d)


def _bisect_towards_input(
    model: nn.Module,
    inputs: Tensor,
    adv: Tensor,
    labels: Tensor,
    attacked: Tensor | None,
    steps: int = _BISECTION_STEPS,
) -> Tensor:
    """The adversarial point x0 + s (adv - x0) with the smallest s in (0, 1] that a ``steps``-step
    bisection on s finds (each step one forward pass; s = 1 is adversarial by assumption). It
    removes the overshoot the last projection left beyond the boundary."""
    delta = adv - inputs
    low = torch.zeros(adv.shape[0], dtype=adv.dtype, device=adv.device)
    high = torch.ones_like(low)
    for _ in range(steps):
        mid = (low + high) / 2
        with torch.no_grad():
            success = reaches(model(inputs + view_like(mid, delta) * delta), labels, attacked)
        high, low = torch.where(success, mid, high), torch.where(success, low, mid)
    return inputs + view_like(high, delta) * delta


def _refine(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    attacked: Tensor | None,
    adv: Tensor,
    norms: Tensor,
    p: float,
    steps: int,
    shrink: float,
    overshoot: float,
) -> None:
    """Boundary refinement of found adversarials (not in Yao et al.; the backward step and
    linearised projection of FAB, Croce & Hein, ICML 2020, Sec. 3), in place on ``adv`` and
    ``norms`` (inf where nothing was found, 0 where the input was already adversarial; those
    rows are skipped).

    Trust-region steps stop at the first adversarial iterate, on the boundary but not at its
    point nearest the input. Each refinement step moves an adversarial iterate towards the input,
    u = x0 + ``shrink`` (x - x0), then projects u onto the far side of the linearised boundary at
    x within the box (``_project_to_linear_boundary``) and overshoots on the whole perturbation,
    as DeepFool does (no compounding: each step starts again from the shrunk point); a
    non-adversarial iterate is projected from itself. Its fixed points have the perturbation
    parallel to the dual direction of the margin gradient, the optimality condition
    of the minimal-norm problem. Every iterate that is adversarial (``attacked`` None: any other
    class wins; else class ``attacked`` wins) and smaller than the best so far replaces it.
    One forward and one backward pass per step on the refined rows, then a bisection on the
    segment from the input to the best (``_bisect_towards_input``, forward passes only).
    """
    idx = (torch.isfinite(norms) & (norms > 0)).nonzero().squeeze(1)
    if idx.numel() == 0:
        return
    x0, y = inputs[idx], labels[idx]
    cls = None if attacked is None else attacked[idx]
    x, best, best_norm = adv[idx].clone(), adv[idx].clone(), norms[idx].clone()
    for _ in range(steps):
        _, f, g = _boundary_margin(model, x, y, cls)
        success = f < 0
        update_best(best, best_norm, x, lp_norm(x - x0, p), success)
        base = torch.where(view_like(success, x), x0 + shrink * (x - x0), x)
        target = _project_to_linear_boundary(base, x, f, g, p)
        x = clip_box(x0 + (1 + overshoot) * (target - x0))
    with torch.no_grad():
        success = reaches(model(x), y, cls)
    update_best(best, best_norm, x, lp_norm(x - x0, p), success)
    best = _bisect_towards_input(model, x0, best, y, cls)
    adv[idx], norms[idx] = best, lp_norm(best - x0, p)
