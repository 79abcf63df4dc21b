"""ZOO: zeroth-order optimisation black-box attacks (Chen, Zhang, Sharma, Yi & Hsieh, AISec
2017; P.-Y. Chen's thesis, ch. 3, Algorithms 2 and 3).

The C&W L2 objective ||x - x0||^2 + c * f(x) with the score-only loss f of Eq. 10-11 on
log-probabilities is minimised by stochastic coordinate descent: per iteration B coordinates of
the perturbation are chosen, their partial derivatives (and second derivatives) are estimated
with symmetric differences (Eq. 12-13), and each coordinate takes an Adam or a Newton step.
Only :class:`advx.blackbox.QueryModel` touches the model (no gradients, every query counted).

Batched: the 2B + 1 probes of every image still being attacked go through the model together
(QueryModel splits them in chunks of its ``batch_size``); there is no Python loop over
coordinates or samples. Random coordinates come from per-sample counter-based streams
(:mod:`advx.blackbox._random`), so a sample gets the same result alone or in a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..blackbox import _random
from ..blackbox.query import QueryModel, as_query_model, to_log_probabilities
from ._core import (
    attack_mode,
    binary_search_step,
    check_inputs,
    check_int,
    check_labels,
    check_logits,
    check_positive,
    contract,
    flat,
    margin,
    update_best,
)
from .cw import cw_success, to_tanh_space

SOLVERS = ("adam", "newton")
BOXES = ("clip", "tanh")
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
_NO_BOUND = 1e10
_IMPORTANCE_GRID = 8  # the image is divided into 8 x 8 regions (thesis Sec. 3.2.4)
_NEWTON_HESSIAN_FLOOR = 0.1
_PROBE_ROWS = 16384  # probes built at once (memory bound); QueryModel chunks the model calls


# ------------------------------------------------------------------ attack space (Sec. 3.2.2)


def _size_pair(size, name: str) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)
    ):
        raise ValueError(f"{name} must be an integer or a pair (height, width) >= 1, got {size!r}")
    return int(size[0]), int(size[1])


def upscale(y: Tensor, size: tuple[int, int]) -> Tensor:
    """D(y): the attack-space perturbation (N, C, h, w) resized bilinearly to the image size
    (thesis Sec. 3.2.2, Eq. 14); the identity when the sizes agree."""
    if tuple(y.shape[-2:]) == tuple(size):
        return y
    return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


def interpolation_matrix(n_in: int, n_out: int, dtype=torch.float64, device=None) -> Tensor:
    """(n_out, n_in) matrix A of 1-D linear interpolation from n_in to n_out samples, so that
    bilinear ``upscale`` is y -> A_h y A_w^T."""
    eye = torch.eye(n_in, dtype=dtype, device=device)[:, None, :]
    if n_in == n_out:
        return eye[:, 0, :].T.contiguous()
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[:, 0, :].T


def downscale(delta: Tensor, size: tuple[int, int]) -> Tensor:
    """D^{-1}(delta): the least-squares inverse of ``upscale`` to attack size ``size``
    (pseudo-inverses of the separable interpolation matrices), as used by the hierarchical
    attack's y_j = D_i^{-1}(D_{i-1}(y_{j-1})) (thesis Sec. 3.2.3)."""
    height, width = delta.shape[-2:]
    if (height, width) == tuple(size):
        return delta
    a_h = interpolation_matrix(size[0], height, torch.float64, delta.device)
    a_w = interpolation_matrix(size[1], width, torch.float64, delta.device)
    p_h, p_w = torch.linalg.pinv(a_h), torch.linalg.pinv(a_w)
    return (p_h @ delta.to(torch.float64) @ p_w.T).to(delta.dtype)


