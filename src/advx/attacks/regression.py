"""Adversarial perturbations for regression (Balda, Behboodi & Mathar 2018, Section III).

The attacker maximises the first-order output change ||f(x + eta) - f(x)||_2 ~ ||J_f(x) eta||_2
under ||eta||_p <= eps (Eq. 9); the optimum is eps * ||J_f(x)||_{p->2}, an operator norm.

* p = 2: eta = eps * v_max, the top right-singular vector of J (closed form, Section III), found
  by power iteration on J^T J with Jacobian-vector products (double-backward trick) and
  vector-Jacobian products (autograd); J is never formed. Cost: 2 products (backward passes)
  per iteration, batched over samples; each sample stops when its Rayleigh quotient settles.
* p = 1: ||J||_{1->2} = max_k ||J_k||_2 (largest column norm), attained by the single-coordinate
  perturbation eps * e_{k*}. All column norms need the whole Jacobian: min(M, D) products
  (M output, D input dimensions), each serving the whole batch, grouped ``chunk_size`` at a
  time and accumulating squared column norms, so memory is chunk_size * N * max(M, D), never
  N * M * D (rows by VJPs when M <= D, columns by JVPs otherwise).
* p = inf (NP-hard, Rohn 2000) and any other p: a heuristic. Start from the top singular vector
  scaled onto the Lp sphere, eta_0 = eps * v / ||v||_p, then conditional-gradient ascent
  eta <- argmax_{||eta||_p <= eps} <J^T J eta_prev, eta> = eps * steepest_direction(J^T J eta, p)
  (for p = inf: eps * sign(J^T J eta), a power-iteration-like alternating sign update).
  Since ||J eta||^2 is convex, each update can only increase it, so the result satisfies
  ||J eta||_2 >= eps * sigma_max(J) / ||v||_p, which for p >= 2 is >= eps * sigma_max(J) >=
  eps * ||J||_{p->2} / D^(1/2 - 1/p) (for p = inf: >= optimum / sqrt(D)).

Both eta and -eta solve the linearised problem; the attack evaluates f at both (after clipping
to the box [0, 1]) and keeps the one with the larger true output change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._core import (
    INF,
    EpsLike,
    NormLike,
    attack_mode,
    check_inputs,
    check_int,
    clip_box,
    flat,
    lp_norm,
    parse_norm,
    per_sample,
    steepest_direction,
    view_like,
)

_TINY = 1e-30


class _Linearisation:
    """J_f(x) as a pair of batched linear maps on (N, D) tangents and (N, M) cotangents.

    VJP: one backward pass through the graph of f at x (kept). JVP by the double-backward
    trick: J^T u is built once as a differentiable (linear) function of a dummy u, and
    J v = d<J^T u, v>/du is one backward pass through that graph; on CPU this is several times
    faster than forward-mode ``torch.func.jvp``. Assumes f treats samples independently (eval
    mode), so J is block diagonal and one product of the whole batch serves every sample."""

    def __init__(self, f: Callable[[Tensor], Tensor], inputs: Tensor):
        self.n = inputs.shape[0]
        self._x = flat(inputs.detach()).clone().requires_grad_(True)
        with torch.enable_grad():
            output = f(self._x.reshape(inputs.shape)).reshape(self.n, -1)
            self._u = torch.zeros_like(output, requires_grad=True)
            (self._transposed,) = torch.autograd.grad(
                output, self._x, self._u, create_graph=True, allow_unused=True
            )
        self._output_graph = output
        self.output = output.detach()
        self.out_dim = output.shape[1]
        self.in_dim = self._x.shape[1]

    def jvp(self, tangent: Tensor) -> Tensor:
        """J v for an (N, D) batch of tangents -> (N, M)."""
        if self._transposed is None or not self._transposed.requires_grad:
            return torch.zeros_like(self.output)
        (out,) = torch.autograd.grad(
            self._transposed, self._u, tangent, retain_graph=True, allow_unused=True
        )
        return torch.zeros_like(self.output) if out is None else out

    def vjp(self, cotangent: Tensor) -> Tensor:
        """J^T u for an (N, M) batch of cotangents -> (N, D)."""
        if not self._output_graph.requires_grad:
            return torch.zeros_like(self._x)
        (out,) = torch.autograd.grad(
            self._output_graph, self._x, cotangent, retain_graph=True, allow_unused=True
        )
        return torch.zeros_like(self._x) if out is None else out.detach()

    def gram(self, tangent: Tensor) -> Tensor:
        """J^T J v."""
        return self.vjp(self.jvp(tangent))


def _normalise(v: Tensor, fallback: Tensor) -> Tensor:
    norms = v.norm(dim=1, keepdim=True)
    return torch.where(norms > _TINY, v / norms.clamp_min(_TINY), fallback)


def _power_iteration(
    lin: _Linearisation, iterations: int, tol: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Top singular value (N,) and unit right-singular vector (N, D) of each sample's J.

    All samples start from the same random vector and each stops on its own once its Rayleigh
    quotient has converged, so a batch gives the same result as its samples one by one.
    ``tol`` is raised to 32 machine epsilons of the dtype: a smaller relative change is
    rounding noise (in float32 the default 1e-7 could never be met, so every call ran all
    ``iterations``, 16x the work on a one-output regressor)."""
    kw = {"device": lin.output.device, "dtype": lin.output.dtype}
    tol = max(tol, 32 * torch.finfo(lin.output.dtype).eps)
    start = torch.randn(lin.in_dim, generator=generator, **kw).expand(lin.n, -1)
    v = _normalise(start, start)
    sigma2 = torch.zeros(lin.n, **kw)
    active = torch.ones(lin.n, dtype=torch.bool, device=v.device)
    for _ in range(iterations):
        w = lin.gram(v)
        new_sigma2 = (w * v).sum(1)  # Rayleigh quotient v^T J^T J v
        v = torch.where(active[:, None], _normalise(w, v), v)
        converged = (new_sigma2 - sigma2).abs() <= tol * new_sigma2.abs().clamp_min(_TINY)
        sigma2 = torch.where(active, new_sigma2, sigma2)
        active = active & ~converged
        if not bool(active.any()):
            break
    sigma = lin.jvp(v).norm(dim=1)
    return sigma.detach(), v.detach()


