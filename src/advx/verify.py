"""Exact minimal adversarial perturbations of ReLU networks by mixed-integer programming (Tjeng,
Xiao & Tedrake, "Evaluating robustness of neural networks with mixed integer programming",
ICLR 2019), the yardstick of the linear-region paper (Croce & Hein, GCPR 2018, Table 1).

For a network of affine layers (Linear, Conv2d, AvgPool2d, eval-mode BatchNorm, Flatten, Dropout)
and ReLUs, min ||z - x||_p over z in [0, 1]^d whose logits put another class on top (or the
target) is a MILP for p = 1, inf (solved with HiGHS through highspy) and a MIQP for p = 2 (SCIP
through pyscipopt, the ``mip`` extra). Each ReLU y = max(0, w.h + b) with pre-activation bounds
[l, u], l < 0 < u, is the big-M formulation of Tjeng et al. (Sec. 3):
y >= 0, y >= w.h + b, y <= w.h + b - l (1 - a), y <= u a, a binary; stable units (u <= 0 or
l >= 0) need no binary. Bounds come from interval arithmetic over the search domain, the first
layer's sharpened with the norm ball, and every later layer's by LPs over the relaxation of the
layers before it (HiGHS). The argmax condition is a disjunction over the classes (one binary per
reachable class). The search domain is the box intersected with the Lp ball of radius R, the norm
of a known adversarial (the warm start): the objective is bounded by R, so the solver prunes every
node that cannot beat the warm start.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import math
import multiprocessing
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from .attacks._core import (
    INF,
    NormLike,
    attack_mode,
    check_positive,
    dual_exponent,
    is_adversarial,
    parse_norm,
    validate,
)
from .attacks.linear_region.attack import EXTENSIONS, robustly_adversarial, warm_start
from .attacks.linear_region.geometry import float64_layers

AFFINE = (nn.Linear, nn.Conv2d, nn.AvgPool2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten)
RHO = 1e-7
"""Proximal weight of the branch and bound's QP relaxations for the variables other than z
(scaled by 1 / ub^2 per variable, so the bound correction is RHO per variable)."""
DAQP_INFEASIBLE = -1
"""DAQP's exit flag for a problem it proved infeasible (other negative flags are failures)."""
MIP_HEURISTICS = ("rins", "rens", "root_reduced_cost", "feasibility_jump")
"""HiGHS's primal heuristics, switched off for the L1/Linf MILPs: with the warm start's norm as
the objective bound they only search for points the bound already prunes (measured on
mnist-n1, Linf: 2.5x less time per image, the same optima)."""
STATUSES = ("optimal", "time_limit", "already_adversarial", "no_adversarial")


@dataclass
class MinimalPerturbation:
    """Per-sample result of :func:`minimal_perturbation`.

    Attributes:
        adversarials: (N, ...) the best adversarial found (checked by a forward pass of the model
            in the inputs' dtype); the input itself where none was found.
        norms: (N,) their perturbation norms (inf where none was found, 0 if already
            adversarial).
        lower_bounds: (N,) a proven lower bound on the minimal perturbation norm.
        status: "optimal" (the solver closed the gap), "time_limit" (both bounds reported),
            "already_adversarial" or "no_adversarial" (proven: none exists in the box).
        seconds: wall time per sample.
        nodes: branch-and-bound nodes per sample; binaries: binary variables per sample.
    """

    adversarials: Tensor
    norms: Tensor
    lower_bounds: Tensor
    status: list[str]
    seconds: list[float]
    nodes: list[int] = field(default_factory=list)
    binaries: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------- network -> affine


