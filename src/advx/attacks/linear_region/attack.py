"""rLR-QP: the randomized linear-region attack (Croce & Hein, "A randomized gradient-free attack on
ReLU networks", GCPR 2018, Algorithm 1).

On every linear region Q(y) of a ReLU network the logits are affine, so the smallest perturbation
of x that reaches class l inside Q(y) is a convex program (Eq. (3): a QP for L2, an LP for L1 and
Linf). rLR-QP solves it on the region of x, then on regions of random points around the current
adversarials (exploration) and around the best one (local search).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .._core import (
    INF,
    NormLike,
    attack_mode,
    check_int,
    check_positive,
    contract,
    dual_exponent,
    is_adversarial,
    parse_norm,
    validate,
)
from ..ddn import ddn
from ..deepfool import deepfool
from .geometry import (
    ImplicitRegions,
    Region,
    activation_patterns,
    float64_layers,
    linear_regions,
    piecewise_linear_layers,
)
from .solvers import (
    DEFAULT_QP_SOLVER,
    FEASIBILITY_TOLERANCE,
    QP_SOLVERS,
    most_violated,
    solve_l2_generated,
    solve_region_problem,
)

EXTENSIONS = (0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3)
"""Relative lengthenings tried, in order, when a region solution (which lies on the decision
boundary) is not yet classified as the target class by the model in its own dtype."""
MEMORY_BUDGET = 2**28  # bytes of Jacobians per geometry chunk
BINARY_SEARCH_STEPS = 20
INITS = ("deepfool", "deepfool+ddn", "deepfool+classes")
WORKING_SET_ROWS = 200
"""L2 region problems with more halfspaces than this are solved by constraint generation
(``solve_l2``'s ``keep``; on networks without max pooling from ``ImplicitRegions``, which builds
only the rows asked for); chosen by measurement, see the README's linear-region section."""
DDN_STEPS = 1000  # the DDN warm start of init="deepfool+ddn"


@dataclass
class _Sample:
    """Algorithm 1's state for one sample."""

    x: np.ndarray  # (d,) float64
    source: int  # the class to leave (untargeted) or reach (targeted)
    classes: list[int]  # the target classes L
    best: np.ndarray | None = None  # best adversarial point z = x + delta
    u: float = INF  # its norm
    stack: list[np.ndarray] = field(default_factory=list)  # S: perturbations delta
    stack_norms: list[float] = field(default_factory=list)
    seeds: list[np.ndarray] = field(default_factory=list)  # further warm starts (perturbations)
    seen: set = field(default_factory=set)  # activation patterns already solved
    by_class: dict = field(default_factory=dict)  # target class -> (norm, point), its best
    regions: int = 0  # regions whose problems were set up
    solves: int = 0  # convex programs solved


@dataclass(frozen=True)
class _Settings:
    p: float
    targeted: bool
    alpha: float
    solver: str
    facets: int = 0


def _norm(delta: np.ndarray, p: float) -> float:
    if p == INF:
        return float(np.abs(delta).max()) if delta.size else 0.0
    return float(np.linalg.norm(delta, ord=p))


def _sample_ball(
    count: int, d: int, radius: Tensor, p: float, generator: torch.Generator | None
) -> Tensor:
    """``count`` points per row of ``radius`` (N,) in the Lp ball B(0, r), uniform in direction and
    uniform in radius (not uniform in the ball; Croce & Hein 2018, Sec. 4): (N, count, d)."""
    n = radius.shape[0]
    shape = (n, count, d)
    if p == 1:
        direction = -torch.log(torch.rand(shape, generator=generator, dtype=torch.float64))
        direction *= torch.randint(0, 2, shape, generator=generator).to(torch.float64) * 2 - 1
    elif p == INF:
        direction = torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1
    else:
        direction = torch.randn(shape, generator=generator, dtype=torch.float64)
    length = torch.linalg.vector_norm(direction, ord=p, dim=2, keepdim=True).clamp_min(1e-30)
    scale = torch.rand((n, count, 1), generator=generator, dtype=torch.float64)
    return direction / length * scale * radius.reshape(n, 1, 1)


