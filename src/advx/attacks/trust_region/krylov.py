"""Krylov solvers of the trust-region subproblem min_s <g, s> + 1/2 <s, H s> s.t. ||s||_2 <= r,
batched over samples, on Hessian-vector products (the second-order step of Yao et al., CVPR
2019, eq. (3) and Sec. 3): Steihaug-Toint truncated conjugate gradients (``steihaug_cg``) and
Lanczos / GLTR (``lanczos``, ``gltr``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._core import flat, lp_norm, view_like

Hvp = Callable[[Tensor], Tensor]


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
    g: Tensor, hvp: Hvp, radius: Tensor, max_iter: int = 20, tol: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Steihaug-Toint truncated conjugate gradients (Steihaug 1983, the paper's [25]) for the
    trust-region subproblem min_s <g, s> + 1/2 <s, H s> s.t. ||s||_2 <= radius (Yao et al. 2019,
    eq. (3)), batched over samples (each row stops on its own). Stops at negative curvature or
    at the boundary (moving to the boundary), or when the residual falls below ``tol * ||g||``.

    Args:
        g: (N, ...) gradients of the model at the current points.
        hvp: H v for a batch v of g's shape (the Hessian-vector product).
        radius: trust-region radius, a scalar or (N,).
        max_iter: at most this many CG iterations (Hessian-vector products).
        tol: relative residual at which a row has converged.

    Returns:
        (s, curved): the step, shaped like g, and (N,) True where some H d != 0 was seen.
    """
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


def lanczos(g: Tensor, hvp: Hvp, steps: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batched Lanczos tridiagonalisation of H on the Krylov space K(H, g) (Golub & Van Loan,
    Alg. 10.1.1, with full reorthogonalisation; the basis of GLTR, Gould, Lucidi, Roma & Toint
    1999). A sample whose Krylov space closes after m < k vectors (beta_m = 0) has its remaining
    vectors zero and the rest of T padded with a decoupled positive diagonal, which carries no
    part of g.

    Args:
        g: (N, ...) gradients; the Krylov space of each row starts at its gradient.
        hvp: H v for a batch v of g's shape.
        steps: k, the number of Lanczos vectors (Hessian-vector products).

    Returns:
        (Q, T, gamma, curved): Q (N, k, D) orthonormal rows, T (N, k, k) = Q H Q^T tridiagonal in
        float64, gamma = ||g|| (N,), and curved (N,) True where some H q != 0.
    """
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
    g: Tensor, hvp: Hvp, radius: Tensor, steps: int = 10, level: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The trust-region subproblem min_s m(s) = <g, s> + 1/2 <s, H s> s.t. ||s||_2 <= radius
    (Yao et al. 2019, eq. (3)), solved in the Krylov space K_k(H, g) by Lanczos (GLTR: Gould,
    Lucidi, Roma & Toint, SIAM J. Optim. 1999; the Lanczos method the paper, Sec. 3, names for
    its QCQP), batched. The small tridiagonal problem is solved exactly (More & Sorensen 1983):
    its eigendecomposition gives ||h(lam)|| and m(h(lam)) on the path
    h(lam) = -(T + lam I)^{-1} ||g|| e1 in closed form, and the multiplier lam >= max(0, -mu_min)
    with ||h|| = radius is found by bisection (the interior Newton point when T is positive
    definite and it lies inside). Steihaug-CG stops where its first direction, -g, leaves the
    ball (radius below the model's minimiser along -g, or negative curvature there) and then
    returns the steepest-descent step; GLTR bends the step with the curvature on the boundary.

    With ``level``: where the model predicts the zero of f + m within the ball, the step is the
    smallest one that reaches it, min ||s|| s.t. f + m(s) <= 0 (on the path, by bisection on
    lam: along it m falls as ||s|| grows), the second-order analogue of the first-order step
    stopped at the linearised boundary. The hard case (g orthogonal to the lowest eigenvector of
    T) is not completed: s then stays inside.

    Args:
        g: (N, ...) gradients of f at the current points.
        hvp: H v for a batch v of g's shape.
        radius: trust-region radius, a scalar or (N,).
        steps: k, the dimension of the Krylov space (Hessian-vector products).
        level: (N,) the margin f at the current points, or None for the plain subproblem.

    Returns:
        (s, crosses, curved): the step shaped like g; (N,) True where the step reaches the
        model's zero (all False without ``level``); (N,) True where some H q != 0.
    """
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