def importance_weights(y: Tensor) -> Tensor:
    """Sampling probabilities of the attack-space coordinates (thesis Sec. 3.2.4): |y| max-pooled
    per channel over an 8 x 8 grid of regions, upsampled (nearest) back to the attack size and
    normalised to sum to 1 per sample. A sample whose perturbation is still zero gets uniform
    probabilities. Returns (N, C * h * w)."""
    pooled = F.adaptive_max_pool2d(y.abs(), _IMPORTANCE_GRID)
    weights = flat(F.interpolate(pooled, size=y.shape[-2:], mode="nearest"))
    total = weights.sum(1, keepdim=True)
    uniform = torch.full_like(weights, 1.0 / weights.shape[1])
    return torch.where(total > 0, weights / total.clamp_min(1e-30), uniform)


def choose_coordinates(
    seeds: Tensor, counter: int, dims: int, count: int, weights: Tensor | None = None
) -> Tensor:
    """(N, count) distinct coordinates per sample, uniformly or with probabilities ``weights``
    (N, dims) without replacement (Efraimidis & Spirakis 2006: the largest log(u) / w)."""
    u = _random.uniform(seeds, counter, dims)
    if weights is None:
        return u.topk(count, dim=1).indices
    keys = torch.where(weights > 0, u.log() / weights.to(torch.float64).cpu(), -float("inf"))
    return keys.topk(count, dim=1).indices


# ------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class _Settings:
    targeted: bool
    solver: str
    coordinates: int
    h: float
    lr: float
    steps: int
    confidence: float
    abort_early: bool
    box: str
    start_size: tuple[int, int] | None
    hierarchy: tuple[tuple[int, tuple[int, int]], ...]
    importance_sampling: bool
    reset_adam: bool


def _check_hierarchy(hierarchy, start: tuple[int, int] | None, image: tuple[int, int] | None):
    if not isinstance(hierarchy, (tuple, list)):
        raise ValueError(
            f"hierarchy must be a sequence of (iteration, size) pairs, got {hierarchy!r}"
        )
    if hierarchy and start is None:
        raise ValueError(
            "hierarchy needs image inputs (N, C, H, W) and an attack_size to start from"
        )
    schedule, last_iteration, last_size = [], 0, start
    for entry in hierarchy:
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise ValueError(f"hierarchy entries must be (iteration, size) pairs, got {entry!r}")
        iteration, size = entry
        if (
            not isinstance(iteration, int)
            or isinstance(iteration, bool)
            or iteration <= last_iteration
        ):
            raise ValueError("hierarchy iterations must be increasing integers >= 1")
        size = _size_pair(size, "hierarchy size")
        if size[0] < last_size[0] or size[1] < last_size[1] or size == last_size:
            raise ValueError(f"hierarchy sizes must grow; {size} after {last_size}")
        if size[0] > image[0] or size[1] > image[1]:
            raise ValueError(f"hierarchy size {size} exceeds the image size {image}")
        schedule.append((iteration, size))
        last_iteration, last_size = iteration, size
    return tuple(schedule)


def _settings(inputs: Tensor, **kw) -> _Settings:
    if not isinstance(kw["targeted"], bool):
        raise TypeError(f"targeted must be a bool, got {kw['targeted']!r}")
    if kw["solver"] not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {kw['solver']!r}")
    if kw["box"] not in BOXES:
        raise ValueError(f"box must be one of {BOXES}, got {kw['box']!r}")
    check_int(kw["coordinates"], "coordinates", 1)
    check_int(kw["steps"], "steps", 1)
    check_positive(kw["h"], "h")
    check_positive(kw["lr"], "lr")
    check_positive(kw["confidence"], "confidence", allow_zero=True)
    for name in ("abort_early", "importance_sampling", "reset_adam"):
        if not isinstance(kw[name], bool):
            raise TypeError(f"{name} must be a bool, got {kw[name]!r}")
    image = tuple(inputs.shape[-2:]) if inputs.dim() == 4 else None
    attack_size = kw["attack_size"]
    if attack_size is not None:
        if image is None:
            raise ValueError("attack_size needs image inputs of shape (N, C, H, W)")
        start = _size_pair(attack_size, "attack_size")
        if start[0] > image[0] or start[1] > image[1]:
            raise ValueError(f"attack_size {start} exceeds the image size {image}")
    else:
        start = image
    if kw["importance_sampling"] and image is None:
        raise ValueError("importance_sampling needs image inputs of shape (N, C, H, W)")
    hierarchy = _check_hierarchy(kw["hierarchy"], start if attack_size is not None else None, image)
    return _Settings(
        kw["targeted"],
        kw["solver"],
        kw["coordinates"],
        float(kw["h"]),
        float(kw["lr"]),
        kw["steps"],
        float(kw["confidence"]),
        kw["abort_early"],
        kw["box"],
        start,
        hierarchy,
        kw["importance_sampling"],
        kw["reset_adam"],
    )


