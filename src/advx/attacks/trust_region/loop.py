"""The iterations of the trust-region attack (Yao, Gholami, Xu, Keutzer & Mahoney, CVPR 2019,
Algorithm 1 and eq. (3)): the local first- and second-order steps, the radius update, and the
loop over iterates, driven by one frozen ``TrustRegionSettings``.

Notation follows the paper: z are the logits, t the class to push down (the true class while the
sample is still correctly classified), i the attacked class, f(x) = z_t(x) - z_i(x) the margin
that must become negative, m^j the local model of eq. (3) and rho the ratio of Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._core import (
    INF,
    EpsLike,
    clip_box,
    flat,
    lp_norm,
    per_sample,
    reaches,
    update_best,
    view_like,
)
from ..linearisation import class_gradients, distance_over_norm, forward_with_graph
from .krylov import _hvp, gltr, steihaug_cg
from .refine import _bisect_towards_input

# Relative defaults (fractions of the first linearised distance d0 of each sample), used where
# radius / radius_min / radius_max are None; see ``trust_region``.
_RADIUS_FRACTION = 0.03
# eps^0 / eta at the default eta = 1.2: one shrink below the start (``trust_region``'s defaults)
_RADIUS_MIN_FRACTION = 0.025
_RADIUS_MAX_FRACTION = 1.0
_FALLBACK_RADIUS = 1e-2  # where d0 is undefined (zero gradient)
# 'best' mode: below this rho (folded to min(rho, 1/rho)) the last step's linear model was off
# by more than a factor 2, so the gradient norms have changed and are evaluated afresh
_ACCURATE = 0.5


@dataclass(frozen=True, eq=False)
class TrustRegionSettings:
    """Everything the iterations of ``trust_region`` depend on besides the model and the batch,
    checked by ``trust_region`` before it is built (see its docstring for each meaning).

    Args:
        mode: 'best' (the nearest class, re-chosen each iteration), 'hardest' (the farthest at
            the start, then fixed) or 'fixed' (``targets``).
        targets: (N,) classes for 'fixed' mode, else None.
        classes: (N, candidates + 1) the label then the candidate classes by clean logit.
        p: the norm, 2 or inf.
        order: 1 (linear model) or 2 (quadratic model, L2).
        adaptive: follow Algorithm 1's radius rule; False keeps the radius fixed.
        radius, radius_min, radius_max: absolute radii, or None for the fractions of d0.
        sigma1, sigma2, eta: Algorithm 1's thresholds and growth factor.
        two_sided: rho >> 1 also counts as a poor approximation (``update_radius``).
        overshoot: extension of a boundary-reaching step (``_overshoot``).
        steps: the most iterations per sample.
        cg_steps: Krylov vectors (CG iterations) per second-order step.
        solver: 'lanczos' or 'steihaug'.
        stop_at_boundary: stop each step at the model's zero (False: Algorithm 1 as printed).
        refresh: in 'best' mode, the candidates' gradients are evaluated at most every
            ``refresh`` iterations per sample; in between the class is re-chosen with the last
            gradient norms.
        ambiguity: in 'best' mode, a sample due for fresh gradients gets them only while its
            second-nearest class (by the last norms) is within ``ambiguity`` times the nearest
            one's distance (inf: always), or while its last step was inaccurate (folded rho
            below 0.5); then only for the classes in doubt (within ``ambiguity`` times the
            nearest distance), or for every candidate after an inaccurate step or with
            ``ambiguity`` = inf.
        final_search: bisection steps on the step that first reached an adversarial iterate.
    """

    mode: str
    targets: Tensor | None
    classes: Tensor
    p: float
    order: int = 1
    adaptive: bool = True
    radius: EpsLike | None = None
    radius_min: EpsLike | None = None
    radius_max: EpsLike | None = None
    sigma1: float = 0.99
    sigma2: float = 0.97
    eta: float = 1.2
    two_sided: bool = True
    overshoot: float = 0.02
    steps: int = 100
    cg_steps: int = 5
    solver: str = "lanczos"
    stop_at_boundary: bool = True
    refresh: int = 3
    ambiguity: float = INF
    final_search: int = 7


def fold_rho(rho: Tensor) -> Tensor:
    """min(rho, 1/rho): how far the actual change of the margin was from its linear model's
    prediction, on either side of 1 (1: exact; NaN stays NaN)."""
    return torch.where(rho > 1, 1 / rho, rho)


def update_radius(
    radius: Tensor,
    rho: Tensor,
    *,
    sigma1: float = 0.9,
    sigma2: float = 0.5,
    eta: float = 1.2,
    radius_min: float | Tensor = 0.0,
    radius_max: float | Tensor = INF,
    two_sided: bool = False,
) -> Tensor:
    """The radius update of Algorithm 1 (Yao et al. 2019, Sec. 3), per sample, as a pure function.

    rho > sigma1 (the local model was accurate): radius <- min(eta * radius, radius_max);
    rho < sigma2 (poor model): radius <- max(radius / eta, radius_min); otherwise unchanged.
    Algorithm 1 prints min{eps/eta, eps_min} for the shrink, a typo for max (the text says the
    radius is bounded below by eps_min). A NaN rho (no predicted change) keeps the radius.
    ``two_sided``: the text's reading of the test, "the approximation of the function is
    accurate", applied to both sides of 1: rho is replaced by min(rho, 1/rho), so a margin that
    fell much faster than its model predicted (rho >> 1, the boundary nearer than the model
    says) also counts as a poor approximation and shrinks the radius.

    Args:
        radius: (N,) current radii (not modified).
        rho: (N,) ratio of the actual to the predicted change of the margin.
        sigma1: above it the radius grows.
        sigma2: below it the radius shrinks.
        eta: growth / shrink factor (> 1).
        radius_min: lower bound, a number or (N,).
        radius_max: upper bound, a number or (N,).
        two_sided: fold rho to min(rho, 1/rho) first (False: Algorithm 1 as printed).

    Returns:
        (N,) the new radii, a new tensor.
    """
    if two_sided:
        rho = fold_rho(rho)
    grow = torch.minimum(radius * eta, torch.as_tensor(radius_max, dtype=radius.dtype))
    shrink = torch.maximum(radius / eta, torch.as_tensor(radius_min, dtype=radius.dtype))
    return torch.where(rho > sigma1, grow, torch.where(rho < sigma2, shrink, radius))


def _free(g: Tensor, x: Tensor) -> Tensor:
    """Zero the coordinates of the descent direction -g that would push a pixel of x already on
    the box boundary outside [0, 1] (as DeepFool does here): the step then moves the pixels that
    can still move instead of being clipped away (saturated MNIST pixels)."""
    return g.masked_fill(((x <= 0) & (g > 0)) | ((x >= 1) & (g < 0)), 0.0)


def _dual_norm(g: Tensor, p: float) -> Tensor:
    return lp_norm(g, 1.0 if p == INF else 2.0)


def _linear_step(f: Tensor | None, g: Tensor, radius: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """The minimiser of the first-order model f + <g, s> over ||s||_p <= radius, stopped at the
    linearised boundary f + <g, s> = 0: s = -min(f / ||g||_q, radius) d_p(g) with
    d_p(g) = g/||g||_2 or sign(g); ``f`` None: not stopped, s = -radius d_p(g). Returns
    (s, crosses): crosses where the boundary is reached."""
    gn = _dual_norm(g, p)
    dist = torch.full_like(gn, INF)
    if f is not None:
        dist = torch.where(gn > 0, f.clamp_min(0) / gn.clamp_min(1e-30), dist)
    size = torch.minimum(dist, radius)
    if p == INF:
        direction = g.sign()
    else:
        direction = g / view_like(gn.clamp_min(1e-30), g)
    return -view_like(size, g) * direction, dist <= radius


def _pair_gradient(
    model: nn.Module, x: Tensor, push_down: Tensor | None, push_up: Tensor, create_graph: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One forward and one backward: logits, the class t pushed down, f = z_t - z_i and its input
    gradient (with its graph when ``create_graph``, for Hessian-vector products), and the input
    leaf. ``push_down=None`` takes t = the strongest class other than i (targeted attacks)."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xg)
        if push_down is None:
            push_down = logits.detach().scatter(1, push_up[:, None], -INF).argmax(1)
        f = (logits.gather(1, push_down[:, None]) - logits.gather(1, push_up[:, None])).squeeze(1)
        (g,) = torch.autograd.grad(f.sum(), xg, create_graph=create_graph)
    return logits.detach(), push_down, f.detach(), g, xg


def _distances(f: Tensor, norms: Tensor, classes: Tensor) -> Tensor:
    """Linearised distances |z_t - z_j| / ||grad(z_t - z_j)||_q of the candidates (columns 1..
    of ``classes``), inf where the gradient is zero or a column repeats the label (fewer classes
    than columns)."""
    return distance_over_norm(f, norms).masked_fill(classes[:, 1:] == classes[:, :1], INF)


def _best_class(
    logits: Tensor, grads: Tensor, classes: Tensor, x: Tensor, p: float, largest: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Among the candidates (columns 1.. of ``classes``, the label in column 0), the class with the
    smallest (``largest``: largest) linearised distance (z_t - z_j) / ||grad(z_t - z_j)||_q.
    Returns (column, f, masked gradient) for that class and the (N, C - 1) gradient norms."""
    z = logits.gather(1, classes)
    f = z[:, :1] - z[:, 1:]
    w = grads[:, :1] - grads[:, 1:]
    w = _free(w, x.unsqueeze(1))
    gn = _dual_norm(w.reshape(-1, *w.shape[2:]), p).reshape(f.shape)
    dist = _distances(f, gn, classes)
    if largest:
        column = dist.masked_fill(~torch.isfinite(dist), -1.0).argmax(1)
    else:
        column = dist.argmin(1)
    rows = torch.arange(f.shape[0], device=f.device)
    return column + 1, f[rows, column], w[rows, column], gn