def robustly_adversarial(logits: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    """Adversarial with a logit margin above 100 ulp of the logits' scale, so that the verdict
    does not flip with the rounding of another batch composition (points from the region
    programs lie on the decision boundary)."""
    eps = torch.finfo(logits.dtype).eps
    tol = 100 * eps * (1 + logits.abs().amax(1))
    chosen = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], -INF).amax(1)
    return chosen - others > tol if targeted else others - chosen > tol


# --------------------------------------------------------------------------- one region


def _decision_rows(region: Region, k: int, source: int, target: int, targeted: bool):
    """Halfspaces (rows, offsets) saying that ``target`` reaches the decision on the region's
    affine map: z_target >= z_source (untargeted, leaving ``source``), or z_target >= z_s for
    every s != target (targeted)."""
    v, a = region.logits_map[k], region.logits_offset[k]
    if not targeted:
        return (v[target] - v[source])[None], (a[target] - a[source])[None]
    others = [s for s in range(v.shape[0]) if s != target]
    return v[target][None] - v[others], a[target] - a[others]


def _hyperplane_bound(rows: np.ndarray, offsets: np.ndarray, x: np.ndarray, q: float) -> float:
    """A lower bound on the region problem: the Lp distance from x to the farthest of the decision
    halfspaces it violates (0 when x satisfies them all)."""
    values = rows @ x + offsets
    norms = np.linalg.norm(rows, ord=q, axis=1)
    gaps = np.where(values < 0, -values / np.maximum(norms, 1e-300), 0.0)
    return float(gaps.max()) if gaps.size else 0.0


def _solve_region(
    region: Region, k: int, sample: _Sample, threshold: float, settings: _Settings, check
) -> tuple[float, np.ndarray | None]:
    """Problem (2) on one region: the best over the target classes of problem (3). Classes whose
    decision-hyperplane distance is not below ``threshold`` are skipped (their solution could not
    change the attack's state). Returns (norm, point) of the best verified adversarial, or
    (inf, None)."""
    q = dual_exponent(settings.p)
    problems = []
    for target in sample.classes:
        rows, offs = _decision_rows(region, k, sample.source, target, settings.targeted)
        rows, offs = rows.numpy(), offs.numpy()
        bound = _hyperplane_bound(rows, offs, sample.x, q)
        problems.append((bound, target, rows, offs))
    problems.sort(key=lambda item: item[0])
    best_norm, best_point = INF, None
    for bound, target, rows, offs in problems:
        if bound >= min(threshold, best_norm):
            break
        z = _region_problem(region, k, sample.x, rows, offs, settings, min(threshold, best_norm))
        sample.solves += 1
        if z is None:
            continue
        z = check(z, sample, target)
        if z is not None:
            norm = _norm(z - sample.x, settings.p)
            if norm < sample.by_class.get(target, (INF,))[0]:
                sample.by_class[target] = (norm, z)
            if norm < best_norm:
                best_norm, best_point = norm, z
    return best_norm, best_point