def affine_layers(
    model: nn.Module, input_shape: tuple[int, ...]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The network as dense affine maps (W_k, b_k) with a ReLU after every map but the last,
    built from float64 copies of the layers (consecutive affine layers are merged).

    Args:
        model: Linear/Conv2d/AvgPool2d/BatchNorm/Flatten/Dropout layers and ReLUs.
        input_shape: the per-sample input shape.
    """
    layers = [m for m in float64_layers(model) if not isinstance(m, (nn.Dropout, nn.Identity))]
    segments, current = [], []
    for layer in layers:
        if isinstance(layer, nn.ReLU):
            segments.append(current)
            current = []
        elif isinstance(layer, AFFINE):
            current.append(layer)
        else:
            raise TypeError(f"layer {type(layer).__name__} is not supported by the MIP")
    segments.append(current)
    maps, shape = [], tuple(input_shape)
    for segment in segments:
        weight, bias, shape = _segment_matrix(segment, shape)
        maps.append((weight, bias))
    return maps


def _segment_matrix(segment: list[nn.Module], shape: tuple[int, ...]):
    n_in = int(np.prod(shape))
    basis = torch.cat([torch.zeros(1, n_in), torch.eye(n_in)]).double().reshape(-1, *shape)
    with torch.no_grad():
        out = basis
        for layer in segment:
            out = layer(out)
    out_shape = tuple(out.shape[1:])
    out = out.reshape(n_in + 1, -1)
    bias = out[0]
    return (out[1:] - bias).T.numpy().copy(), bias.numpy().copy(), out_shape


def _forward(maps, z: np.ndarray) -> np.ndarray:
    h = z
    for k, (w, b) in enumerate(maps):
        h = w @ h + b
        if k < len(maps) - 1:
            h = np.maximum(h, 0)
    return h


# --------------------------------------------------------------------------- the MIP


@dataclass
class _Problem:
    """A mixed-integer program: min cost'x, row_lower <= A x <= row_upper, bounds, integrality;
    for L2 also ``t >= ||z - x||_2^2`` (``quadratic``: indices of z and of t)."""

    cost: list = field(default_factory=list)
    lower: list = field(default_factory=list)
    upper: list = field(default_factory=list)
    integer: list = field(default_factory=list)
    rows: list = field(default_factory=list)  # (indices, values, lo, hi)
    quadratic: tuple | None = None
    relus: list = field(default_factory=list)  # (binary, post, prev indices, weights, bias)

    def add(self, lo, hi, cost=0.0, integer=False) -> int:
        self.cost.append(cost)
        self.lower.append(lo)
        self.upper.append(hi)
        self.integer.append(integer)
        return len(self.cost) - 1

    def add_many(self, lo, hi, integer=False) -> np.ndarray:
        start = len(self.cost)
        for a, b in zip(lo, hi):
            self.add(float(a), float(b), 0.0, integer)
        return np.arange(start, len(self.cost))

    def row(self, idx, vals, lo, hi) -> None:
        self.rows.append((np.asarray(idx), np.asarray(vals, dtype=float), lo, hi))

    def matrix(self) -> sp.csr_matrix:
        data, ind, ptr = [], [], [0]
        for idx, vals, _, _ in self.rows:
            ind.extend(idx.tolist())
            data.extend(vals.tolist())
            ptr.append(len(ind))
        return sp.csr_matrix((data, ind, ptr), shape=(len(self.rows), len(self.cost)))


def _interval(w: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    return wp @ lo + wn @ hi + b, wp @ hi + wn @ lo + b


def _add_relu_layer(prob: _Problem, prev: np.ndarray, w, b, lo, hi) -> tuple[np.ndarray, int]:
    """Post-activation variables of one ReLU layer with pre-activation bounds [lo, hi]."""
    post = prob.add_many(np.zeros_like(lo), np.maximum(hi, 0))
    binaries = 0
    for j in range(w.shape[0]):
        nz = np.nonzero(w[j])[0]
        idx, vals = np.r_[post[j], prev[nz]], np.r_[1.0, -w[j, nz]]
        if hi[j] <= 0:
            continue  # stable inactive: the variable's bounds fix it at 0
        if lo[j] >= 0:
            prob.row(idx, vals, b[j], b[j])  # stable active: h = w.h_prev + b
            continue
        a = prob.add(0.0, 1.0, integer=True)
        prob.relus.append((a, post[j], prev[nz], w[j, nz], b[j]))
        binaries += 1
        prob.row(idx, vals, b[j], INF)  # h >= w.h_prev + b
        prob.row(np.r_[idx, a], np.r_[vals, -lo[j]], -INF, b[j] - lo[j])  # h <= pre - l(1 - a)
        prob.row([post[j], a], [1.0, -hi[j]], -INF, 0.0)  # h <= u a
    return post, binaries


def _lp_bounds(prob: _Problem, prev: np.ndarray, w, b, lo, hi, unstable) -> None:
    """Tighten [lo, hi] of the pre-activations w.h_prev + b (in place) by minimising and
    maximising each unstable one over the LP relaxation of ``prob`` (HiGHS)."""
    import highspy

    h = _highs(prob, relax=True)
    n = len(prob.cost)
    for j in np.nonzero(unstable)[0]:
        cost = np.zeros(n)
        cost[prev] = w[j]
        for sense, target in ((1.0, lo), (-1.0, hi)):
            h.changeColsCost(n, np.arange(n, dtype=np.int32), sense * cost)
            h.run()
            if h.getModelStatus() == highspy.HighsModelStatus.kOptimal:
                value = sense * h.getInfo().objective_function_value + b[j]
                if sense > 0:
                    target[j] = max(target[j], value - 1e-7)
                else:
                    target[j] = min(target[j], value + 1e-7)


def _highs(prob: _Problem, relax: bool = False, time_limit: float | None = None, gap=None):
    import highspy

    a = prob.matrix().tocsc()
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = len(prob.cost), len(prob.rows)
    lp.col_cost_ = np.asarray(prob.cost, dtype=float)
    lp.col_lower_ = np.asarray(prob.lower, dtype=float)
    lp.col_upper_ = np.asarray(prob.upper, dtype=float)
    lp.row_lower_ = np.asarray([r[2] for r in prob.rows], dtype=float)
    lp.row_upper_ = np.asarray([r[3] for r in prob.rows], dtype=float)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = a.indptr.astype(np.int32)
    lp.a_matrix_.index_ = a.indices.astype(np.int32)
    lp.a_matrix_.value_ = a.data.astype(float)
    if not relax and any(prob.integer):
        kinds = highspy.HighsVarType
        lp.integrality_ = [kinds.kInteger if i else kinds.kContinuous for i in prob.integer]
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    if time_limit is not None:
        h.setOptionValue("time_limit", float(max(time_limit, 1e-3)))
    if gap is not None:
        h.setOptionValue("mip_rel_gap", float(gap))
    h.passModel(lp)
    return h


@dataclass
class _Spec:
    """What one sample's MIP needs (picklable, for worker processes)."""

    maps: list
    x: np.ndarray
    source: int
    targeted: bool
    p: float
    radius: float  # norm of the warm start (inf if none)
    start: np.ndarray | None
    time_limit: float
    gap: float
    lp_tightening: bool
    per_class: bool = True
    start_class: int | None = None
    qp: str = "bnb"


def _domain(spec: _Spec) -> tuple[np.ndarray, np.ndarray]:
    r = spec.radius if math.isfinite(spec.radius) else 1.0
    return np.clip(spec.x - r, 0, 1), np.clip(spec.x + r, 0, 1)


def _first_layer_ball(w, b, spec: _Spec, lo, hi) -> None:
    """Sharpen the first layer's bounds [lo, hi] (in place) to the exact range of w.z + b over
    the box [0, 1]^d intersected with the ball ||z - x||_2 <= R (L2; for L1 the ball's dual
    bound |w.(z - x)| <= ||w||_inf R). For L2, min w.delta over the box [-x, 1 - x] and the ball
    is attained at delta(mu) = clip(-mu w, -x, 1 - x), mu >= 0 the least with ||delta|| = R (or
    the box's corner, inside the ball): a bisection on mu per unit."""
    if not math.isfinite(spec.radius) or spec.p == INF:
        return
    r, x = spec.radius, spec.x
    centre = w @ x + b
    if spec.p != 2:
        reach = np.linalg.norm(w, ord=dual_exponent(spec.p), axis=1) * r
        np.maximum(lo, centre - reach, out=lo)
        np.minimum(hi, centre + reach, out=hi)
        return
    for sign, target, better in ((1.0, lo, np.maximum), (-1.0, hi, np.minimum)):
        direction = sign * w  # minimise direction.delta
        value = (_ball_box_minimum(direction, -x, 1 - x, r) * sign) + centre
        better(target, value - sign * 1e-9, out=target)


def _ball_box_minimum(c: np.ndarray, lo: np.ndarray, hi: np.ndarray, r: float) -> np.ndarray:
    """min c_j.delta over lo <= delta <= hi, ||delta||_2 <= r, for each row c_j (bisection on
    the multiplier of the ball: delta = clip(-mu c_j, lo, hi))."""
    corner = np.where(c > 0, lo, hi)
    corner = np.where(c == 0, 0.0, corner)
    inside = np.linalg.norm(corner, axis=1) <= r
    low = np.zeros(c.shape[0])
    high = np.full(
        c.shape[0], r / np.maximum(np.abs(c).min(axis=1, initial=np.inf, where=c != 0), 1e-30)
    )
    for _ in range(100):
        mid = 0.5 * (low + high)
        norm = np.linalg.norm(np.clip(-mid[:, None] * c, lo, hi), axis=1)
        low = np.where(norm <= r, mid, low)
        high = np.where(norm <= r, high, mid)
    delta = np.clip(-low[:, None] * c, lo, hi)
    return np.where(inside, (c * corner).sum(1), (c * delta).sum(1))


def build_network(spec: _Spec) -> tuple[_Problem, dict]:
    """The input and hidden layers of one sample's big-M MIP (see the module docstring): the
    variables, the ReLU constraints and the bounds; returns it and its layout."""
    prob = _Problem()
    zlo, zhi = _domain(spec)
    z = prob.add_many(zlo, zhi)
    lo, hi = zlo, zhi  # bounds of the current layer's values
    prev, binaries = z, 0
    for k, (w, b) in enumerate(spec.maps[:-1]):
        plo, phi = _interval(w, b, lo, hi) if k > 0 else _interval(w, b, zlo, zhi)
        if k == 0:
            _first_layer_ball(w, b, spec, plo, phi)
        elif spec.lp_tightening:
            _lp_bounds(prob, prev, w, b, plo, phi, (plo < 0) & (phi > 0))
        prev, count = _add_relu_layer(prob, prev, w, b, plo, phi)
        binaries += count
        lo, hi = np.maximum(plo, 0), np.maximum(phi, 0)
    return prob, {"z": z, "binaries": binaries, "last": prev, "lo": lo, "hi": hi}


def build(spec: _Spec, only: int | None = None) -> tuple[_Problem, dict]:
    """One sample's MIP: the network, the decision (every reachable class, as a disjunction, or
    the class ``only``) and the norm objective."""
    prob, layout = build_network(spec)
    finish(prob, layout, spec, only)
    return prob, layout


def finish(prob: _Problem, layout: dict, spec: _Spec, only: int | None) -> None:
    """Add the decision and the objective to a network MIP from :func:`build_network`."""
    w, b = spec.maps[-1]
    layout["reachable"] = _add_decision(
        prob, layout["last"], w, b, layout["lo"], layout["hi"], spec, only
    )
    layout["t"] = _add_objective(prob, layout["z"], spec)


def reachable_classes(layout: dict, spec: _Spec) -> list[int]:
    """Classes whose logit can reach the source's somewhere in the domain (interval bounds)."""
    w, b = spec.maps[-1]
    c = spec.source
    out = []
    for s in range(w.shape[0]):
        if s == c:
            continue
        _, dhi = _interval((w[s] - w[c])[None], np.array([b[s] - b[c]]), layout["lo"], layout["hi"])
        if dhi[0] >= 0:
            out.append(s)
    return out


def _add_decision(prob: _Problem, prev, w, b, lo, hi, spec: _Spec, only=None) -> int:
    c = spec.source
    k = w.shape[0]
    if only is not None:
        prob.row(prev, w[only] - w[c], -(b[only] - b[c]), INF)
        return 1
    if spec.targeted:
        for s in range(k):
            if s != c:
                prob.row(prev, w[c] - w[s], -(b[c] - b[s]), INF)
        return 1
    chosen = []
    for s in range(k):
        if s == c:
            continue
        dlo, dhi = _interval((w[s] - w[c])[None], np.array([b[s] - b[c]]), lo, hi)
        if dhi[0] < 0:
            continue  # class s can never beat c in the domain
        chosen.append((s, max(0.0, -dlo[0])))
    if len(chosen) == 1:
        s, _ = chosen[0]
        prob.row(prev, w[s] - w[c], -(b[s] - b[c]), INF)
        return 1
    picks = []
    for s, big_m in chosen:  # (w_s - w_c).h + b_s - b_c >= -M (1 - pick_s)
        pick = prob.add(0.0, 1.0, integer=True)
        picks.append(pick)
        prob.row(np.r_[prev, pick], np.r_[w[s] - w[c], -big_m], -(b[s] - b[c]) - big_m, INF)
    if picks:
        prob.row(np.array(picks), np.ones(len(picks)), 1.0, INF)
    else:  # no class can win anywhere in the domain: a variable fixed at 0 must reach 1
        dummy = prob.add(0.0, 0.0)
        prob.row(np.array([dummy]), np.ones(1), 1.0, INF)
    return len(chosen)


def _add_objective(prob: _Problem, z: np.ndarray, spec: _Spec) -> int:
    x, r = spec.x, spec.radius
    if spec.p == INF:
        t = prob.add(0.0, r if math.isfinite(r) else 1.0, cost=1.0)
        for i in range(len(z)):
            prob.row([z[i], t], [1.0, -1.0], -INF, x[i])  # z - t <= x
            prob.row([z[i], t], [1.0, 1.0], x[i], INF)  # z + t >= x
        return t
    if spec.p == 1:
        e = prob.add_many(np.zeros(len(z)), np.maximum(x, 1 - x))
        for i in range(len(z)):
            prob.cost[e[i]] = 1.0
            prob.row([e[i], z[i]], [1.0, -1.0], -x[i], INF)
            prob.row([e[i], z[i]], [1.0, 1.0], x[i], INF)
        return -1
    bound = r * r if math.isfinite(r) else float(len(z))
    t = prob.add(0.0, bound, cost=1.0)
    prob.quadratic = (z, t)
    return t


# --------------------------------------------------------------------------- solvers


def _solve_highs(prob: _Problem, layout: dict, spec: _Spec, time_limit: float, limit: float):
    import highspy

    h = _highs(prob, time_limit=time_limit, gap=spec.gap)
    for heuristic in MIP_HEURISTICS:  # the warm start is the incumbent: its bound prunes
        h.setOptionValue(f"mip_heuristic_run_{heuristic}", False)
    h.setOptionValue("mip_heuristic_effort", 0.0)
    if math.isfinite(limit):
        h.setOptionValue("objective_bound", float(limit))
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    kinds = highspy.HighsModelStatus
    solved = status == kinds.kOptimal
    infeasible = status in (kinds.kInfeasible, kinds.kObjectiveBound)
    z = None
    if h.getSolution().value_valid:
        z = np.asarray(h.getSolution().col_value)[layout["z"]]
    lower = info.mip_dual_bound if not solved else info.objective_function_value
    if solved and info.mip_dual_bound is not None and np.isfinite(info.mip_dual_bound):
        lower = info.mip_dual_bound
    return z, float(lower), solved, infeasible, int(info.mip_node_count)


def _solve_bnb(prob: _Problem, layout: dict, spec: _Spec, time_limit: float, limit: float):
    """Branch and bound on the binaries with convex-QP relaxations (DAQP): min ||z - x||_2^2
    over the big-M relaxation, binaries fixed at the node's branchings and relaxed to [0, 1]
    elsewhere; best-first, branching on the most violated ReLU (``_branching_variable``); a node
    whose relaxed point meets every ReLU is solved by it. Every variable v other than z carries
    a proximal weight RHO / ub_v^2 (DAQP needs a definite Hessian); the node bound subtracts
    sum_v RHO, the most those weights can add, so it stays a valid lower bound. Where DAQP
    fails, HiGHS's QP solver takes the node without the weights. Returns the point, the lower
    bound on the squared norm, solved, infeasible and the node count."""
    import heapq

    import qpsolvers

    n = len(prob.cost)
    z_idx = layout["z"]
    others = np.setdiff1d(np.arange(n), z_idx)
    upper_b = np.asarray(prob.upper, dtype=float)
    rho = np.zeros(n)
    rho[others] = RHO / np.maximum(upper_b[others] ** 2, 1e-4)
    diag = rho.copy()
    diag[z_idx] = 1.0
    q = np.zeros(n)
    q[z_idx] = -spec.x
    const = float(spec.x @ spec.x)
    slack = float(np.sum(rho[others] * upper_b[others] ** 2))
    a = prob.matrix().toarray()
    row_lo = np.array([r[2] for r in prob.rows], dtype=float)
    row_hi = np.array([r[3] for r in prob.rows], dtype=float)
    eq = row_lo == row_hi
    up = ~eq & np.isfinite(row_hi)
    dn = ~eq & np.isfinite(row_lo)
    g = np.vstack([a[up], -a[dn]])
    h = np.concatenate([row_hi[up], -row_lo[dn]])
    a_eq, b_eq = (a[eq], row_lo[eq]) if eq.any() else (None, None)
    binaries = np.nonzero(np.asarray(prob.integer))[0]
    lb0 = np.asarray(prob.lower, dtype=float)
    exact = np.zeros(n)
    exact[z_idx] = 1.0
    hessian = np.diag(diag)  # dense, as DAQP takes it; the same at every node

    def relax(fix: dict):
        """The node relaxation: (point, lower bound on the squared norm, status), status
        "ok", "infeasible" (DAQP proved it) or "failed" (no solver could tell). DAQP with the
        proximal weights (its bound lowered by ``slack``), then HiGHS's QP solver without them
        (within the time left) where DAQP fails for another reason than infeasibility."""
        lb, ub = lb0.copy(), upper_b.copy()
        for j, v in fix.items():
            lb[j] = ub[j] = v
        sol, flag = _daqp(hessian, q, a, row_lo, row_hi, lb, ub)
        if flag > 0:
            zs = sol[z_idx]
            return sol, float(zs @ zs - 2 * spec.x @ zs + const) - slack, "ok"
        if flag == DAQP_INFEASIBLE:
            return None, INF, "infeasible"
        left = max(time_limit - (time.perf_counter() - started), 1e-3)
        try:
            sol = qpsolvers.solve_qp(
                sp.diags(exact, format="csc"), q, sp.csc_matrix(g), h,
                None if a_eq is None else sp.csc_matrix(a_eq), b_eq,
                lb=lb, ub=ub, solver="highs", time_limit=float(left),
            )  # fmt: skip
        except Exception:
            sol = None
        if sol is None:
            return None, INF, "failed"
        zs = sol[z_idx]
        return sol, float(zs @ zs - 2 * spec.x @ zs + const), "ok"

    started = time.perf_counter()
    best, best_z = limit, None
    unresolved = INF  # the least bound of the nodes whose relaxation no solver could solve
    heap, counter, nodes = [], 0, 0
    sol, bound, state = relax({})
    if state == "ok":
        heapq.heappush(heap, (bound, counter, {}, sol))
    elif state == "failed":
        unresolved = 0.0
    lower = INF if sol is None else bound
    while heap:
        bound, _, fix, sol = heapq.heappop(heap)
        lower = bound
        if bound >= best * (1 - spec.gap) - 1e-12:
            lower = min(best, bound)
            heap.clear()
            break
        if time.perf_counter() - started > time_limit:
            heapq.heappush(heap, (bound, counter, fix, sol))
            break
        nodes += 1
        j = _branching_variable(prob, sol, binaries, fix)
        if j is None:  # the relaxation's point is a point of the network: the node is solved
            z = np.clip(sol[z_idx], 0, 1)
            value = float((z - spec.x) @ (z - spec.x))
            if value < best:
                best, best_z = value, z
            continue
        for v in (0.0, 1.0):
            child = dict(fix)
            child[j] = v
            csol, cbound, state = relax(child)
            if state == "failed":  # never pruned unproven: the parent's bound stays open
                unresolved = min(unresolved, bound)
            elif state == "ok" and cbound < best * (1 - spec.gap):
                counter += 1
                heapq.heappush(heap, (cbound, counter, child, csol))
    if unresolved < best * (1 - spec.gap):
        heapq.heappush(heap, (unresolved, -1, {}, None))
    if heap:
        lower = min(heap[0][0], best)
    solved = not heap
    infeasible = best_z is None and solved
    if not solved:
        lower = min(lower, best)
    return best_z, float(max(lower, 0.0) if not infeasible else INF), solved, infeasible, nodes


def _daqp(hessian, q, a, row_lo, row_hi, lb, ub) -> tuple[np.ndarray | None, int]:
    """min 1/2 v' H v + q'v s.t. row_lo <= A v <= row_hi, lb <= v <= ub with DAQP's own
    interface (ranged rows; equality rows flagged), returning its exit flag, which tells a proven
    infeasible node (DAQP_INFEASIBLE) from a failure, unlike qpsolvers' None."""
    from ctypes import c_int

    import daqp

    n = len(q)
    upper = np.concatenate([ub, np.where(np.isfinite(row_hi), row_hi, 1e30)])
    lower = np.concatenate([lb, np.where(np.isfinite(row_lo), row_lo, -1e30)])
    sense = np.zeros(n + a.shape[0], dtype=c_int)
    sense[n:][row_lo == row_hi] = 5  # DAQP: an equality constraint
    x, _, flag, _ = daqp.solve(hessian, q, a, upper, lower, sense)
    return (x if flag > 0 else None), int(flag)


def _branching_variable(prob: _Problem, sol: np.ndarray, binaries: np.ndarray, fix: dict):
    """The binary to branch on at a node whose relaxation has the point ``sol``: the unfixed
    ReLU whose relaxed output is furthest above max(0, pre-activation) (the node's relaxation
    is exact where every ReLU is met), else the most fractional other binary (the class picks);
    None when the relaxed point satisfies every ReLU and every binary is integral."""
    best_j, best_gap = None, 1e-7
    relu_binaries = set()
    for a, post, prev, w, b in prob.relus:
        relu_binaries.add(a)
        if a in fix:
            continue
        gap = sol[post] - max(float(w @ sol[prev]) + b, 0.0)
        if gap > best_gap:
            best_j, best_gap = a, gap
    if best_j is not None:
        return int(best_j)
    others = [j for j in binaries if j not in relu_binaries and j not in fix]
    if others:
        frac = np.abs(sol[others] - np.round(sol[others]))
        if frac.max() > 1e-7:
            return int(others[int(np.argmax(frac))])
    return None


def _solve_scip(prob: _Problem, layout: dict, spec: _Spec, time_limit: float, limit: float):
    try:
        import pyscipopt
    except ImportError as error:  # pragma: no cover - depends on the extra
        raise ImportError(
            "the L2 minimal perturbation needs SCIP: pip install 'advx[mip]' (pyscipopt)"
        ) from error
    m = pyscipopt.Model()
    m.hideOutput()
    m.setParam("limits/time", float(max(time_limit, 1e-3)))
    m.setParam("limits/gap", float(spec.gap))
    m.setParam("parallel/maxnthreads", 1)
    cols = [
        m.addVar(lb=lo, ub=hi, vtype="B" if integer else "C", obj=c)
        for c, lo, hi, integer in zip(prob.cost, prob.lower, prob.upper, prob.integer)
    ]
    for idx, vals, lo, hi in prob.rows:
        expr = pyscipopt.quicksum(v * cols[i] for i, v in zip(idx, vals))
        if lo == hi:
            m.addCons(expr == lo)
        elif math.isfinite(lo) and math.isfinite(hi):
            m.addCons(pyscipopt.quicksum([expr]) >= lo)
            m.addCons(expr <= hi)
        elif math.isfinite(lo):
            m.addCons(expr >= lo)
        else:
            m.addCons(expr <= hi)
    z_idx, t = prob.quadratic
    x = spec.x
    m.addCons(
        pyscipopt.quicksum((cols[i] - x[j]) * (cols[i] - x[j]) for j, i in enumerate(z_idx))
        <= cols[t]
    )
    if math.isfinite(limit):
        m.setObjlimit(float(limit))
    m.optimize()
    status = m.getStatus()
    z = None
    if m.getNSols() > 0:
        best = m.getBestSol()
        z = np.array([m.getSolVal(best, cols[i]) for i in z_idx])
    solved = status == "optimal"
    infeasible = status == "infeasible"
    lower = m.getDualbound() if not infeasible else INF
    return z, float(lower), solved, infeasible, int(m.getNNodes())


def _objective_value(spec: _Spec, z: np.ndarray) -> float:
    delta = z - spec.x
    if spec.p == 2:
        return float(delta @ delta)
    return float(np.abs(delta).max() if spec.p == INF else np.abs(delta).sum())


def _to_norm(spec: _Spec, value: float) -> float:
    if spec.p == 2:
        return math.sqrt(max(value, 0.0)) if math.isfinite(value) else value
    return value


def solve_sample(spec: _Spec) -> dict:
    """Build and solve one sample's MIP; returns its point, bounds, status and seconds.

    With ``spec.per_class`` (untargeted), one problem per reachable class, the warm start's class
    first, each pruned by the best objective so far (the incumbent is shared); the lower bound is
    the least of the classes' bounds (a class reached after the time limit contributes its root
    relaxation's bound). Otherwise one problem with the argmax disjunction."""
    started = time.perf_counter()
    solver = _solve_highs if spec.p != 2 else (_solve_scip if spec.qp == "scip" else _solve_bnb)
    base, layout = build_network(spec)
    if spec.targeted or not spec.per_class:
        classes = [None]
    else:
        classes = reachable_classes(layout, spec)
        first = spec.start_class
        classes.sort(key=lambda s: s != first)
    best_z = spec.start
    best = _objective_value(spec, spec.start) if spec.start is not None else INF
    lower, nodes, all_solved, any_feasible = INF, 0, True, False
    for only in classes:
        left = spec.time_limit - (time.perf_counter() - started)
        if left <= 0:  # out of time: the class still gets its root relaxation's bound
            left = 1e-3
        prob = copy.deepcopy(base)
        part = dict(layout)
        finish(prob, part, spec, only)
        z, bound, solved, infeasible, count = solver(prob, part, spec, left, best)
        nodes += count
        if z is not None:
            value = _objective_value(spec, z)
            if value < best:
                best, best_z = value, z
        if infeasible:  # nothing in this class beats the incumbent (or no adversarial at all)
            bound = best
        else:
            any_feasible = True
        all_solved &= solved or infeasible
        lower = min(lower, bound)
    lower = min(lower, best)
    return {
        "z": best_z,
        "lower": max(_to_norm(spec, lower), 0.0),
        "solved": all_solved,
        "infeasible": not any_feasible and best_z is None,
        "nodes": nodes,
        "binaries": layout["binaries"],
        "seconds": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------- public API


def _verified(model, z: np.ndarray, x: np.ndarray, source: int, targeted: bool, like: Tensor):
    """The MIP point lengthened by the least of ``EXTENSIONS`` that the model (inputs' dtype)
    classifies as adversarial, or None."""
    delta = z - x
    candidates = np.stack([np.clip(x + (1 + e) * delta, 0, 1) for e in EXTENSIONS])
    batch = torch.as_tensor(candidates).to(like.dtype).reshape(-1, *like.shape[1:])
    with torch.no_grad():
        logits = model(batch.to(like.device))
    labels = torch.full((len(EXTENSIONS),), source, device=logits.device)
    ok = robustly_adversarial(logits, labels, targeted).cpu().numpy()
    return batch[int(np.argmax(ok))] if ok.any() else None


def _norm(delta: Tensor, p: float) -> float:
    return float(torch.linalg.vector_norm(delta.double().flatten(), ord=p))


def minimal_perturbation(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    norm: NormLike,
    targeted: bool = False,
    time_limit: float = 600.0,
    start: Tensor | None = None,
    gap: float = 1e-4,
    lp_tightening: bool = True,
    per_class: bool = True,
    l2_solver: str = "bnb",
    processes: int = 1,
) -> MinimalPerturbation:
    """The exact minimal adversarial perturbation by mixed-integer programming (Tjeng, Xiao &
    Tedrake, ICLR 2019), per sample: min ||z - x||_p s.t. z in [0, 1]^d and the network's
    argmax at z is not the label (or is the target).

    Args:
        model: a ReLU network of Linear, Conv2d, AvgPool2d, BatchNorm (eval), Flatten, Dropout.
        inputs: (N, ...) in [0, 1].
        labels: (N,) true classes, or targets with ``targeted=True``.
        norm: 1 or inf (MILP, HiGHS) or 2 (MIQP, SCIP: the ``mip`` extra).
        targeted: the argmax must be ``labels``.
        time_limit: seconds per sample (model building included).
        start: adversarial points (N, ...) from an attack; their norms bound the search domain
            (box intersected with the ball) and they are the incumbents. Default: DeepFool and a
            binary search to the boundary (``linear_region.warm_start``).
        gap: relative optimality gap at which the solver stops ("optimal" means within it).
        lp_tightening: tighten the bounds of the layers after the first with LPs.
        per_class: untargeted, one problem per reachable class sharing the incumbent (the warm
            start's class first) instead of one problem with the argmax disjunction.
        l2_solver: "bnb" (branch and bound over the binaries with DAQP QP relaxations, the
            default: measured faster, see docs/results/linear_region.md) or "scip" (the MIQP
            in SCIP through pyscipopt, the ``mip`` extra).
        processes: worker processes (samples in parallel).

    Returns:
        A :class:`MinimalPerturbation` with one entry per sample.
    """
    p = parse_norm(norm, (1.0, 2.0, INF))
    check_positive(time_limit, "time_limit")
    check_positive(gap, "gap", allow_zero=True)
    if l2_solver not in ("bnb", "scip"):
        raise ValueError(f"l2_solver must be 'bnb' or 'scip', got {l2_solver!r}")
    if not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be an integer >= 1, got {processes!r}")
    clean = validate(model, inputs, labels)
    inputs = inputs.detach()
    with attack_mode(model):
        maps = affine_layers(model, tuple(inputs.shape[1:]))
        ours = torch.as_tensor(_forward(maps, inputs[0].reshape(-1).double().numpy()))
        if not torch.allclose(ours, clean[0].double(), rtol=1e-4, atol=1e-4):
            raise ValueError("the model's logits differ from the composition of its layers")
        if start is None:
            start, found = warm_start(model, inputs, labels, p, targeted)
        else:
            if start.shape != inputs.shape:
                raise ValueError(f"start must have the shape of inputs {tuple(inputs.shape)}")
            start = start.detach().to(inputs).clamp(0, 1)
            with torch.no_grad():
                found = is_adversarial(model(start), labels, targeted)
        done = is_adversarial(clean, labels, targeted)
        with torch.no_grad():
            start_classes = model(start).argmax(1).tolist()
        specs, where = [], []
        for i in range(inputs.shape[0]):
            if done[i]:
                continue
            x = inputs[i].reshape(-1).double().cpu().numpy()
            radius = _norm(start[i] - inputs[i], p) if found[i] else INF
            specs.append(
                _Spec(maps, x, int(labels[i]), bool(targeted), p, radius,
                      start[i].reshape(-1).double().numpy() if found[i] else None,
                      float(time_limit), float(gap), lp_tightening, per_class,
                      start_classes[i] if found[i] else None, l2_solver)
            )  # fmt: skip
            where.append(i)
        results = _run_all(specs, processes)
        return _collect(model, inputs, labels, targeted, p, start, found, done, where, results)


def _run_all(specs: list[_Spec], processes: int) -> list[dict]:
    if processes == 1 or len(specs) <= 1:
        return [solve_sample(s) for s in specs]
    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(processes, mp_context=context) as pool:
        return list(pool.map(solve_sample, specs))


def _collect(model, inputs, labels, targeted, p, start, found, done, where, results):
    n = inputs.shape[0]
    adversarials = inputs.clone()
    norms = torch.full((n,), INF, dtype=torch.float64)
    lower = torch.zeros(n, dtype=torch.float64)
    status = ["already_adversarial" if done[i] else "" for i in range(n)]
    seconds, nodes, binaries = [0.0] * n, [0] * n, [0] * n
    for i in done.nonzero().flatten().tolist():
        norms[i] = 0.0
    for i, res in zip(where, results):
        x = inputs[i].reshape(-1).double().cpu().numpy()
        best, best_norm = None, INF
        if found[i]:
            best, best_norm = start[i], _norm(start[i] - inputs[i], p)
        if res["z"] is not None:
            point = _verified(model, res["z"], x, int(labels[i]), targeted, inputs)
            if point is not None:
                point = point.reshape(inputs.shape[1:])
                value = _norm(point - inputs[i], p)
                if value < best_norm:
                    best, best_norm = point, value
        if best is not None:
            adversarials[i] = best
            norms[i] = best_norm
        lower[i] = min(res["lower"], best_norm) if res["solved"] else res["lower"]
        if res["infeasible"] and best is None:
            status[i], lower[i] = "no_adversarial", INF
        elif res["solved"] or res["infeasible"]:
            # infeasible with a warm start: nothing beats the warm start within the domain
            status[i] = "optimal"
            if res["infeasible"]:
                lower[i] = best_norm
        else:
            status[i] = "time_limit"
        seconds[i], nodes[i], binaries[i] = res["seconds"], res["nodes"], res["binaries"]
    return MinimalPerturbation(adversarials, norms, lower, status, seconds, nodes, binaries)


__all__ = ["MinimalPerturbation", "affine_layers", "minimal_perturbation", "solve_sample"]