def _nearest_class(
    model: nn.Module,
    xg: Tensor,
    logits: Tensor,
    keep: Tensor,
    classes: Tensor,
    norms: Tensor,
    due: Tensor,
    inaccurate: Tensor,
    settings: TrustRegionSettings,
    p: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The 'best' class after the first iteration, per sample: the smallest linearised distance
    from the current logits (the forward pass ``logits`` on ``xg``, rows ``keep``) and the last
    gradient norms ``norms``; then one backward pass for f = z_t - z_i of that class. Rows that
    are ``due`` (``settings.refresh``) and in doubt re-evaluate candidates' gradients at the
    current iterate instead (``_best_class``) and get fresh norms: where their choice is
    ambiguous (the second-nearest distance below ``settings.ambiguity`` times the nearest), the
    classes within that factor of the nearest (``_doubtful``: a class beyond it would need its
    norm off by more than the factor to win, the risk the ambiguity test already takes for the
    rows it skips); where the last step's linear model was ``inaccurate`` (folded rho <
    ``_ACCURATE``: the gradients, and so the norms, have changed), every candidate. Returns
    (column, f, masked g, refreshed rows); the fresh norms are written into ``norms`` in
    place."""
    x = xg.detach()[keep]
    with torch.enable_grad():
        z = logits[keep].gather(1, classes)
        margins = z[:, :1] - z[:, 1:]
        dist = _distances(margins.detach(), norms, classes)
        column = dist.argmin(1)
        fresh = due & (inaccurate | _ambiguous(dist, settings.ambiguity))
        rows = torch.arange(z.shape[0], device=z.device)
        f = margins[rows, column]
        g = torch.zeros_like(x)
        if not bool(fresh.all()):
            (grad,) = torch.autograd.grad(f[~fresh].sum(), xg)
            g[~fresh] = grad[keep][~fresh]
    f = f.detach().clone()
    if bool(fresh.any()):
        cols = _doubtful(dist[fresh], settings.ambiguity, inaccurate[fresh])
        sub = _subset(classes[fresh], cols)
        fresh_logits, grads = class_gradients(model, x[fresh], sub)
        col, f[fresh], g[fresh], gn = _best_class(fresh_logits, grads, sub, x[fresh], p)
        column[fresh] = cols.gather(1, col[:, None] - 1).squeeze(1)
        norms[fresh] = _scatter_columns(norms[fresh], cols, gn)
    return column + 1, f, _free(g, x), fresh


def _doubtful(dist: Tensor, ambiguity: float, everything: Tensor) -> Tensor:
    """(N, m) candidate columns (0-based, nearest first) whose gradients a refresh evaluates:
    those within ``ambiguity`` times the nearest distance ``dist`` (the classes in doubt);
    every column in the rows of ``everything`` and for ``ambiguity`` = inf. -1 pads the rows
    with fewer than m columns."""
    order = dist.argsort(1)
    if ambiguity == INF or bool(everything.all()):
        return order
    nearest = dist.gather(1, order[:, :1])
    keep = ((dist <= ambiguity * nearest) | everything[:, None]).gather(1, order)
    m = int(keep.sum(1).max())  # sorted by distance: the kept columns come first
    return order[:, :m].masked_fill(~keep[:, :m], -1)


def _subset(classes: Tensor, cols: Tensor) -> Tensor:
    """(N, 1 + m): the label column of ``classes``, then its candidate columns ``cols``; a pad
    (-1) repeats the label, which ``_distances`` gives an infinite distance."""
    picked = classes[:, 1:].gather(1, cols.clamp_min(0))
    picked = torch.where(cols >= 0, picked, classes[:, :1])
    return torch.cat([classes[:, :1], picked], dim=1)


def _scatter_columns(norms: Tensor, cols: Tensor, values: Tensor) -> Tensor:
    """``norms`` (N, C - 1) with ``values`` (N, m) written into the columns ``cols`` (pads
    dropped), as a new tensor."""
    wide = torch.cat([norms, torch.zeros_like(norms[:, :1])], dim=1)
    wide.scatter_(1, torch.where(cols >= 0, cols, norms.shape[1]), values)
    return wide[:, :-1]


def _ambiguous(dist: Tensor, ambiguity: float) -> Tensor:
    """Rows whose second-smallest distance is below ``ambiguity`` times the smallest (always,
    for ``ambiguity`` = inf; never with a single candidate)."""
    if dist.shape[1] < 2:
        return torch.zeros(dist.shape[0], dtype=torch.bool, device=dist.device)
    if ambiguity == INF:
        return torch.ones(dist.shape[0], dtype=torch.bool, device=dist.device)
    nearest, second = dist.topk(2, dim=1, largest=False).values.unbind(1)
    return second < ambiguity * nearest


def _quadratic_step(
    f: Tensor | None, g: Tensor, xg: Tensor, radius: Tensor, krylov_steps: int, solver: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Second-order L2 step for m(s) = <g, s> + 1/2 <s, H s> in the ball (eq. (3)), on the
    pixels free to move. ``'lanczos'``: GLTR's subproblem solution, or where the model reaches
    its zero f + m(s) = 0 inside the ball the smallest step that does (``gltr``).
    ``'steihaug'``: the Steihaug-CG minimiser, shortened along itself to the first zero of the
    model. ``f`` None: no stop at the model's zero. Returns (step, crosses, curvature_seen)."""
    x = xg.detach()
    gd = g.detach()
    mask = ((_free(gd, x) != 0) | (gd == 0)).to(gd.dtype)
    gm = gd * mask

    def hvp(v):
        return _hvp(g, xg, v, mask)

    if solver == "lanczos":
        return gltr(gm, hvp, radius, steps=krylov_steps, level=f)
    s, curved = steihaug_cg(gm, hvp, radius, max_iter=krylov_steps)
    if f is None:
        return s, torch.zeros_like(curved), curved
    a = 0.5 * (flat(s) * flat(hvp(s))).sum(1)  # f + b tau + a tau^2
    b = (flat(gm) * flat(s)).sum(1)
    c = f.clamp_min(0)
    # smallest tau >= 0 with a tau^2 + b tau + c = 0, in the cancellation-free form
    # 2c / (-b + sqrt(b^2 - 4ac)) (also right for a <= 0, and -c/b for a = 0)
    disc = b * b - 4 * a * c
    denom = -b + disc.clamp_min(0).sqrt()
    ok = (disc >= 0) & (denom > 0)
    tau = torch.where(ok, 2 * c / denom.where(ok, torch.ones_like(denom)), torch.full_like(c, INF))
    crosses = (tau >= 0) & (tau <= 1)
    tau = torch.where(crosses, tau, torch.ones_like(tau))
    return s * view_like(tau, s), crosses, curved