# ------------------------------------------------------------------------ the objective


@dataclass
class _Problem:
    """What stays fixed during an attack."""

    query: QueryModel
    inputs: Tensor
    labels: Tensor
    tanh_inputs: Tensor | None
    seeds: Tensor
    settings: _Settings


def to_image(problem: _Problem, y: Tensor, rows: Tensor, size: tuple[int, int] | None) -> Tensor:
    """The images x0 + D(y) evaluated by the model, for flat attack-space perturbations ``y``
    (rows, m) at attack size ``size`` of the samples ``rows``: clipped to [0, 1] (box='clip'; thesis, MNIST) or through the change of
    variables x = (tanh(atanh(2 x0 - 1) + D(y)) + 1) / 2 (box='tanh'; thesis, CIFAR-10)."""
    shape = problem.inputs.shape
    if size is not None:
        delta = upscale(y.reshape(y.shape[0], shape[1], *size), tuple(shape[-2:]))
    else:
        delta = y.reshape(y.shape[0], *shape[1:])
    if problem.settings.box == "tanh":
        return (torch.tanh(problem.tanh_inputs[rows] + delta) + 1) / 2
    return (problem.inputs[rows] + delta).clamp(0.0, 1.0)


def objective(problem: _Problem, x: Tensor, rows: Tensor, const: Tensor):
    """Per-probe loss ||x - x0||^2 + c * max(margin + kappa, 0), its squared distance and
    margin; one query per row of ``x``, counted for sample ``rows``. The hinge is Eq. 10-11's
    max(margin, -kappa) on log F shifted by kappa (the same minimiser, and a loss >= 0, which
    the relative early-abort test needs)."""
    log_p = problem.query.log_probabilities(x, rows)
    margins = margin(log_p, problem.labels[rows], problem.settings.targeted)
    squared = flat(x - problem.inputs[rows]).square().sum(1)
    kappa = problem.settings.confidence
    loss = squared + const[rows] * (margins + kappa).clamp_min(0.0)
    return loss, squared, margins


def _probes(y: Tensor, coords: Tensor, h: float) -> Tensor:
    """(A, 2B + 1, m): the iterate, then y + h e_i and y - h e_i for each chosen coordinate."""
    count = coords.shape[1]
    probes = y[:, None, :].repeat(1, 2 * count + 1, 1)
    index = coords.to(y.device)[:, :, None]
    step = torch.full(index.shape, h, dtype=y.dtype, device=y.device)
    probes[:, 1 : count + 1].scatter_add_(2, index, step)
    probes[:, count + 1 :].scatter_add_(2, index, -step)
    return probes