def _default_generator(inputs: Tensor, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        return generator
    return torch.Generator(device=inputs.device).manual_seed(0)  # deterministic by default


def top_singular_vector(
    f: Callable[[Tensor], Tensor],
    inputs: Tensor,
    *,
    iterations: int = 50,
    tol: float = 1e-7,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-sample largest singular value sigma_max(J_f(x)) (N,) and its unit right-singular
    vector (shaped like ``inputs``) by power iteration on J^T J with JVP/VJP products (the
    p = 2 solution of Eq. 9, eta = eps * v_max). Stops early when every Rayleigh quotient
    changes by less than ``tol`` (relative; at least 32 machine epsilons of the dtype).
    Deterministic: seed 0 unless ``generator``."""
    check_int(iterations, "iterations", 1)
    with _eval(f):
        lin = _Linearisation(f, inputs)
        sigma, v = _power_iteration(lin, iterations, tol, _default_generator(inputs, generator))
    return sigma, v.reshape(inputs.shape)


def _basis_chunks(size: int, chunk_size: int, like: Tensor, n: int):
    """Yield (start, stop, basis) with basis (C, N, size): e_start..e_stop-1 for every sample."""
    eye = torch.eye(size, device=like.device, dtype=like.dtype)
    for start in range(0, size, chunk_size):
        stop = min(start + chunk_size, size)
        yield start, stop, eye[start:stop, None, :].expand(stop - start, n, size)


def _column_norms(lin: _Linearisation, chunk_size: int) -> Tensor:
    """||J_k||_2 for every input coordinate k, (N, D), with min(M, D) products, each serving
    the whole batch: rows J^T e_m by VJPs (squares accumulated, so memory stays O(N * D)) when
    M <= D, else columns J e_d by JVPs (grouped ``chunk_size`` at a time)."""
    squared = torch.zeros(lin.n, lin.in_dim, device=lin.output.device, dtype=lin.output.dtype)
    if lin.out_dim <= lin.in_dim:
        for _, _, basis in _basis_chunks(lin.out_dim, chunk_size, squared, lin.n):
            squared += torch.stack([lin.vjp(e) for e in basis]).pow(2).sum(0)
    else:
        for start, stop, basis in _basis_chunks(lin.in_dim, chunk_size, squared, lin.n):
            columns = torch.stack([lin.jvp(e) for e in basis])  # (C, N, M)
            squared[:, start:stop] = columns.pow(2).sum(2).T
    return squared.sqrt()


def jacobian_column_norms(
    f: Callable[[Tensor], Tensor], inputs: Tensor, *, chunk_size: int = 64
) -> Tensor:
    """Per-sample Euclidean norms of the Jacobian's columns ||J_k||_2, shaped like ``inputs``
    (Section III, p = 1: ||J||_{1->2} = max_k ||J_k||_2). Cost: min(M, D) JVPs or VJPs,
    each serving the whole batch, grouped ``chunk_size`` at a time."""
    check_int(chunk_size, "chunk_size", 1)
    with _eval(f):
        norms = _column_norms(_Linearisation(f, inputs), chunk_size)
    return norms.detach().reshape(inputs.shape)


def _single_coordinate(lin: _Linearisation, radius: Tensor, chunk_size: int) -> Tensor:
    norms = _column_norms(lin, chunk_size)
    best = norms.argmax(1, keepdim=True)
    return torch.zeros_like(norms).scatter_(1, best, radius[:, None])


def _conditional_gradient(
    lin: _Linearisation, v: Tensor, radius: Tensor, p: float, iterations: int
) -> Tensor:
    """Heuristic for ||J||_{p->2}, p not in {1, 2}: from eps * v / ||v||_p, repeat
    eta <- eps * steepest_direction(J^T J eta, p); ||J eta||_2 never decreases (convexity)."""
    eta = v * (radius / lp_norm(v, p).clamp_min(_TINY))[:, None]
    value = lin.jvp(eta).pow(2).sum(1)
    for _ in range(iterations):
        direction = steepest_direction(lin.gram(eta), p)
        if p == INF:  # keep the previous sign where J^T J eta vanishes
            direction = torch.where(direction == 0, eta.sign(), direction)
        candidate = direction * radius[:, None]
        new_value = lin.jvp(candidate).pow(2).sum(1)
        better = new_value > value
        if not bool(better.any()):
            break
        eta = torch.where(better[:, None], candidate, eta)
        value = torch.where(better, new_value, value)
    return eta


def _linearised_solution(
    lin: _Linearisation,
    radius: Tensor,
    p: float,
    iterations: int,
    tol: float,
    chunk_size: int,
    generator: torch.Generator,
) -> Tensor:
    if p == 1:
        return _single_coordinate(lin, radius, chunk_size)
    _, v = _power_iteration(lin, iterations, tol, generator)
    if p == 2:
        return v * radius[:, None]
    return _conditional_gradient(lin, v, radius, p, iterations)


def _best_sign(
    f: Callable[[Tensor], Tensor], inputs: Tensor, eta: Tensor, output: Tensor, clip: bool
) -> Tensor:
    """Of x + eta and x - eta (clipped to [0, 1] when ``clip``), keep per sample the one with
    the larger true output change ||f(x') - f(x)||_2."""
    candidates = []
    changes = []
    for sign in (1.0, -1.0):
        x = inputs + sign * eta
        x = clip_box(x) if clip else x
        with torch.no_grad():
            change = (flat(f(x)) - output).norm(dim=1)
        candidates.append(x)
        changes.append(change)
    plus_wins = view_like(changes[0] >= changes[1], inputs)
    return torch.where(plus_wins, candidates[0], candidates[1])


def _eval(f: Callable[[Tensor], Tensor]) -> contextlib.AbstractContextManager:
    """attack_mode for modules (eval mode, no parameter gradients), a no-op for callables."""
    return attack_mode(f) if isinstance(f, nn.Module) else contextlib.nullcontext()


def regression_attack(
    f: Callable[[Tensor], Tensor],
    inputs: Tensor,
    *,
    eps: EpsLike,
    norm: NormLike = 2,
    iterations: int = 50,
    tol: float = 1e-7,
    chunk_size: int = 64,
    clip: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Regression attack of Balda et al. (2018, Section III, Eq. 9): maximise the linearised
    output change ||J_f(x) eta||_2 subject to ||eta||_p <= eps, per sample, batched.

    ``f`` maps a batch (N, ...) to outputs (N, ...) (a regression model, or any vector-valued
    function; samples must be processed independently). ``norm``: 2 (top right-singular vector
    by ``iterations`` power iterations with JVP/VJP, never forming J), 1 (single largest-norm
    Jacobian column, exact, cost min(M, D) products in chunks of ``chunk_size``), inf or any
    other p >= 1 (conditional-gradient heuristic from the top singular vector, with the bound
    ||J eta||_2 >= eps * sigma_max / ||v_max||_p, i.e. >= eps * sigma_max for p >= 2; see the
    module docstring). Of +eta and -eta the one with the larger true output change is kept.

    Returns x + eta, clipped to [0, 1] when ``clip`` (inputs must then lie in [0, 1]); clipping
    only shrinks the perturbation, so ||eta||_p <= eps holds. ``eps`` is a float or (N,) tensor.
    """
    p = parse_norm(norm, allowed=None)
    check_int(iterations, "iterations", 1)
    check_int(chunk_size, "chunk_size", 1)
    if clip:
        check_inputs(inputs)
    elif not torch.isfinite(inputs).all():
        raise ValueError("inputs contains NaN or inf")
    radius = per_sample(eps, inputs, "eps")
    generator = _default_generator(inputs, generator)
    with _eval(f):
        lin = _Linearisation(f, inputs)
        eta = _linearised_solution(lin, radius, p, iterations, tol, chunk_size, generator)
        adversarial = _best_sign(f, inputs, eta.reshape(inputs.shape), lin.output, clip)
    return adversarial.detach()
