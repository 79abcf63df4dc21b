"""Trust-region attack (Yao, Gholami, Xu, Keutzer & Mahoney, "Trust Region Based Adversarial
Attack on Neural Networks", CVPR 2019): first order (L2, Linf) and second order (L2, the
trust-region subproblem solved by Lanczos / GLTR or Steihaug-Toint truncated conjugate gradients
on Hessian-vector products).

Notation follows the paper: z are the logits, t the class to push down (the true class while the
sample is still correctly classified), i the attacked class, f(x) = z_t(x) - z_i(x) the margin
that must become negative, m^j the local model of eq. (3) and rho the ratio of Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._core import (
    INF,
    EpsLike,
    NormLike,
    attack_mode,
    check_int,
    check_labels,
    check_positive,
    clip_box,
    contract,
    flat,
    lp_norm,
    parse_norm,
    per_sample,
    reaches,
    update_best,
    validate,
    view_like,
)
from .deepfool import candidate_classes, class_gradients

TARGET_MODES = ("best", "hardest")
SOLVERS = ("lanczos", "steihaug")  # second-order subproblem solvers

# Relative defaults (fractions of the first linearised distance d0 of each sample), used where
# radius / radius_min / radius_max are None; see ``trust_region``.
_RADIUS_FRACTION = 0.25
_RADIUS_MIN_FRACTION = 0.01
_RADIUS_MAX_FRACTION = 1.0
_FALLBACK_RADIUS = 1e-2  # where d0 is undefined (zero gradient)
_BISECTION_STEPS = 10  # after the refinement: the boundary to 0.1% of the perturbation


# --------------------------------------------------------------------------- radius update


def update_radius(
    radius: Tensor,
    rho: Tensor,
    *,
    sigma1: float = 0.9,
    sigma2: float = 0.5,
    eta: float = 1.2,
    radius_min: float | Tensor = 0.0,
    radius_max: float | Tensor = INF,
) -> Tensor:
    """The radius update of Algorithm 1 (Yao et al. 2019, Sec. 3), per sample, as a pure function.

    rho > sigma1 (the local model was accurate): radius <- min(eta * radius, radius_max);
    rho < sigma2 (poor model): radius <- max(radius / eta, radius_min); otherwise unchanged.
    Algorithm 1 prints min{eps/eta, eps_min} for the shrink, a typo for max (the text says the
    radius is bounded below by eps_min). A NaN rho (no predicted change) keeps the radius.
    Returns a new tensor; ``radius`` is not modified.
    """
    grow = torch.minimum(radius * eta, torch.as_tensor(radius_max, dtype=radius.dtype))
    shrink = torch.maximum(radius / eta, torch.as_tensor(radius_min, dtype=radius.dtype))
    return torch.where(rho > sigma1, grow, torch.where(rho < sigma2, shrink, radius))


# --------------------------------------------------------------------------- local pieces


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


def _best_class(
    logits: Tensor, grads: Tensor, classes: Tensor, x: Tensor, p: float, largest: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Among the candidates (columns 1.. of ``classes``, the label in column 0), the class with the
    smallest (``largest``: largest) linearised distance (z_t - z_j) / ||grad(z_t - z_j)||_q.
    Returns (column, f, masked gradient) for that class."""
    z = logits.gather(1, classes)
    f = z[:, :1] - z[:, 1:]
    w = grads[:, :1] - grads[:, 1:]
    w = _free(w, x.unsqueeze(1))
    gn = _dual_norm(w.reshape(-1, *w.shape[2:]), p).reshape(f.shape)
    dist = torch.where(gn > 0, f.abs() / gn.clamp_min(1e-30), torch.full_like(f, INF))
    dist = dist.masked_fill(classes[:, 1:] == classes[:, :1], INF)  # fewer classes than columns
    if largest:
        column = dist.masked_fill(~torch.isfinite(dist), -1.0).argmax(1)
    else:
        column = dist.argmin(1)
    rows = torch.arange(f.shape[0], device=f.device)
    return column + 1, f[rows, column], w[rows, column]