def estimate_derivatives(
    problem: _Problem,
    y: Tensor,
    rows: Tensor,
    coords: Tensor,
    const: Tensor,
    size: tuple[int, int] | None,
):
    """Symmetric-difference estimates (Eq. 12-13) of the first and second partial derivatives
    of the objective along ``coords`` for the samples ``rows`` (A of them) at ``y`` (A, m)
    (attack size ``size``),
    with one batch of A (2B + 1) queries. Returns (gradient (A, B), hessian (A, B), the
    iterate's loss, squared distance, margin (A,) and image)."""
    count, h = coords.shape[1], problem.settings.h
    probes = _probes(y, coords, h)
    owners = rows[:, None].expand(-1, 2 * count + 1).reshape(-1)
    images = to_image(problem, probes.reshape(-1, y.shape[1]), owners, size)
    loss, squared, margins = objective(problem, images, owners, const)
    loss = loss.reshape(-1, 2 * count + 1)
    centre, plus, minus = loss[:, 0], loss[:, 1 : count + 1], loss[:, count + 1 :]
    gradient = (plus - minus) / (2 * h)
    hessian = (plus - 2 * centre[:, None] + minus) / (h * h)
    first = torch.arange(0, images.shape[0], 2 * count + 1, device=images.device)
    return gradient, hessian, centre, squared[first], margins[first], images[first]


# ------------------------------------------------------------------------------ solvers


class _CoordinateState:
    """The attack-space iterate y (N, m) and the coordinate-wise Adam state M, v, T of
    Algorithm 2, for every sample."""

    def __init__(self, n: int, size: tuple[int, int] | None, like: Tensor):
        channels = like.shape[1] if size is not None else 1
        dims = channels * size[0] * size[1] if size is not None else flat(like).shape[1]
        self.size = size
        self.y = torch.zeros(n, dims, dtype=like.dtype, device=like.device)
        self.reset_adam(torch.ones(n, dtype=torch.bool, device=like.device))

    def reset_adam(self, which: Tensor) -> None:
        """M <- 0, v <- 0, T <- 0 for the samples ``which`` (Algorithm 2, line 1)."""
        if not hasattr(self, "m") or self.m.shape != self.y.shape:
            self.m = torch.zeros_like(self.y)
            self.v = torch.zeros_like(self.y)
            self.t = torch.zeros_like(self.y, dtype=torch.int64)
        self.m[which] = 0
        self.v[which] = 0
        self.t[which] = 0

    def resize(self, size: tuple[int, int], channels: int, image: tuple[int, int]) -> None:
        """Hierarchical attack: y <- D_new^{-1}(D_old(y)) at the new size, Adam state reset."""
        old = self.y.reshape(self.y.shape[0], channels, *self.size)
        self.y = flat(downscale(upscale(old, image), size)).contiguous()
        self.size = size
        self.reset_adam(torch.ones(self.y.shape[0], dtype=torch.bool, device=self.y.device))


def adam_step(state: _CoordinateState, rows: Tensor, coords: Tensor, grad: Tensor, lr: float):
    """Algorithm 2, lines 5-9, on the chosen coordinates of the samples ``rows``:
    T_i += 1; M_i, v_i moving averages; y_i -= lr * M^_i / (sqrt(v^_i) + eps) (the bias-
    corrected Adam step, eps outside the root as in Adam and the reference code)."""
    b1, b2 = _ADAM_BETAS
    r, c = rows[:, None], coords.to(rows.device)
    t = state.t[r, c] + 1
    m = b1 * state.m[r, c] + (1 - b1) * grad
    v = b2 * state.v[r, c] + (1 - b2) * grad * grad
    m_hat = m / (1 - b1 ** t.to(grad.dtype))
    v_hat = v / (1 - b2 ** t.to(grad.dtype))
    state.t[r, c], state.m[r, c], state.v[r, c] = t, m, v
    state.y[r, c] -= lr * m_hat / (v_hat.sqrt() + _ADAM_EPS)


def newton_step(state: _CoordinateState, rows: Tensor, coords: Tensor, grad, hessian, lr: float):
    """Algorithm 3, lines 4-9: y_i -= lr * g_i where the estimated h_i <= 0 (concave along i),
    else y_i -= lr * g_i / h_i. Positive estimates below 0.1 are raised to 0.1 (as in the
    reference code): at h = 1e-4 the float32 noise of (f+ - 2 f0 + f-) / h^2 is of order 1e2,
    so a tiny positive estimate is noise and would give an unbounded step."""
    r, c = rows[:, None], coords.to(rows.device)
    step = torch.where(hessian <= 0, grad, grad / hessian.clamp_min(_NEWTON_HESSIAN_FLOOR))
    state.y[r, c] -= lr * step