def _initial_radii(
    d0: Tensor,
    radius: EpsLike | None,
    radius_min: EpsLike | None,
    radius_max: EpsLike | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample initial radius and bounds: the given values, or fractions of d0."""
    ok = torch.isfinite(d0) & (d0 > 0)
    base = torch.where(ok, d0, torch.full_like(d0, _FALLBACK_RADIUS / _RADIUS_FRACTION))

    def pick(value: EpsLike | None, fraction: float, name: str) -> Tensor:
        if value is None:
            return base * fraction
        return per_sample(value, d0, name=name)

    r0 = pick(radius, _RADIUS_FRACTION, "radius")
    rmin = pick(radius_min, _RADIUS_MIN_FRACTION, "radius_min")
    rmax = pick(radius_max, _RADIUS_MAX_FRACTION, "radius_max")
    if radius_max is None and radius is not None:
        rmax = torch.maximum(rmax, r0)
    if radius_min is None and radius is not None:
        rmin = torch.minimum(rmin, r0)
    return r0, rmin, rmax


def run_iterations(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    settings: TrustRegionSettings,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The trust-region iterations of Algorithm 1 (Yao et al. 2019, Sec. 3), batched; each
    sample stops at its first adversarial iterate.

    Args:
        model: the classifier, already in attack mode.
        inputs: (N, ...) clean inputs in [0, 1].
        labels: (N,) true labels.
        settings: the attack's hyperparameters and target plan (``TrustRegionSettings``).
        callback: ``callback(j, iterates, succeeded)`` after the check of iterate j.

    Returns:
        (first adversarial iterate or the input, its norm or inf, the fixed attacked class per
        sample, or None in 'best' mode).
    """
    s = settings
    mode, p, order, steps = s.mode, s.p, s.order, s.steps
    classes = s.classes
    rule = {"sigma1": s.sigma1, "sigma2": s.sigma2, "eta": s.eta, "two_sided": s.two_sided}
    n = inputs.shape[0]
    device, dtype = inputs.device, inputs.dtype
    x = inputs.clone()
    best_adv = inputs.clone()
    best_norm = torch.full((n,), INF, device=device, dtype=dtype)
    active = torch.ones(n, dtype=torch.bool, device=device)
    radius = torch.zeros(n, device=device, dtype=dtype)
    rmin, rmax = torch.zeros_like(radius), torch.full_like(radius, INF)
    fixed = s.targets  # attacked class i for 'fixed' and 'hardest' modes
    down = labels.clone()  # class t pushed down at the last step
    up = torch.zeros_like(labels)  # class i pushed up at the last step
    f_prev = torch.zeros_like(radius)
    predicted = torch.zeros_like(radius)
    norms = torch.zeros(n, classes.shape[1] - 1, device=device, dtype=dtype)  # 'best' mode
    refreshed = torch.zeros(n, dtype=torch.long, device=device)  # iteration of the last norms
    inaccurate = torch.zeros(n, dtype=torch.bool, device=device)  # last rho < _ACCURATE
    previous = inputs.clone()  # the iterate before the last step
    for it in range(steps + 1):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xi = x[idx]
        need_graph = order == 2
        full = mode in ("best", "hardest") and it == 0
        if full:
            logits, grads = class_gradients(model, xi, classes[idx])
        elif mode == "best":
            xg, logits = forward_with_graph(model, xi)
            logits_graph, logits = logits, logits.detach()
        else:
            logits, t, f, g, xg = _pair_gradient(
                model, xi, None if mode == "fixed" else labels[idx], fixed[idx], need_graph
            )
        done = reaches(logits, labels[idx], s.targets[idx] if mode == "fixed" else None)
        update_best(best_adv, best_norm, x, lp_norm(x - inputs, p), _scatter(done, idx, n))
        if it > 0:  # Algorithm 1: rho = actual / predicted change of z_t - z_i
            f_new = logits.gather(1, down[idx, None]) - logits.gather(1, up[idx, None])
            rho = (f_new.squeeze(1) - f_prev[idx]) / predicted[idx]
            inaccurate[idx] = ~(fold_rho(rho) >= _ACCURATE)
            if s.adaptive:
                radius[idx] = update_radius(
                    radius[idx], rho, **rule, radius_min=rmin[idx], radius_max=rmax[idx]
                )
        active[idx[done]] = False
        if callback is not None:
            callback(it, x, ~active)
        keep = ~done
        if it == steps or not keep.any():
            break
        idx, xi, logits = idx[keep], xi[keep], logits[keep]
        if full:
            grads = grads[keep]
            column, f, g, gn = _best_class(logits, grads, classes[idx], xi, p, mode == "hardest")
            if mode == "best":
                norms[idx], refreshed[idx] = gn, 0
        elif mode == "best":
            stale = norms[idx]
            due = it - refreshed[idx] >= s.refresh
            column, f, g, fresh = _nearest_class(
                model, xg, logits_graph, keep, classes[idx], stale, due, inaccurate[idx], s, p
            )
            norms[idx] = stale
            refreshed[idx[fresh]] = it
        if mode == "best" or (mode == "hardest" and it == 0):
            i_cls = classes[idx].gather(1, column[:, None]).squeeze(1)
            if mode == "hardest":
                fixed = torch.zeros_like(labels) if fixed is None else fixed
                fixed[idx] = i_cls
            t = labels[idx]
            if need_graph:
                _, t, f, g, xg = _pair_gradient(model, xi, t, i_cls, True)
        else:
            i_cls = fixed[idx]
            if need_graph and not keep.all():  # the graph spans the rows that were active
                _, t, f, g, xg = _pair_gradient(model, xi, t[keep], i_cls, True)
            else:
                t, f, g = t[keep], f[keep], g[keep]
        if it == 0:
            gd = _free(g.detach(), xi)
            d0 = f.clamp_min(0) / _dual_norm(gd, p)
            r0, lo, hi = _initial_radii(d0, s.radius, s.radius_min, s.radius_max)
            radius[idx], rmin[idx], rmax[idx] = r0, lo, hi
        level = f if s.stop_at_boundary else None  # None: the model's minimiser in the ball
        step, crosses = _linear_step(level, _free(g.detach(), xi), radius[idx], p)
        if order == 2:
            step2, crosses2, curved = _quadratic_step(
                level, g, xg, radius[idx], s.cg_steps, s.solver
            )
            step = torch.where(view_like(curved, step), step2, step)
            crosses = torch.where(curved, crosses2, crosses)
        x_new = clip_box(_overshoot(xi, step, inputs[idx], crosses, s.overshoot, p))
        taken = x_new - xi
        pred = (flat(g.detach()) * flat(taken)).sum(1)
        if order == 2 and bool(curved.any()):
            hs = _hvp(g, xg, taken, torch.ones_like(taken))
            pred = pred + torch.where(curved, 0.5 * (flat(taken) * flat(hs)).sum(1), 0.0)
        previous[idx] = xi
        x[idx] = x_new
        down[idx], up[idx], f_prev[idx], predicted[idx] = t, i_cls, f, pred
    if s.final_search > 0:
        _search_last_step(model, inputs, labels, previous, best_adv, best_norm, settings)
    return best_adv, best_norm, fixed


def _search_last_step(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    previous: Tensor,
    adv: Tensor,
    norms: Tensor,
    settings: TrustRegionSettings,
) -> None:
    """The step that first reaches an adversarial iterate x^{j+1} ends beyond the decision
    boundary wherever the margin fell faster than its linear model predicted (rho > 1), and by
    the overshoot; the boundary lies on the segment from x^j (not adversarial) to x^{j+1}.
    ``settings.final_search`` bisection steps on that segment (forward passes only) take the
    adversarial point nearest x^j, in place on ``adv`` and ``norms``; rows that never moved or
    found nothing are left alone."""
    rows = (torch.isfinite(norms) & (norms > 0)).nonzero().squeeze(1)
    if rows.numel() == 0:
        return
    attacked = settings.targets[rows] if settings.mode == "fixed" else None
    found = _bisect_towards_input(
        model, previous[rows], adv[rows], labels[rows], attacked, settings.final_search
    )
    adv[rows] = found
    norms[rows] = lp_norm(found - inputs[rows], settings.p)


def _overshoot(x: Tensor, step: Tensor, x0: Tensor, crosses: Tensor, overshoot: float, p: float):
    """x + s, extended where the step reaches the model's boundary by ``overshoot`` times the
    norm of the whole new perturbation, along s: x + s + overshoot ||x + s - x0||_p s/||s||_p.

    Sized by the whole perturbation, the extension never shrinks with the step, so the attack
    does not stall on the boundary (a per-step factor would); laid along the step rather than
    along the perturbation, it does not compound: overshooting the whole perturbation,
    x0 + (1 + overshoot)(x + s - x0), grew it by 2% per step at junctions of several classes,
    where each step crosses one pairwise boundary while another class takes over. The two
    agree when s is parallel to the perturbation (a linear model)."""
    target = x + step
    length = lp_norm(target - x0, p) * overshoot / lp_norm(step, p).clamp_min(1e-30)
    return torch.where(view_like(crosses, x), target + view_like(length, step) * step, target)


def _scatter(values: Tensor, idx: Tensor, n: int) -> Tensor:
    out = torch.zeros(n, dtype=torch.bool, device=values.device)
    out[idx] = values
    return out