# --------------------------------------------------------------------------- second order


def _hvp(g: Tensor, xg: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Masked Hessian-vector product M H M v of f at x (double backward through the retained
    graph of g = grad f); samples are independent so one backward serves the whole batch."""
    if g.grad_fn is None:  # the gradient does not depend on x: the Hessian is zero
        return torch.zeros_like(v)
    with torch.enable_grad():
        (hv,) = torch.autograd.grad(
            (g * (v * mask)).sum(), xg, retain_graph=True, allow_unused=True
        )
    return torch.zeros_like(v) if hv is None else hv.detach() * mask


def _to_boundary(s: Tensor, d: Tensor, radius: Tensor) -> Tensor:
    """tau >= 0 with ||s + tau d||_2 = radius (per sample; ||s|| <= radius)."""
    sd, dd, ss = (flat(s) * flat(d)).sum(1), flat(d).pow(2).sum(1), flat(s).pow(2).sum(1)
    disc = (sd * sd + dd * (radius**2 - ss)).clamp_min(0)
    return torch.where(dd > 0, (-sd + disc.sqrt()) / dd.clamp_min(1e-30), torch.zeros_like(dd))


def steihaug_cg(
    g: Tensor, hvp, radius: Tensor, max_iter: int = 20, tol: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Steihaug-Toint truncated conjugate gradients (Steihaug 1983, the paper's [25]) for the
    trust-region subproblem min_s <g, s> + 1/2 <s, H s> s.t. ||s||_2 <= radius, batched over
    samples (each row stops on its own). ``hvp(v)`` returns H v for a batch v. Stops at negative
    curvature or at the boundary (moving to the boundary), or when the residual falls below
    ``tol * ||g||``. Returns (s, curvature_seen) with curvature_seen True where some H d != 0."""
    s = torch.zeros_like(g)
    r = g.clone()
    d = -r
    rr = flat(r).pow(2).sum(1)
    g_norm = rr.sqrt()
    active = g_norm > 0
    curved = torch.zeros_like(active)
    for _ in range(max_iter):
        if not active.any():
            break
        hd = hvp(d)
        dhd = (flat(d) * flat(hd)).sum(1)
        curved |= active & (flat(hd).abs().amax(1) > 0)
        alpha = rr / dhd.where(dhd > 0, torch.ones_like(dhd))
        s_next = s + view_like(alpha, s) * d
        outside = (dhd <= 0) | (lp_norm(s_next, 2) >= radius)
        tau = _to_boundary(s, d, radius)
        stop = active & outside
        s = torch.where(view_like(stop, s), s + view_like(tau, s) * d, s)
        move = active & ~outside
        s = torch.where(view_like(move, s), s_next, s)
        r_next = r + view_like(alpha, r) * hd
        rr_next = flat(r_next).pow(2).sum(1)
        converged = move & (rr_next.sqrt() <= tol * g_norm)
        beta = rr_next / rr.clamp_min(1e-30)
        d = torch.where(view_like(move, d), -r_next + view_like(beta, d) * d, d)
        r = torch.where(view_like(move, r), r_next, r)
        rr = torch.where(move, rr_next, rr)
        active = active & ~stop & ~converged
    return s, curved


def lanczos(g: Tensor, hvp, steps: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batched Lanczos tridiagonalisation of H on the Krylov space K(H, g) (Golub & Van Loan,
    Alg. 10.1.1, with full reorthogonalisation; the basis of GLTR, Gould, Lucidi, Roma & Toint
    1999). Returns (Q, T, gamma, curved): Q (N, k, D) orthonormal rows, T (N, k, k) = Q H Q^T
    tridiagonal in float64, gamma = ||g||, and curved True where some H q != 0. A sample whose
    Krylov space closes after m < k vectors (beta_m = 0) has its remaining vectors zero and the
    rest of T padded with a decoupled positive diagonal, which carries no part of g."""
    n, k = g.shape[0], steps
    gf = flat(g)
    gamma = gf.norm(dim=1)
    basis = torch.zeros(n, k, gf.shape[1], dtype=gf.dtype, device=gf.device)
    alpha = torch.zeros(n, k, dtype=torch.float64, device=gf.device)
    beta = torch.zeros(n, k, dtype=torch.float64, device=gf.device)
    open_ = gamma > 0
    q = gf / gamma.clamp_min(1e-30)[:, None] * open_[:, None]
    curved = torch.zeros_like(open_)
    for j in range(k):
        if not open_.any():
            break
        basis[:, j] = q
        hq = flat(hvp(q.view_as(g)))
        curved |= open_ & (hq.abs().amax(1) > 0)
        alpha[:, j] = (hq * q).sum(1).double()
        w, done = hq, basis[:, : j + 1]
        for _ in range(2):  # full reorthogonalisation against every vector so far
            w = w - torch.einsum("nk,nkd->nd", torch.einsum("nkd,nd->nk", done, w), done)
        b = w.norm(dim=1)
        open_ = open_ & (b > 1e-6 * hq.norm(dim=1))
        beta[:, j] = torch.where(open_, b, torch.zeros_like(b)).double()
        q = w / b.clamp_min(1e-30)[:, None] * open_[:, None]
    used = basis.abs().amax(2) > 0  # the vectors each sample really has
    pad = alpha.abs().amax(1, keepdim=True) + 1.0
    alpha = torch.where(used, alpha, pad)
    off = beta[:, :-1] * used[:, 1:]
    tri = torch.diag_embed(alpha) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    return basis, tri, gamma, curved


def _path(mu: Tensor, c: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """On the trust-region path h(lam) = -(T + lam I)^{-1} gamma e1 (T = V diag(mu) V^T,
    c = gamma V^T e1): ||h(lam)||^2 and the model value <gamma e1, h> + 1/2 <h, T h>."""
    inv = 1.0 / (mu + lam[:, None])
    norm2 = (c * c * inv * inv).sum(1)
    value = (-c * c * inv + 0.5 * c * c * mu * inv * inv).sum(1)
    return norm2, value


def _bisect(lo: Tensor, hi: Tensor, below, iters: int = 80) -> Tensor:
    """Per sample, the boundary between lo (where ``below`` holds) and hi (where it does not)
    of a monotone predicate, by bisection in float64."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        ok = below(mid)
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return lo


def gltr(
    g: Tensor, hvp, radius: Tensor, steps: int = 10, level: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The trust-region subproblem min_s m(s) = <g, s> + 1/2 <s, H s> s.t. ||s||_2 <= radius,
    solved in the Krylov space K_k(H, g) by Lanczos (GLTR: Gould, Lucidi, Roma & Toint, SIAM J.
    Optim. 1999; the Lanczos method the paper, Sec. 3, names for its QCQP), batched. The small
    tridiagonal problem is solved exactly (More & Sorensen 1983): its eigendecomposition gives
    ||h(lam)|| and m(h(lam)) on the path h(lam) = -(T + lam I)^{-1} ||g|| e1 in closed form, and
    the multiplier lam >= max(0, -mu_min) with ||h|| = radius is found by bisection (the
    interior Newton point when T is positive definite and it lies inside). Steihaug-CG stops
    where its first direction, -g, leaves the ball (radius below the model's minimiser along
    -g, or negative curvature there) and then returns the steepest-descent step; GLTR bends the
    step with the curvature on the boundary.

    With ``level`` = f (N,), the margin at the current point: where the model predicts the zero
    of f + m within the ball, the step is the smallest one that reaches it, min ||s|| s.t.
    f + m(s) <= 0 (on the path, by bisection on lam: along it m falls as ||s|| grows), the
    second-order analogue of the first-order step stopped at the linearised boundary.
    Returns (s, crosses, curved); crosses is all False without ``level``. The hard case
    (g orthogonal to the lowest eigenvector of T) is not completed: s then stays inside."""
    basis, tri, gamma, curved = lanczos(g, hvp, steps)
    mu, vec = torch.linalg.eigh(tri)
    c = gamma.double()[:, None] * vec[:, 0, :]
    r = radius.double().expand_as(gamma).clone() if radius.dim() == 0 else radius.double()
    floor = (-mu[:, 0]).clamp_min(0)
    interior = (mu[:, 0] > 0) & (_path(mu, c, torch.zeros_like(r))[0] <= r * r)
    span = gamma.double() / r.clamp_min(1e-30) + 1.0
    eps = 1e-12 * (floor + span)
    lam = _bisect(floor + eps, floor + span, lambda m: _path(mu, c, m)[0] > r * r)
    lam = torch.where(interior, torch.zeros_like(lam), lam)
    crosses = torch.zeros_like(interior)
    if level is not None:
        f = level.double().clamp_min(0)
        crosses = f + _path(mu, c, lam)[1] <= 0
        far = lam + floor + gamma.double() ** 2 / f.clamp_min(1e-30) + 1.0
        nearest = _bisect(lam, far, lambda m: f + _path(mu, c, m)[1] <= 0)
        lam = torch.where(crosses, nearest, lam)
    h = -(vec * (c / (mu + lam[:, None]))[:, None, :]).sum(2)  # V diag(1/(mu+lam)) c
    s = torch.einsum("nk,nkd->nd", h.to(basis.dtype), basis).view_as(g)
    return s, crosses, curved


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


# --------------------------------------------------------------------------- refinement


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


# --------------------------------------------------------------------------- attack


def _resolve_target(
    target: str | Tensor, labels: Tensor, targeted: bool, num_classes: int
) -> tuple[str, Tensor | None]:
    if isinstance(target, str):
        if target not in TARGET_MODES:
            raise ValueError(f"target must be one of {TARGET_MODES} or a tensor, got {target!r}")
        if targeted:
            if target != "best":
                raise ValueError("target='hardest' is untargeted; with targeted=True leave target")
            return "fixed", labels
        return target, None
    if not isinstance(target, Tensor):
        raise TypeError(
            f"target must be 'best', 'hardest' or a tensor, got {type(target).__name__}"
        )
    if targeted:
        raise ValueError(
            "give the target classes either as labels with targeted=True or as target="
        )
    check_labels(target, labels.shape[0], num_classes, name="target")
    return "fixed", target.to(labels.device)


def _check_radius(value: EpsLike | None, name: str) -> None:
    if value is None or isinstance(value, Tensor):
        return
    check_positive(value, name, allow_zero=name == "radius_min")


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


def _run(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    mode: str,
    targets: Tensor | None,
    classes: Tensor,
    p: float,
    order: int,
    adaptive: bool,
    radii: tuple[EpsLike | None, EpsLike | None, EpsLike | None],
    rule: dict,
    overshoot: float,
    steps: int,
    cg_steps: int,
    solver: str,
    stop_at_boundary: bool,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The trust-region iterations of Algorithm 1; returns (first adversarial iterate or the
    input, its norm or inf, the fixed attacked class per sample or None in 'best' mode)."""
    n = inputs.shape[0]
    device, dtype = inputs.device, inputs.dtype
    x = inputs.clone()
    best_adv = inputs.clone()
    best_norm = torch.full((n,), INF, device=device, dtype=dtype)
    active = torch.ones(n, dtype=torch.bool, device=device)
    radius = torch.zeros(n, device=device, dtype=dtype)
    rmin, rmax = torch.zeros_like(radius), torch.full_like(radius, INF)
    fixed = targets  # attacked class i for 'fixed' and 'hardest' modes
    down = labels.clone()  # class t pushed down at the last step
    up = torch.zeros_like(labels)  # class i pushed up at the last step
    f_prev = torch.zeros_like(radius)
    predicted = torch.zeros_like(radius)
    for it in range(steps + 1):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xi = x[idx]
        need_graph = order == 2
        if mode == "best" or (mode == "hardest" and it == 0):
            logits, grads = class_gradients(model, xi, classes[idx])
        else:
            logits, t, f, g, xg = _pair_gradient(
                model, xi, None if mode == "fixed" else labels[idx], fixed[idx], need_graph
            )
        done = reaches(logits, labels[idx], targets[idx] if mode == "fixed" else None)
        update_best(best_adv, best_norm, x, lp_norm(x - inputs, p), _scatter(done, idx, n))
        if it > 0 and adaptive:  # Algorithm 1: rho = actual / predicted change of z_t - z_i
            f_new = logits.gather(1, down[idx, None]) - logits.gather(1, up[idx, None])
            rho = (f_new.squeeze(1) - f_prev[idx]) / predicted[idx]
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
        if mode == "best" or (mode == "hardest" and it == 0):
            grads = grads[keep]
            column, f, g = _best_class(logits, grads, classes[idx], xi, p, mode == "hardest")
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
            r0, lo, hi = _initial_radii(d0, *radii)
            radius[idx], rmin[idx], rmax[idx] = r0, lo, hi
        level = f if stop_at_boundary else None  # None: the model's minimiser in the ball
        step, crosses = _linear_step(level, _free(g.detach(), xi), radius[idx], p)
        if order == 2:
            step2, crosses2, curved = _quadratic_step(level, g, xg, radius[idx], cg_steps, solver)
            step = torch.where(view_like(curved, step), step2, step)
            crosses = torch.where(curved, crosses2, crosses)
        x_new = clip_box(_overshoot(xi, step, inputs[idx], crosses, overshoot, p))
        taken = x_new - xi
        pred = (flat(g.detach()) * flat(taken)).sum(1)
        if order == 2 and bool(curved.any()):
            hs = _hvp(g, xg, taken, torch.ones_like(taken))
            pred = pred + torch.where(curved, 0.5 * (flat(taken) * flat(hs)).sum(1), 0.0)
        x[idx] = x_new
        down[idx], up[idx], f_prev[idx], predicted[idx] = t, i_cls, f, pred
    return best_adv, best_norm, fixed


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


@contract
def trust_region(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    norm: NormLike = 2,
    adaptive: bool = True,
    radius: EpsLike | None = None,
    sigma1: float = 0.9,
    sigma2: float = 0.5,
    eta: float = 1.2,
    radius_min: EpsLike | None = None,
    radius_max: EpsLike | None = None,
    target: str | Tensor = "best",
    candidates: int = 9,
    steps: int = 100,
    order: int = 1,
    overshoot: float = 0.02,
    cg_steps: int = 5,
    solver: str = "lanczos",
    stop_at_boundary: bool = True,
    targeted: bool = False,
    refine_steps: int = 0,
    refine_shrink: float = 0.8,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
) -> Tensor:
    """Trust-region attack (Yao, Gholami, Xu, Keutzer & Mahoney, "Trust Region Based Adversarial
    Attack on Neural Networks", CVPR 2019), minimal-norm; first order for L2 and Linf, second
    order (``order=2``) for L2.

    Each iteration j minimises the local model of the margin f = z_t - z_i (t the true class, i
    the attacked class) within the trust region ||dx||_p <= eps^j, eq. (3) and Algorithm 1:
    first order m^j(dx) = <g, dx>, whose minimiser is -eps^j g/||g||_2 (L2) or -eps^j sign(g)
    (Linf); as in the authors' code the step stops at the linearised boundary f + m = 0 when
    that is nearer than the radius, and such a boundary-reaching step is extended along dx by
    ``overshoot`` times the norm of the whole new perturbation (``_overshoot``; a per-step factor
    stalls on the boundary, and overshooting the whole perturbation compounds at junctions of
    classes), so a linear model is crossed at 1 + overshoot times its optimum.
    ``stop_at_boundary=False`` takes the minimiser of the model over the trust region instead,
    Algorithm 1 as printed (no stop, no overshoot; the protocol of the paper's Table 5, where the
    radius is fixed and the accuracy after k iterations is measured).

    Second order adds 1/2 <dx, H dx> with H the Hessian of f (eq. (3)), through Hessian-vector
    products by double backward. ``solver='lanczos'`` (default) solves the subproblem in a
    Krylov space of dimension ``cg_steps`` by Lanczos, as the paper does (Sec. 3; GLTR,
    ``gltr``), and stops at the smallest step that reaches the quadratic model's zero when the
    model reaches it in the ball. ``'steihaug'`` uses Steihaug-Toint truncated CG (the paper's
    [25]), shortened along its step to the model's first zero: cheaper, but where its first
    direction, -g, leaves the ball it returns the steepest-descent direction, so only the step
    length uses the curvature (at radius 0.2 on our Swish models its Table 5 accuracies without
    the stop equal first order's at every k). Where
    H q = 0 for every Krylov vector (piecewise-linear ReLU networks, Sec. 3, [29, Thm. 1]) the
    first-order step is used, so ``order=2`` equals ``order=1`` there.

    Steps leaving [0, 1] are clipped, and pixels on the box boundary are left out of the step
    where it would push them outwards; the predicted change m^j is then re-measured on the step
    actually taken. The radius follows Algorithm 1 (``update_radius``): the ratio
    rho = [f(x^{j+1}) - f(x^j)] / m^j(dx^j) of the actual to the predicted change grows it by
    ``eta`` above ``sigma1`` and shrinks it below ``sigma2``, within [radius_min, radius_max];
    ``adaptive=False`` keeps it fixed ("TR Non-Adap"). Each sample stops when adversarial.

    rho choice: the paper's, actual over predicted change, with both changes of the same
    f = z_t - z_i at the old and the new point and m^j evaluated on the clipped step. The public
    code (github.com/amirgholami/TRAttack) divides the change by the radius instead of by the
    predicted change (so its thresholds depend on the logit scale and gradient norm, and 0.9/0.5
    mean nothing on another model) and mixes the new true logit with the old target logit; the
    paper's ratio is scale-free and is the standard trust-region test, so sigma1 = 0.9,
    sigma2 = 0.5 (the paper's typical values) carry over between models without tuning. It costs
    nothing extra: f(x^{j+1}) comes from the next iteration's forward pass.

    Targets: ``'best'`` (default) recomputes at every iteration, among the ``candidates``
    highest-logit classes other than the label, the class with the smallest linearised distance
    (z_t - z_j)/||grad(z_t - z_j)||_q (Algorithm 1's index selection, q the dual exponent);
    ``'hardest'`` the one with the largest distance at the start, kept fixed (untargeted
    success: any misclassification, as in the paper); a tensor of classes (or
    ``targeted=True`` with ``labels`` the targets): those classes, kept fixed, success when the
    target wins, and t is then the strongest other class at each iterate.

    Defaults, chosen to need no tuning across datasets (MNIST, CIFAR-10): the radius and its
    bounds, when None, are relative to each sample's first linearised (DeepFool) distance d0:
    eps^0 = d0/4, eps_min = d0/100, eps_max = d0 (floats or (N,) tensors are absolute radii in
    the norm's units). d0 fixes the scale of the problem per sample (MNIST L2 distances are ~10x
    CIFAR-10's), where the code's absolute 5e-4..0.05 bounds suit only its normalised CIFAR-10.
    eta = 1.2 as in the authors' code (the paper gives none); steps = 100 as in the code;
    candidates = 9 (the code's c = 9: every other class of a 10-class problem); overshoot =
    0.02 as in the code and DeepFool. ``cg_steps`` is the number of Lanczos vectors (CG
    iterations for Steihaug, an upper bound), i.e. Hessian-vector products, per second-order
    step (5: on both Swish models 3, 5 and 10 vectors gave the same Table 5 accuracies).

    Cost per iteration, on the still-active samples only: one forward pass and the backward
    passes needed (1 + ``candidates`` for ``'best'``, one for a fixed class); ``order=2`` adds a
    forward/backward with graph and ``cg_steps`` + 1 double-backward products (Steihaug: up to
    ``cg_steps`` + 2).

    ``callback(j, iterates, succeeded)``, if given, is called after the check of iterate j
    (j = 0 is the clean input) with the (N, ...) current iterates (a sample that succeeded keeps
    its adversarial one) and the (N,) mask of samples that succeeded so far; it must not modify
    them. Calls stop early once every sample succeeded. Used for accuracy after k iterations
    (the paper's Table 5) from a single run.

    ``refine_steps`` > 0 (not in the paper; default 0 runs Algorithm 1 as published) continues
    from each adversarial found with that many boundary-refinement steps (``_refine``: FAB's
    backward step by ``refine_shrink`` towards the input, then the projection onto the
    linearised boundary, Croce & Hein 2020), keeping the smallest adversarial iterate, then
    bisects the segment from the input to it (10 forward passes); one forward and one backward
    pass per refinement step. The first-success stop of Algorithm 1 leaves the
    example on the decision boundary but not at its nearest point; the refinement moves it along
    the boundary towards that point. With 'hardest' or a fixed target the refined iterates must
    be classified as the attacked class. ``callback`` sees the trust-region iterations only.

    Returns the adversarial examples (the lowest-norm iterate found: the first adversarial one,
    or the smallest refined one) and the original input where none was found within ``steps``.
    """
    p = parse_norm(norm, (2.0, INF))
    check_int(order, "order", 1)
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if order == 2 and p != 2:
        raise ValueError("order=2 (second-order trust region) supports norm=2 only")
    check_int(steps, "steps", 1)
    check_int(candidates, "candidates", 1)
    check_int(cg_steps, "cg_steps", 1)
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    check_positive(overshoot, "overshoot", allow_zero=True)
    check_int(refine_steps, "refine_steps", 0)
    number = isinstance(refine_shrink, (int, float)) and not isinstance(refine_shrink, bool)
    if not number or not 0.0 < refine_shrink < 1.0:
        raise ValueError(f"refine_shrink must be a number in (0, 1), got {refine_shrink!r}")
    check_positive(sigma1, "sigma1")
    check_positive(sigma2, "sigma2")
    if not sigma2 <= sigma1:
        raise ValueError(f"sigma2 must be <= sigma1, got sigma1={sigma1}, sigma2={sigma2}")
    check_positive(eta, "eta")
    if not eta > 1:
        raise ValueError(f"eta must be > 1, got {eta!r}")
    for value, name in ((radius, "radius"), (radius_min, "radius_min"), (radius_max, "radius_max")):
        _check_radius(value, name)
    for flag, name in ((adaptive, "adaptive"), (stop_at_boundary, "stop_at_boundary")):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    clean_logits = validate(model, inputs, labels)
    mode, targets = _resolve_target(target, labels, targeted, clean_logits.shape[1])
    classes = candidate_classes(clean_logits, labels, candidates + 1)
    rule = {"sigma1": sigma1, "sigma2": sigma2, "eta": eta}
    with attack_mode(model):
        adv, norms, attacked = _run(
            model,
            inputs.detach(),
            labels,
            mode,
            targets,
            classes,
            p,
            order,
            adaptive,
            (radius, radius_min, radius_max),
            rule,
            overshoot,
            steps,
            cg_steps,
            solver,
            stop_at_boundary,
            callback,
        )
        if refine_steps > 0:
            _refine(
                model,
                inputs.detach(),
                labels,
                attacked,
                adv,
                norms,
                p,
                refine_steps,
                refine_shrink,
                overshoot,
            )
    return adv.detach()


__all__ = ["gltr", "lanczos", "steihaug_cg", "trust_region", "update_radius"]