def _project(problem: _Problem, state: _CoordinateState, rows: Tensor) -> None:
    """box='clip' without attack-space reduction: y onto [-x0, 1 - x0] (projected descent)."""
    if problem.settings.box != "clip":
        return
    if state.size is not None and state.size != tuple(problem.inputs.shape[-2:]):
        return
    x0 = flat(problem.inputs[rows])
    state.y[rows] = torch.maximum(torch.minimum(state.y[rows], 1 - x0), -x0)


# ------------------------------------------------------------------------ the inner loop


@dataclass
class _Best:
    adv: Tensor
    norm: Tensor


def _can_query(problem: _Problem, active: Tensor, per_iteration: int) -> Tensor:
    """Samples still active whose budget covers one more iteration's queries."""
    indices = torch.arange(active.shape[0])
    left = problem.query.remaining(indices).to(active.device)
    return active & (left >= per_iteration)


def _weights(problem: _Problem, state: _CoordinateState, rows: Tensor) -> Tensor | None:
    if not problem.settings.importance_sampling:
        return None
    channels = problem.inputs.shape[1]
    y = state.y[rows].reshape(rows.shape[0], channels, *state.size)
    return importance_weights(y)


def _iterate(problem, state, rows, const, counter, best, found):
    """One ZOO iteration for the samples ``rows`` (in groups bounded by _PROBE_ROWS probes):
    choose coordinates, estimate, record successes, reset Adam at a first success, update."""
    s = problem.settings
    dims = state.y.shape[1]
    count = min(s.coordinates, dims)
    group = max(1, _PROBE_ROWS // (2 * count + 1))
    losses = []
    for start in range(0, rows.shape[0], group):
        part = rows[start : start + group]
        coords = choose_coordinates(
            problem.seeds[part.cpu()], counter, dims, count, _weights(problem, state, part)
        )
        grad, hessian, loss, squared, margins, image = estimate_derivatives(
            problem, state.y[part], part, coords, const, state.size
        )
        success = cw_success(margins, s.confidence)
        adv_part, norm_part = best.adv[part], best.norm[part]
        update_best(adv_part, norm_part, image, squared.sqrt(), success)
        best.adv[part], best.norm[part] = adv_part, norm_part
        first = success & ~found[part]
        found[part] |= success
        if s.solver == "adam" and s.reset_adam and bool(first.any()):
            which = torch.zeros_like(found)
            which[part[first]] = True
            state.reset_adam(which)
        if s.solver == "adam":
            adam_step(state, part, coords, grad, s.lr)
        else:
            newton_step(state, part, coords, grad, hessian, s.lr)
        _project(problem, state, part)
        losses.append(loss)
    return torch.cat(losses)


def _optimise_const(
    problem: _Problem, const: Tensor, best: _Best, alive: Tensor, step: int, trace=None
):
    """Coordinate descent for one constant per sample (the inner loop of C&W with Algorithm 2
    or 3), from y = 0. Each sample stops on its own: when its loss has not decreased by 0.01%
    over steps // 10 iterations (``abort_early``), or when its budget cannot pay for another
    iteration. Calls ``trace`` after every iteration (see ``zoo``). Returns whether each sample
    found a successful iterate."""
    s = problem.settings
    n = problem.inputs.shape[0]
    state = _CoordinateState(n, s.start_size, problem.inputs)
    channels = problem.inputs.shape[1]
    image = tuple(problem.inputs.shape[-2:]) if s.start_size is not None else None
    found = torch.zeros(n, dtype=torch.bool, device=problem.inputs.device)
    active = alive.clone()
    previous = torch.full((n,), float("inf"), dtype=problem.inputs.dtype, device=found.device)
    check_every = max(s.steps // 10, 1)
    schedule = dict(s.hierarchy)
    for iteration in range(s.steps):
        if iteration in schedule:
            state.resize(schedule[iteration], channels, image)
        per_iteration = 2 * min(s.coordinates, state.y.shape[1]) + 1
        active = _can_query(problem, active, per_iteration)
        if not bool(active.any()):
            break
        rows = active.nonzero().squeeze(1)
        counter = step * (s.steps + 1) + iteration
        loss = _iterate(problem, state, rows, const, counter, best, found)
        if trace is not None:
            trace(step, iteration, rows, loss.detach().clone(), found.clone())
        if s.abort_early and iteration % check_every == 0:
            stalled = loss > previous[rows] * 0.9999
            active[rows[stalled]] = False
            previous[rows] = loss
    return found


# -------------------------------------------------------------------------------- attack


def _clean_pass(query: QueryModel, inputs: Tensor, labels: Tensor) -> Tensor:
    """The clean inputs' log-probabilities (one query per sample), with the output checked."""
    scores = query(inputs, torch.arange(inputs.shape[0]))
    if query.output == "logits":
        check_logits(scores, inputs.shape[0])
    elif scores.dim() != 2 or scores.shape[0] != inputs.shape[0] or scores.shape[1] < 2:
        raise ValueError(f"model must return scores of shape (N, K); got {tuple(scores.shape)}")
    check_labels(labels, inputs.shape[0], scores.shape[1])
    return to_log_probabilities(scores, query.output)


@contract
def zoo(
    model: nn.Module | QueryModel,
    inputs: Tensor,
    labels: Tensor,
    *,
    targeted: bool = False,
    solver: str = "adam",
    coordinates: int = 128,
    h: float = 1e-4,
    lr: float = 0.01,
    steps: int = 1000,
    binary_search_steps: int = 9,
    c_init: float = 0.01,
    confidence: float = 0.0,
    abort_early: bool = True,
    box: str = "clip",
    attack_size: int | tuple[int, int] | None = None,
    hierarchy: tuple = (),
    importance_sampling: bool = False,
    reset_adam: bool = True,
    generator: torch.Generator | None = None,
    trace: Callable[[int, int, Tensor, Tensor, Tensor], None] | None = None,
) -> Tensor:
    """ZOO-Adam / ZOO-Newton black-box L2 attack (thesis ch. 3, Algorithms 2 and 3; Chen et al.,
    AISec 2017).

    Minimises ||x - x0||_2^2 + c * f(x) with f the score-only hinge loss on log-probabilities,
    f(x) = max(log F_y(x) - max_{j != y} log F_j(x), -kappa) untargeted (Eq. 11) or
    max(max_{j != t} log F_j(x) - log F_t(x), -kappa) targeted (Eq. 10, ``labels`` are the
    targets). Each iteration picks ``coordinates`` (B) coordinates per sample, estimates their
    derivatives by symmetric differences at ``h`` (Eq. 12-13: 2B + 1 queries per sample) and
    updates them by coordinate-wise Adam (Algorithm 2) or Newton (Algorithm 3). The constant c
    starts at ``c_init`` and is binary-searched per sample (``_core.binary_search_step``), the
    perturbation restarting from zero each round; within a round a sample stops when its loss
    has not decreased by 0.01% over ``steps // 10`` iterations (``abort_early``), and the Adam
    state of a sample is reset at its first success in the round (``reset_adam``).

    Args:
        model: an ``nn.Module`` or callable returning logits, or a
            :class:`advx.blackbox.QueryModel` (used as it is: its output kind, counts and
            per-sample budget apply; a sample that cannot pay for another iteration stops and
            keeps its best result). Sample i of ``inputs`` is the QueryModel's sample i.
        inputs: (N, ...) in [0, 1]; (N, C, H, W) for attack-space reduction, hierarchy and
            importance sampling.
        labels: true classes (untargeted) or target classes (targeted).
        targeted: attack towards ``labels``.
        solver: ``"adam"`` (Algorithm 2) or ``"newton"`` (Algorithm 3).
        coordinates: B, coordinates per iteration.
        h: finite-difference step.
        lr: step size eta.
        steps: iterations per binary-search round.
        binary_search_steps: rounds of the search on c.
        c_init: the first c.
        confidence: kappa.
        abort_early: per-sample early stop of a round.
        box: ``"clip"`` (x = clip(x0 + D(y)); without reduction y is projected onto the box
            after each update, the thesis's choice for MNIST) or ``"tanh"`` (change of
            variables, its choice for CIFAR-10).
        attack_size: (h, w) or an int: the perturbation lives at this size and is resized
            bilinearly to the image (Sec. 3.2.2); None: the input size.
        hierarchy: ((iteration, size), ...): at these iterations of each round the attack space
            grows to ``size`` by y <- D_new^{-1}(D_old(y)) (Sec. 3.2.3), Adam state reset.
        importance_sampling: draw coordinates with probabilities from |y| max-pooled over an
            8 x 8 grid of regions per channel, recomputed every iteration (Sec. 3.2.4).
        reset_adam: reset a sample's Adam state at its first success in a round.
        generator: the random source (coordinates); each sample's stream is keyed by one draw
            from it and the sample's own bytes and label, so batch and per-sample runs agree.
        trace: called after every iteration as ``trace(round, iteration, rows, loss, found)``:
            the indices of the samples still optimising, their total loss
            ||x - x0||^2 + c f(x) at the iterate the step started from, and whether each sample
            has a successful iterate in this round (the first valid iteration of thesis Table 3).

    Returns:
        The lowest-L2 successful iterate per sample (margin ``confidence``), or the input where
        none was found; inputs already adversarial come back unchanged.
    """
    check_inputs(inputs)
    check_labels(labels, inputs.shape[0], None)
    settings = _settings(
        inputs,
        targeted=targeted,
        solver=solver,
        coordinates=coordinates,
        h=h,
        lr=lr,
        steps=steps,
        confidence=confidence,
        abort_early=abort_early,
        box=box,
        attack_size=attack_size,
        hierarchy=hierarchy,
        importance_sampling=importance_sampling,
        reset_adam=reset_adam,
    )
    check_int(binary_search_steps, "binary_search_steps", 1)
    check_positive(c_init, "c_init")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if not callable(model):
        raise TypeError("model must be an nn.Module, a callable or a QueryModel")
    if trace is not None and not callable(trace):
        raise TypeError(f"trace must be a callable or None, got {type(trace).__name__}")
    query = as_query_model(model)
    inputs = inputs.detach()
    with attack_mode(query.model):
        clean = _clean_pass(query, inputs, labels)
        clean_success = cw_success(margin(clean, labels, targeted), settings.confidence)
        tanh_inputs = to_tanh_space(inputs) if box == "tanh" else None
        seeds = _random.sample_seeds(inputs, labels, generator)
        problem = _Problem(query, inputs, labels, tanh_inputs, seeds, settings)
        best = _Best(inputs.clone(), torch.where(clean_success, 0.0, float("inf")).to(inputs.dtype))
        const = torch.full_like(best.norm, float(c_init))
        lower, upper = torch.zeros_like(const), torch.full_like(const, _NO_BOUND)
        alive = ~clean_success
        for step in range(binary_search_steps):
            if not bool(alive.any()):
                break
            found = _optimise_const(problem, const, best, alive, step, trace)
            const = binary_search_step(const, lower, upper, found)
    return best.adv.detach()


__all__ = [
    "BOXES",
    "SOLVERS",
    "choose_coordinates",
    "downscale",
    "estimate_derivatives",
    "importance_weights",
    "interpolation_matrix",
    "upscale",
    "zoo",
]