def _region_problem(
    region: Region | ImplicitRegions,
    k: int,
    x: np.ndarray,
    rows: np.ndarray,
    offsets: np.ndarray,
    settings: _Settings,
    cutoff: float,
) -> np.ndarray | None:
    """Problem (3) on region k with the decision halfspaces (rows, offsets): from the explicit
    halfspaces of a ``Region``, or by constraint generation from an ``ImplicitRegions`` (L2)."""
    if isinstance(region, Region):
        matrix = region.halfspace_matrix[k].numpy()
        offset = region.halfspace_offset[k].numpy()
        return solve_region_problem(
            x, np.vstack([rows, matrix]), np.concatenate([offsets, offset]), settings.p,
            settings.solver, keep=len(rows) if len(matrix) > WORKING_SET_ROWS else None,
            cutoff=cutoff,
        )  # fmt: skip
    given = np.zeros(region.values_at_points.shape[1], dtype=bool)

    def violated(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = region.values(k, torch.as_tensor(z)).numpy()
        new = most_violated(values, -FEASIBILITY_TOLERANCE, given)
        given[new] = True
        found_rows, found_offsets = region.halfspaces(k, torch.as_tensor(new.nonzero()[0]))
        return found_rows.numpy(), found_offsets.numpy()

    return solve_l2_generated(x, rows, offsets, violated, settings.solver, cutoff=cutoff)


def _record(sample: _Sample, norm: float, point: np.ndarray, alpha: float) -> None:
    """Lines 16-18 of Algorithm 1: a better adversarial becomes the best; one within alpha of the
    best that beats the worst of the stack S replaces it."""
    if norm < sample.u:
        sample.best, sample.u = point, norm
    if not sample.stack:
        return
    worst = int(np.argmax(sample.stack_norms))
    if norm < alpha * sample.u and norm < sample.stack_norms[worst]:
        sample.stack[worst] = point - sample.x
        sample.stack_norms[worst] = norm


def _threshold(sample: _Sample, alpha: float) -> float:
    """The norm below which a region's solution changes the state (best or stack)."""
    if not sample.stack_norms:
        return sample.u
    return min(alpha * sample.u, max(sample.stack_norms))


# --------------------------------------------------------------------------- the search


class _Search:
    """Algorithm 1 for a batch: geometry batched over samples and points, one convex program per
    (region, target class) left after pruning."""

    def __init__(self, model: nn.Module, inputs: Tensor, settings: _Settings) -> None:
        self.model = model
        self.inputs = inputs
        self.shape = inputs.shape[1:]
        self.layers = float64_layers(model)
        self.settings = settings
        self.d = int(np.prod(self.shape))
        with torch.no_grad():
            units = activation_patterns(self.layers, inputs[:1].double().cpu()).shape[1]
        self.implicit = (
            settings.p == 2
            and units > WORKING_SET_ROWS
            and not any(isinstance(layer, nn.MaxPool2d) for layer in self.layers)
        )

    def check(self, z: np.ndarray, sample: _Sample, target: int) -> np.ndarray | None:
        """The region solution, lengthened by the least of ``EXTENSIONS`` that makes the model
        (in the inputs' dtype) reach ``target`` (targeted) or leave the source class with a
        margin above its rounding error (``robustly_adversarial``); None if none does."""
        delta = z - sample.x
        candidates = np.stack([np.clip(sample.x + (1 + e) * delta, 0, 1) for e in EXTENSIONS])
        batch = torch.as_tensor(candidates).to(self.inputs.dtype).reshape(-1, *self.shape)
        with torch.no_grad():
            logits = self.model(batch.to(self.inputs.device))
        labels = torch.full((len(EXTENSIONS),), sample.source, device=logits.device)
        ok = robustly_adversarial(logits, labels, self.settings.targeted).cpu().numpy()
        if not ok.any():
            return None
        return batch[int(np.argmax(ok))].reshape(-1).double().numpy()

    def _chunk(self, units: int) -> int:
        """Regions per geometry call: their Jacobians (d x (units + d) each) within the budget."""
        return max(1, MEMORY_BUDGET // (8 * self.d * (units + self.d)))

    def visit(self, samples: list[_Sample], points: list[list[np.ndarray]]) -> None:
        """Solve problem (2) on the regions of ``points[i]`` for sample i, in order, skipping
        regions already seen (by activation pattern) and updating the state after each."""
        owners, flat_points = [], []
        for i, pts in enumerate(points):
            owners.extend([i] * len(pts))
            flat_points.extend(pts)
        if not flat_points:
            return
        batch = torch.as_tensor(np.stack(flat_points)).reshape(-1, *self.shape)
        patterns = activation_patterns(self.layers, batch).numpy()
        fresh = []
        for j, owner in enumerate(owners):
            key = np.packbits(patterns[j]).tobytes()
            if key not in samples[owner].seen:
                samples[owner].seen.add(key)
                fresh.append(j)
        chunk = self._chunk(patterns.shape[1])
        for start in range(0, len(fresh), chunk):
            idx = fresh[start : start + chunk]
            region = self.regions(batch[idx])
            for k, j in enumerate(idx):
                sample = samples[owners[j]]
                sample.regions += 1
                norm, point = _solve_region(
                    region, k, sample, _threshold(sample, self.settings.alpha), self.settings,
                    self.check,
                )  # fmt: skip
                if point is not None:
                    _record(sample, norm, point, self.settings.alpha)

    def regions(self, points: Tensor) -> Region | ImplicitRegions:
        """The regions of ``points``: implicit (halfspaces on demand) for L2 on networks without
        max pooling whose hidden units outnumber ``WORKING_SET_ROWS``, explicit otherwise."""
        if self.implicit:
            return ImplicitRegions(self.layers, points)
        return linear_regions(self.layers, points)

    def radius(self, sample: _Sample, a1: int) -> float:
        """u / a1, or the box diameter when no adversarial is known yet."""
        u = sample.u if np.isfinite(sample.u) else _norm(np.ones(self.d), self.settings.p)
        return u / a1

    def around(
        self,
        samples: list[_Sample],
        centres: list[list[np.ndarray]],
        count: int,
        a1: int,
        generator: torch.Generator | None,
    ) -> list[list[np.ndarray]]:
        """``count`` random points around each centre (perturbations) of each sample, clipped to the
        box: x + centre + eps, eps uniform in direction and radius in B(0, u / a1)."""
        radii = torch.tensor([self.radius(s, a1) for s in samples], dtype=torch.float64)
        most = max(len(c) for c in centres)
        noise = _sample_ball(most * count, self.d, radii, self.settings.p, generator).numpy()
        out = []
        for i, sample in enumerate(samples):
            pts = []
            for c, centre in enumerate(centres[i]):
                eps = noise[i, c * count : (c + 1) * count]
                pts.extend(np.clip(sample.x + centre + eps, 0.0, 1.0))
            out.append(pts)
        return out

    def across_facets(self, samples: list[_Sample], count: int) -> list[list[np.ndarray]]:
        """For each sample with an adversarial: points just across the ``count`` facets of its best
        point's region nearest that point (the halfspaces A_j z + b_j >= 0 of the region, crossed
        along -A_j by their distance plus 1e-3 u), clipped to the box; each lies in a neighbouring
        region (the facet's unit flipped)."""
        owners = [i for i, s in enumerate(samples) if s.best is not None]
        out: list[list[np.ndarray]] = [[] for _ in samples]
        if not owners:
            return out
        best = np.stack([samples[i].best for i in owners])
        region = linear_regions(self.layers, torch.as_tensor(best).reshape(-1, *self.shape))
        for k, i in enumerate(owners):
            matrix = region.halfspace_matrix[k].numpy()
            lengths = np.linalg.norm(matrix, axis=1).clip(1e-300)
            gaps = (matrix @ best[k] + region.halfspace_offset[k].numpy()) / lengths
            step = 1e-3 * samples[i].u
            for j in np.argsort(gaps)[:count]:
                point = best[k] - (max(gaps[j], 0.0) + step) * matrix[j] / lengths[j]
                out[i].append(np.clip(point, 0.0, 1.0))
        return out


def _facet_descent(search: _Search, samples: list[_Sample], facets: int) -> None:
    """Our addition after Algorithm 1 (not in Croce & Hein 2018): a descent over neighbouring
    regions. The best point of a region's program usually lies on some of the region's facets,
    and the better point, if any, in a region across one of them; so the regions across the
    ``facets`` facets nearest the best point are solved, and again from each new best point,
    until no sample improves. Then the same descent from the best point of every other target
    class within alpha of the best (restricted to that class): the optimum may lie in another
    class's basin. Deterministic; the first descent solves every region at most once, each
    class's descent again at most once for its class."""
    _descend(search, [s for s in samples if s.best is not None], facets)
    alpha = search.settings.alpha
    subs, parents = [], []
    for s in samples:
        for target, (norm, point) in sorted(s.by_class.items()):
            if norm < alpha * s.u and norm > s.u:
                sub = _Sample(x=s.x, source=s.source, classes=[target], best=point, u=norm)
                subs.append(sub)
                parents.append(s)
    _descend(search, subs, facets)
    for sub, parent in zip(subs, parents):
        parent.regions += sub.regions
        parent.solves += sub.solves
        if sub.u < parent.u:
            parent.best, parent.u = sub.best, sub.u


def _descend(search: _Search, active: list[_Sample], facets: int) -> None:
    """Solve the regions across the ``facets`` facets nearest each sample's best point, again
    from every better point, until none improves."""
    while active and facets > 0:
        before = [s.u for s in active]
        search.visit(active, search.across_facets(active, facets))
        active = [s for s, u in zip(active, before) if s.u < u]


def _algorithm1(
    search: _Search,
    samples: list[_Sample],
    n1: int,
    n2: int,
    n3: int,
    n4: int,
    generator: torch.Generator | None,
) -> None:
    """Croce & Hein (2018), Algorithm 1, for all samples at once (the state is per sample)."""
    search.visit(samples, [[s.x] for s in samples])  # line 1: the region of x (before S exists)
    for s in samples:  # line 3: S holds n1 copies of the best perturbation (after the seeds:
        # every other warm start, also beyond alpha u, so the exploration visits their basins;
        # on mnist-n2 keeping only those within alpha u lost an image's optimum, 35% faster)
        delta = s.best - s.x if s.best is not None else np.zeros_like(s.x)
        seeds = s.seeds[: n1 - 1]
        s.stack = [seed.copy() for seed in seeds] + [delta.copy() for _ in range(n1 - len(seeds))]
        s.stack_norms = [_norm(seed, search.settings.p) for seed in seeds]
        s.stack_norms += [s.u] * (n1 - len(seeds))
    for a1 in range(1, n4 + 1):
        for _ in range(n3):  # exploration around every member of S
            centres = [list(s.stack) for s in samples]
            search.visit(samples, search.around(samples, centres, n2, a1, generator))
        for _ in range(n2):  # local search around the best
            centres = [[(s.best - s.x) if s.best is not None else 0 * s.x] for s in samples]
            search.visit(samples, search.around(samples, centres, 1, a1, generator))


# --------------------------------------------------------------------------- warm start


def _adversarial(model: nn.Module, x: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    with torch.no_grad():
        return is_adversarial(model(x), labels, targeted)


def _bisect(model: nn.Module, start: Tensor, end: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    """The point of [start, end] nearest start that is still adversarial, by bisection on the
    segment's parameter (end must be adversarial; Croce & Hein 2018, Sec. 5, the binary search
    from x to the DeepFool point). Points count as adversarial only with a margin above the
    logits' rounding (``robustly_adversarial``), so the warm start stays adversarial when the
    model is evaluated on another batch (a bare argmax flip at the boundary did not, and the MIP
    then lost its incumbent)."""
    view = (-1,) + (1,) * (start.dim() - 1)
    lo = torch.zeros(start.shape[0], dtype=start.dtype, device=start.device)
    hi = torch.ones_like(lo)
    for _ in range(BINARY_SEARCH_STEPS):
        mid = (lo + hi) / 2
        with torch.no_grad():
            logits = model(start + mid.reshape(view) * (end - start))
        ok = robustly_adversarial(logits, labels, targeted)
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid)
    return start + hi.reshape(view) * (end - start)


def warm_start(
    model: nn.Module, inputs: Tensor, labels: Tensor, p: float, targeted: bool
) -> tuple[Tensor, Tensor]:
    """DeepFool (L2, or Linf for p = inf), then a binary search from x to the boundary along the
    DeepFool perturbation; where DeepFool fails, the same search along the segment from x to the
    origin (Croce & Hein 2018, Sec. 5). Returns (points, found)."""
    df = deepfool(model, inputs, labels, norm=INF if p == INF else 2, targeted=targeted)
    found = _adversarial(model, df, labels, targeted)
    origin = torch.zeros_like(inputs)
    to_origin = _adversarial(model, origin, labels, targeted) & ~found
    end = torch.where(found.reshape(-1, *[1] * (inputs.dim() - 1)), df, origin)
    usable = found | to_origin
    points = inputs.clone()
    if usable.any():
        points[usable] = _bisect(model, inputs[usable], end[usable], labels[usable], targeted)
    return points, usable


def ddn_start(
    model: nn.Module, inputs: Tensor, labels: Tensor, targeted: bool
) -> tuple[Tensor, Tensor]:
    """DDN (Rony et al., CVPR 2019; ``DDN_STEPS`` iterations, L2) followed by the same binary
    search from x to the boundary as ``warm_start``: the second warm start of
    ``init="deepfool+ddn"``. Returns (points, found)."""
    end = ddn(model, inputs, labels, targeted=targeted, steps=DDN_STEPS)
    found = _adversarial(model, end, labels, targeted)
    points = inputs.clone()
    if found.any():
        points[found] = _bisect(model, inputs[found], end[found], labels[found], targeted)
    return points, found


def class_starts(
    model: nn.Module, inputs: Tensor, labels: Tensor, p: float, num_classes: int
) -> list[tuple[Tensor, Tensor]]:
    """One warm start per class c: targeted DeepFool towards c (L2, or Linf for p = inf), then
    the binary search from x to the boundary of c along it; for ``init="deepfool+classes"``.
    Returns [(points, found)] per class (not found where c is the label or DeepFool fails)."""
    out = []
    for c in range(num_classes):
        target = torch.full_like(labels, c)
        found = torch.zeros_like(labels, dtype=torch.bool)
        points = inputs.clone()
        rows = labels != c
        if rows.any():
            df = deepfool(model, inputs[rows], labels[rows], norm=INF if p == INF else 2,
                          target=target[rows])  # fmt: skip
            reached = _adversarial(model, df, target[rows], True)
            found[rows] = reached
            if reached.any():
                idx = rows.nonzero().flatten()[reached]
                points[idx] = _bisect(model, inputs[idx], df[reached], target[idx], True)
        out.append((points, found))
    return out


def _starts(
    model: nn.Module, inputs: Tensor, labels: Tensor, init: str | Tensor, p: float, targeted: bool
) -> list[tuple[Tensor, Tensor]]:
    """The warm starts (points, found) that ``init`` names, the paper's DeepFool start first."""
    if isinstance(init, Tensor):
        if init.shape != inputs.shape:
            raise ValueError(f"init must have the shape of inputs {tuple(inputs.shape)}")
        start = init.detach().to(inputs).clamp(0, 1)
        return [(start, _adversarial(model, start, labels, targeted))]
    starts = [warm_start(model, inputs, labels, p, targeted)]
    if init == "deepfool+ddn":
        starts.append(ddn_start(model, inputs, labels, targeted))
    if init == "deepfool+classes" and not targeted:
        with torch.no_grad():
            num_classes = model(inputs[:1]).shape[1]
        starts += class_starts(model, inputs, labels, p, num_classes)
    return starts


# --------------------------------------------------------------------------- public API


def _classes_for(
    source: int, num_classes: int, target_classes: str, start_class: int | None, targeted: bool
) -> list[int]:
    if targeted:
        return [source]
    if target_classes == "init" and start_class is not None and start_class != source:
        return [start_class]
    return [c for c in range(num_classes) if c != source]


def _check_arguments(n1, n2, n3, n4, alpha, init, target_classes, applications, solver) -> None:
    for name, value in (("n1", n1), ("n2", n2), ("n3", n3), ("n4", n4)):
        check_int(value, name, 1)
    check_int(applications, "applications", 1)
    check_positive(alpha, "alpha")
    if alpha < 1:
        raise ValueError(f"alpha must be >= 1, got {alpha!r}")
    if not (isinstance(init, Tensor) or (isinstance(init, str) and init in INITS)):
        raise ValueError(
            f"init must be one of {INITS} or a tensor of starting points, got {init!r}"
        )
    if target_classes not in ("all", "init"):
        raise ValueError(f"target_classes must be 'all' or 'init', got {target_classes!r}")
    if solver not in QP_SOLVERS:
        raise ValueError(f"solver must be one of {QP_SOLVERS}, got {solver!r}")


def _seeded_sample(x: np.ndarray, source: int, starts, i: int, classes_of, p: float) -> _Sample:
    """Sample i's state from the warm starts [(flat points, found, classes)]: the nearest
    adversarial start is the best (its class gives 'init' target classes), the others seeds."""
    usable = [(pts[i], cls[i]) for pts, ok, cls in starts if ok[i]]
    usable.sort(key=lambda item: _norm(item[0] - x, p))
    sample = _Sample(x=x, source=source, classes=classes_of(usable[0][1] if usable else None))
    if usable:
        sample.best, sample.u = usable[0][0], _norm(usable[0][0] - x, p)
        sample.seeds = [point - x for point, _ in usable[1:]]
    for point, cls in reversed(usable):  # each class's nearest start
        sample.by_class[cls] = (_norm(point - x, p), point)
    return sample


def _one_application(
    model, inputs, labels, starts, settings, target_classes, n, generator, stats
) -> Tensor:
    num_classes = stats["num_classes"]
    flat = inputs.reshape(inputs.shape[0], -1).double().cpu().numpy()
    flat_starts = []
    for start, found in starts:
        with torch.no_grad():
            start_classes = model(start).argmax(1).tolist()
        points = start.reshape(start.shape[0], -1).double().cpu().numpy()
        flat_starts.append((points, found.tolist(), start_classes))
    samples, where = [], []
    for i in range(inputs.shape[0]):
        if stats["clean_adversarial"][i]:
            continue
        source = int(labels[i])

        def classes_of(start_class, source=source):
            return _classes_for(source, num_classes, target_classes, start_class, settings.targeted)

        samples.append(_seeded_sample(flat[i], source, flat_starts, i, classes_of, settings.p))
        where.append(i)
    out = inputs.clone()
    if samples:
        search = _Search(model, inputs, settings)
        _algorithm1(search, samples, *n, generator)
        _facet_descent(search, samples, settings.facets)
        for i, sample in zip(where, samples):
            if sample.best is not None:
                out[i] = torch.as_tensor(sample.best).reshape(inputs.shape[1:]).to(inputs)
            stats["regions"][i] += sample.regions
            stats["solves"][i] += sample.solves
    return out


@contract
def linear_region(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    norm: NormLike = 2,
    targeted: bool = False,
    n1: int = 10,
    n2: int = 10,
    n3: int = 5,
    n4: int = 3,
    alpha: float = 1.5,
    init: str | Tensor = "deepfool",
    target_classes: str = "all",
    applications: int = 1,
    solver: str = DEFAULT_QP_SOLVER,
    facets: int = 30,
    generator: torch.Generator | None = None,
    stats: dict | None = None,
) -> Tensor:
    """rLR-QP, the randomized linear-region attack (Croce & Hein, "A randomized gradient-free
    attack on ReLU networks", GCPR 2018, Algorithm 1), minimal-norm, for L1, L2 and Linf.

    On the linear region Q(y) of a point y the logits are affine, V z + a (Sec. 2), so the
    smallest perturbation reaching class l within Q(y) and the box is the convex program (3), and
    problem (2) takes the best over the target classes L. The attack solves (2) on Q(x), keeps
    the better of that and the warm start (DeepFool plus a binary search to the boundary, or a
    search towards the origin where DeepFool fails), and for a1 = 1..n4: n3 exploration steps
    (n2 random points around each of the n1 stored adversarials S_i, radius u / a1; a solution
    within ``alpha`` of the best replaces the worst of S) and n2 local-search points around the
    best. Random offsets are uniform in direction and uniform in radius. A region (activation
    pattern) is never solved twice, and a class is skipped when its decision-hyperplane distance,
    a lower bound on its problem, is not below the norm that could still change the state
    (min(alpha u, max ||S_i||); u alone before S exists). At most
    1 + (n1 n3 + 1) n2 n4 regions are visited per application by Algorithm 1; then, our addition
    (``facets``), a descent over the regions across the facets nearest the best point
    (``_facet_descent``) until it stops improving.

    Args:
        model: a piecewise-linear network (Linear, Conv2d, ReLU, Flatten, AvgPool2d, MaxPool2d,
            eval-mode BatchNorm, Dropout); other layers raise TypeError naming them.
        inputs: (N, ...) images in [0, 1].
        labels: (N,) true classes, or target classes with ``targeted=True``.
        norm: 1, 2 (QPs, ``solver``) or inf (LPs with HiGHS); L1 and L2 start from L2 DeepFool.
        targeted: reach ``labels`` instead of leaving them.
        n1, n2, n3, n4, alpha: Algorithm 1's hyperparameters (the paper's defaults).
        init: "deepfool" (the paper's warm start), "deepfool+ddn" (our addition: also DDN,
            ``ddn_start``; the nearer adversarial start is the best and the other seeds the
            stored set S, so the exploration starts around both), "deepfool+classes" (our
            addition: also a targeted DeepFool start towards every other class, ``class_starts``;
            they seed S, and the facet descent runs again from each class's best point within
            alpha of the best, restricted to that class), or a tensor of starting points
            (adversarial ones are used as the warm start without the binary search; others are
            ignored).
        target_classes: "all" classes other than the label, or "init", the class of the warm
            start only (the paper's setting for deep networks).
        applications: run the attack this many times, each from the previous output with the
            target class restricted to the output's class (Table 3).
        solver: the QP solver (``qpsolvers`` name) for L2.
        facets: after Algorithm 1, solve the regions across this many facets nearest the best
            point, and repeat from each better point (0: Algorithm 1 alone, as in the paper).
        generator: torch.Generator for the random points.
        stats: if a dict, receives per-sample counts "regions" and "solves".

    Returns:
        The adversarial examples (shape, dtype and device of ``inputs``); the original input where
        none was found or where it is already adversarial.
    """
    p = parse_norm(norm, (1.0, 2.0, INF))
    _check_arguments(n1, n2, n3, n4, alpha, init, target_classes, applications, solver)
    check_int(facets, "facets", 0)
    clean_logits = validate(model, inputs, labels)
    piecewise_linear_layers(model)  # TypeError naming an unsupported layer, before any work
    inputs = inputs.detach()
    settings = _Settings(
        p=p, targeted=bool(targeted), alpha=float(alpha), solver=solver, facets=facets
    )
    record = {
        "num_classes": clean_logits.shape[1],
        "clean_adversarial": is_adversarial(clean_logits, labels, targeted).tolist(),
        "regions": [0] * inputs.shape[0],
        "solves": [0] * inputs.shape[0],
    }
    with attack_mode(model):
        starts = _starts(model, inputs, labels, init, p, settings.targeted)
        classes = target_classes
        for _ in range(applications):
            start = _one_application(
                model, inputs, labels, starts, settings, classes, (n1, n2, n3, n4), generator,
                record,
            )  # fmt: skip
            starts = [(start, _adversarial(model, start, labels, targeted))]
            classes = "init"
    if stats is not None:
        stats.update({"regions": record["regions"], "solves": record["solves"]})
    return start.detach()


__all__ = ["class_starts", "ddn_start", "linear_region", "warm_start"]
