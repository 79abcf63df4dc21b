"""The convex program of one linear region (Croce & Hein 2018, Eq. (3)): the point z closest to x
in the Lp norm with ``A z + b >= 0`` (decision and region halfspaces) and ``0 <= z <= 1``.

p = 2 is a QP, solved through ``qpsolvers`` (DAQP by default, chosen by measurement on our own
region problems, see docs/results/linear_region.md); p = 1 and p = inf are LPs solved with HiGHS
(through ``scipy.optimize.linprog``).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

INF = float("inf")
QP_SOLVERS = ("daqp", "proxqp", "piqp", "clarabel", "osqp")
DEFAULT_QP_SOLVER = "daqp"
ROWS_PER_ROUND = 15
"""Constraint generation adds at most this many of the most violated halfspaces per round
(chosen by measurement, see the README's linear-region section)."""
BOX_ROUNDS = 10
"""Rounds of the box presolve of ``_solve_qp`` (guess the active bounds, verify, free the wrong
ones) before the full QP is solved instead."""
BOX_TOLERANCE = 1e-9
"""A pixel fixed at a bound stays fixed while the unconstrained optimum given the halfspaces'
multipliers lies beyond the bound by more than -BOX_TOLERANCE."""
FEASIBILITY_TOLERANCE = 1e-6
"""A solution violating a halfspace by more than this (relative to the row's scale) or the box by
more than 1e-9 is rejected as not solved."""


def _feasible(z: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> bool:
    if z is None or not np.all(np.isfinite(z)):
        return False
    if z.min() < -1e-7 or z.max() > 1 + 1e-7:
        return False
    scale = np.abs(matrix).sum(1) + np.abs(offset) + 1.0
    return bool(np.all(matrix @ z + offset >= -FEASIBILITY_TOLERANCE * scale))


def _solve_qp(x: np.ndarray, matrix: np.ndarray, offset: np.ndarray, solver: str):
    """min 1/2 z'z - x'z s.t. matrix z + offset >= 0, 0 <= z <= 1 with ``solver``; the solver's
    point (unchecked) or None.

    The box is presolved by guessing its active set and verifying the guess (exact; our
    addition): an image's region QP has hundreds of active bounds (its black or white pixels
    pushed outwards), and DAQP's active-set method spends an iteration on each (319 iterations
    and 31 ms on an mnist-n2 region, against 5 iterations without the box). So the pixels whose
    unconstrained optimum leaves [0, 1] are fixed at the bound (``_box_guess``), the QP is solved
    in the others with their box, and the fixed pixels are checked against the multipliers of
    the halfspaces: a pixel fixed at 0 (1) is optimal iff x + matrix' lambda <= 0 (>= 1) there.
    Pixels that fail are freed and the QP solved again; after ``BOX_ROUNDS`` rounds, or when a
    reduced QP fails, the full QP is solved instead."""
    guess = _box_guess(x, matrix, offset, solver)
    if guess is not None:
        low, high = guess
        for _ in range(BOX_ROUNDS):
            free = ~(low | high)
            if not free.any():
                break
            z = np.where(high, 1.0, 0.0)
            reduced_offset = offset + matrix[:, ~free] @ z[~free]
            point, duals = _qp(x[free], matrix[:, free], reduced_offset, solver, box=True)
            if point is None or duals is None:
                break
            z[free] = point
            unconstrained = x + matrix.T @ duals
            inside = free & (z > BOX_TOLERANCE) & (z < 1.0 - BOX_TOLERANCE)
            if np.abs(z - unconstrained)[inside].max(initial=0.0) > 1e-6:
                break  # multipliers not as qpsolvers documents them: trust only the full QP
            wrong_low = low & (unconstrained > BOX_TOLERANCE)
            wrong_high = high & (unconstrained < 1.0 - BOX_TOLERANCE)
            if not (wrong_low.any() or wrong_high.any()):
                return z
            low, high = low & ~wrong_low, high & ~wrong_high
    return _qp(x, matrix, offset, solver, box=True)[0]


def _box_guess(x, matrix, offset, solver) -> tuple[np.ndarray, np.ndarray] | None:
    """The pixels below 0 and above 1 at the optimum without the box (lower, upper masks), or
    None when that QP fails."""
    _, duals = _qp(x, matrix, offset, solver, box=False)
    if duals is None:
        return None
    unconstrained = x + matrix.T @ duals
    return unconstrained < 0.0, unconstrained > 1.0


@functools.lru_cache(maxsize=4)
def _identity(d: int) -> np.ndarray:
    """The dense Hessian of every region QP of size d, built once (allocating a fresh 784 x 784
    identity for each of the thousands of QPs took a tenth of rLR-QP's time). DAQP and ProxQP
    take it as an input and leave it unchanged (a test checks this)."""
    return np.eye(d)


def _qp(x, matrix, offset, solver: str, *, box: bool):
    """min 1/2 z'z - x'z s.t. matrix z + offset >= 0 (and 0 <= z <= 1 with ``box``) through
    ``qpsolvers``: (point, multipliers of the halfspaces), (None, None) on failure."""
    import qpsolvers

    d = x.shape[0]
    dense = solver in ("proxqp", "daqp")
    hessian = _identity(d) if dense else sp.identity(d, format="csc")
    constraints = -matrix if dense else sp.csc_matrix(-matrix)
    bounds = {"lb": np.zeros(d), "ub": np.ones(d)} if box else {}
    problem = qpsolvers.Problem(hessian, -x, constraints, offset, **bounds)
    try:
        solution = qpsolvers.solve_problem(problem, solver=solver, **_qp_options(solver))
    except Exception:  # solver failures (numerical errors) count as not solved
        return None, None
    if not solution.found or solution.x is None:
        return None, None
    return solution.x, solution.z


def solve_l2(
    x: np.ndarray,
    matrix: np.ndarray,
    offset: np.ndarray,
    solver: str = DEFAULT_QP_SOLVER,
    *,
    keep: int | None = None,
    cutoff: float = INF,
) -> np.ndarray | None:
    """argmin ||z - x||_2 s.t. matrix z + offset >= 0, 0 <= z <= 1 (Eq. (3), p = 2) as the QP
    min 1/2 z'z - x'z; None when infeasible, when the solver fails, or when the optimum is not
    below ``cutoff``.

    With ``keep`` rows (the first ``keep``, the decision halfspaces) the QP is solved by
    constraint generation: on those rows and the box first, then with every row the last
    solution violated added, until none is violated. Each round's optimum is a lower bound on
    the full problem's (its feasible set is larger), so the loop stops as soon as it reaches
    ``cutoff``; the final point is the full problem's optimum, since it is optimal for a
    relaxation and feasible. A region of a wide network has one halfspace per hidden unit, of
    which few are active at the optimum (measured in docs/results/linear_region.md).

    Args:
        x: (d,) the original point.
        matrix: (m, d) halfspace normals; offset: (m,).
        solver: a ``qpsolvers`` name (one of ``QP_SOLVERS``).
        keep: the rows to start from (None: all rows at once, one QP).
        cutoff: a norm the caller has no use for reaching (its best so far).
    """
    if keep is None:
        return _checked(x, _solve_qp(x, matrix, offset, solver), matrix, offset, cutoff)
    scale = np.abs(matrix).sum(1) + np.abs(offset) + 1.0
    working = np.zeros(matrix.shape[0], dtype=bool)
    working[:keep] = True

    def violated(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        new = most_violated((matrix @ z + offset) / scale, -FEASIBILITY_TOLERANCE, working)
        working[new] = True
        return matrix[new], offset[new]

    z = solve_l2_generated(x, matrix[:keep], offset[:keep], violated, solver, cutoff=cutoff)
    return _checked(x, z, matrix, offset, cutoff)


def most_violated(values: np.ndarray, floor: float, given: np.ndarray) -> np.ndarray:
    """Mask of the halfspaces not ``given`` whose ``values`` lie below ``floor``: the
    ``ROWS_PER_ROUND`` smallest of them."""
    candidates = np.flatnonzero((values < floor) & ~given)
    if len(candidates) > ROWS_PER_ROUND:
        candidates = candidates[np.argsort(values[candidates])[:ROWS_PER_ROUND]]
    mask = np.zeros_like(given)
    mask[candidates] = True
    return mask


def solve_l2_generated(
    x: np.ndarray,
    rows: np.ndarray,
    offsets: np.ndarray,
    violated,
    solver: str = DEFAULT_QP_SOLVER,
    *,
    cutoff: float = INF,
) -> np.ndarray | None:
    """Problem (3), p = 2, by constraint generation when the region's halfspaces are produced on
    demand: solve on ``rows z + offsets >= 0`` and the box, ask ``violated(z)`` for the
    halfspaces the solution violates (rows, offsets; none left: z is the optimum), add them,
    repeat. Each round's optimum is a lower bound on the full problem's, so the loop returns None
    as soon as it reaches ``cutoff``; also None when a round is infeasible or the solver fails.

    Args:
        x: (d,) the original point.
        rows, offsets: the halfspaces to start from (the decision halfspaces).
        violated: z -> (rows (m, d), offsets (m,)) of halfspaces z violates, not given before.
        solver: a ``qpsolvers`` name (one of ``QP_SOLVERS``).
        cutoff: a norm the caller has no use for reaching (its best so far).
    """
    while True:
        z = _solve_qp(x, rows, offsets, solver)
        if z is None:
            return None
        z = np.clip(z, 0.0, 1.0)
        if np.linalg.norm(z - x) >= cutoff:
            return None
        new_rows, new_offsets = violated(z)
        if len(new_rows) == 0:
            return z
        rows, offsets = np.vstack([rows, new_rows]), np.concatenate([offsets, new_offsets])


def _checked(x, z, matrix, offset, cutoff) -> np.ndarray | None:
    """z clipped to the box if it is feasible and nearer x than ``cutoff``, else None."""
    if z is None:
        return None
    z = np.clip(z, 0.0, 1.0)
    if not _feasible(z, matrix, offset) or np.linalg.norm(z - x) >= cutoff:
        return None
    return z


def _qp_options(solver: str) -> dict:
    if solver == "proxqp":
        return {"eps_abs": 1e-9, "eps_rel": 0.0, "backend": "dense"}
    if solver == "piqp":
        return {"eps_abs": 1e-9, "eps_rel": 1e-10}
    if solver == "osqp":
        return {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iter": 20000, "polishing": True}
    if solver == "clarabel":
        return {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}
    return {}


def solve_linf(x: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray | None:
    """argmin ||z - x||_inf s.t. matrix z + offset >= 0, 0 <= z <= 1 (Eq. (3), p = inf) as the
    LP min t s.t. |z_i - x_i| <= t, solved with HiGHS; None when infeasible.

    Args:
        x: (d,) the original point.
        matrix: (m, d) halfspace normals; offset: (m,).
    """
    d = x.shape[0]
    eye = sp.identity(d, format="csr")
    ones = sp.csr_matrix(np.ones((d, 1)))
    rows = sp.vstack(
        [
            sp.hstack([sp.csr_matrix(-matrix), sp.csr_matrix((matrix.shape[0], 1))]),
            sp.hstack([eye, -ones]),
            sp.hstack([-eye, -ones]),
        ],
        format="csr",
    )
    rhs = np.concatenate([offset, x, -x])
    cost = np.zeros(d + 1)
    cost[-1] = 1.0
    bounds = np.column_stack([np.r_[np.zeros(d), 0.0], np.r_[np.ones(d), 1.0]])
    res = linprog(cost, A_ub=rows, b_ub=rhs, bounds=bounds, method="highs")
    if res.status != 0:
        return None
    z = np.clip(res.x[:d], 0.0, 1.0)
    return z if _feasible(z, matrix, offset) else None


def solve_l1(x: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray | None:
    """argmin ||z - x||_1 s.t. matrix z + offset >= 0, 0 <= z <= 1 (Eq. (3), p = 1) as the LP in
    z = x + u - v, u in [0, 1 - x], v in [0, x], min sum(u + v), solved with HiGHS.

    Args:
        x: (d,) the original point.
        matrix: (m, d) halfspace normals; offset: (m,).
    """
    d = x.shape[0]
    rows = np.hstack([-matrix, matrix])
    rhs = matrix @ x + offset
    bounds = np.column_stack([np.zeros(2 * d), np.r_[1.0 - x, x]])
    res = linprog(np.ones(2 * d), A_ub=rows, b_ub=rhs, bounds=bounds, method="highs")
    if res.status != 0:
        return None
    z = np.clip(x + res.x[:d] - res.x[d:], 0.0, 1.0)
    return z if _feasible(z, matrix, offset) else None


def solve_region_problem(
    x: np.ndarray,
    matrix: np.ndarray,
    offset: np.ndarray,
    p: float,
    solver: str | None = None,
    *,
    keep: int | None = None,
    cutoff: float = INF,
) -> np.ndarray | None:
    """The Lp-closest point to x in {matrix z + offset >= 0} within [0, 1]^d (Eq. (3)).

    Args:
        x: (d,) the original point.
        matrix: (m, d) halfspace normals; offset: (m,).
        p: 1, 2 or inf.
        solver: the QP solver for p = 2 (``qpsolvers`` name; default DAQP).
        keep, cutoff: p = 2 only, constraint generation from the first ``keep`` rows and the
            early stop at ``cutoff`` (``solve_l2``).
    """
    if p == 2:
        return solve_l2(x, matrix, offset, solver or DEFAULT_QP_SOLVER, keep=keep, cutoff=cutoff)
    if p == INF:
        return solve_linf(x, matrix, offset)
    if p == 1:
        return solve_l1(x, matrix, offset)
    raise ValueError(f"norm must be 1, 2 or inf; got {p!r}")


__all__ = [
    "DEFAULT_QP_SOLVER",
    "most_violated",
    "solve_l2_generated",
    "QP_SOLVERS",
    "solve_l1",
    "solve_l2",
    "solve_linf",
    "solve_region_problem",
]
