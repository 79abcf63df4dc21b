"""Minimal-epsilon search for bounded attacks: the per-image grid search of Chen et al. (AAAI 2018,
thesis Sec. 4.3.1 and Table 4), which reports for FGM and I-FGM the smallest eps that fools each
image, made affordable by bisection on the grid."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..checks import as_labels, check_inputs, check_model_matches
from ._core import (
    INF,
    NormLike,
    attack_mode,
    check_int,
    is_adversarial,
    lp_norm,
    parse_norm,
    validate,
)
from .registry import BOUNDED, MINIMAL, AttackInfo, accepts, get_attack

# Table 4: (first, last, resolution) of the grid for each norm (1000 values each).
TABLE4_GRIDS: dict[float, tuple[float, float, float]] = {
    INF: (1e-3, 1.0, 1e-3),
    1.0: (1.0, 1000.0, 1.0),
    2.0: (1e-2, 10.0, 1e-2),
}
_BUDGET_RTOL, _BUDGET_ATOL = 1e-4, 1e-6


def table4_grid(norm: NormLike) -> Tensor:
    """The grid of Table 4 for the norm (float64): 1e-3..1 by 1e-3 (Linf), 1..1000 by 1 (L1),
    1e-2..10 by 1e-2 (L2)."""
    p = parse_norm(norm)
    first, last, step = TABLE4_GRIDS[p]
    count = int(round((last - first) / step)) + 1
    return first + step * torch.arange(count, dtype=torch.float64)


def _resolve(attack: str | AttackInfo | Callable) -> AttackInfo:
    if isinstance(attack, str):
        attack = get_attack(attack)
    if isinstance(attack, AttackInfo):
        if attack.kind != BOUNDED:
            raise ValueError(f"attack: {attack.name} is not a bounded attack (it takes no eps)")
        return attack
    if callable(attack):
        if not accepts(attack, "eps"):
            raise ValueError("attack must take an eps= keyword (a bounded attack)")
        name = getattr(attack, "__name__", type(attack).__name__)
        return AttackInfo(name=name, function=attack, kind=BOUNDED, norms=(1.0, 2.0, INF))
    raise TypeError(f"attack must be a name, an AttackInfo or a function, got {attack!r}")


def _check_grid(grid: Sequence[float] | Tensor | None, p: float) -> Tensor:
    if grid is None:
        if p not in TABLE4_GRIDS:
            raise ValueError(f"grid: no default grid for the L{p:g} norm; pass grid=")
        return table4_grid(p)
    values = torch.as_tensor(grid, dtype=torch.float64).flatten()
    if values.numel() == 0 or not torch.isfinite(values).all() or (values <= 0).any():
        raise ValueError("grid must be a non-empty sequence of finite eps values > 0")
    if (values[1:] <= values[:-1]).any():
        raise ValueError("grid must be strictly increasing")
    return values


@functools.cache
def _coarse_indices(size: int, stride: int) -> tuple[int, ...]:
    """Grid indices of the ascending scan: every stride-th point, and always the last one."""
    points = list(range(stride - 1, size, stride))
    if not points or points[-1] != size - 1:
        points.append(size - 1)
    return tuple(points)


class _Search:
    """Per-sample state: the largest failed and smallest successful grid index so far."""

    def __init__(self, inputs: Tensor, grid: Tensor, run: Callable[[Tensor, Tensor], Tensor]):
        n = inputs.shape[0]
        self.grid, self.run = grid, run
        self.failed = torch.full((n,), -1, dtype=torch.long)
        self.succeeded = torch.full((n,), -1, dtype=torch.long)
        self.best = inputs.clone()

    def probe(self, todo: Tensor, index: Tensor) -> None:
        """Attack samples ``todo`` at the grid points ``index`` (one per sample)."""
        adv, success = self.run(todo, self.grid[index])
        hit = success.cpu()
        self.succeeded[todo[hit]] = index[hit]
        self.failed[todo[~hit]] = index[~hit]
        keep = hit.to(adv.device)
        self.best[todo.to(adv.device)[keep]] = adv[keep].to(self.best.dtype)


def minimal_eps(
    attack: str | AttackInfo | Callable,
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    norm: NormLike,
    targeted: bool = False,
    grid: Sequence[float] | Tensor | None = None,
    refine_steps: int = 5,
    return_eps: bool = False,
    **attack_kwargs,
) -> Tensor | tuple[Tensor, Tensor]:
    """The adversarial with the smallest eps on a grid, per sample, for a bounded attack (the
    grid search of Chen et al., AAAI 2018, Sec. 4.3.1; Table 4 gives the grids).

    The grid is scanned upwards at every 2**refine_steps-th point (and its last point); a sample
    leaves the scan at its first success, and the bracket between its last failed and its
    first successful point is then bisected on the grid, ``refine_steps`` attacks at most. With
    ``refine_steps=0`` every grid point is tried in turn, the thesis's exhaustive protocol; with
    r > 0 the result is the same wherever success is monotone in eps inside each bracket of
    2**r grid points, at about len(grid) / 2**r + r attack calls instead of up to len(grid).
    Success is checked with a fresh forward pass and the budget ||delta||_p <= eps (relative
    tolerance 1e-4); every call attacks only the samples still searching, with one eps per
    sample (the attack must accept an (N,) tensor ``eps``, as fgm, ifgm and pgd do).

    Args:
        attack: a bounded attack: registry name (``'fgm'``, ``'ifgm'``, ``'pgd'``, ``'gn'`` ...),
            AttackInfo or function taking ``eps=``.
        model: returns logits (N, K).
        inputs: images in [0, 1], (N, ...).
        labels: true classes, or targets when ``targeted``.
        norm: the attack's norm (passed on as ``norm=`` when the attack takes it).
        targeted: attack towards ``labels``.
        grid: increasing eps values; default the Table 4 grid of the norm.
        refine_steps: bisection steps r (the scan stride is 2**r).
        return_eps: also return the eps found per sample (inf where the grid never succeeded).
        **attack_kwargs: further hyperparameters of the attack (``steps=``, ``generator=`` ...).

    Returns the adversarials (the original input where no grid point succeeded), and with
    ``return_eps`` also the (N,) float64 eps of each.
    """
    info = _resolve(attack)
    p = parse_norm(norm, None)
    if not info.takes_norm and p != float(info.norms[0]):
        raise ValueError(f"norm: attack {info.name} works in the L{info.norms[0]:g} norm only")
    check_int(refine_steps, "refine_steps", 0)
    if "eps" in attack_kwargs:
        raise ValueError("eps: minimal_eps searches eps itself; pass grid= instead")
    values = _check_grid(grid, p)
    check_inputs(inputs)
    labels = as_labels(labels, inputs.shape[0])
    check_model_matches(model, inputs)
    validate(model, inputs, labels)
    inputs = inputs.detach()
    kwargs = dict(attack_kwargs, targeted=targeted)
    if info.takes_norm:
        kwargs["norm"] = p

    def run(todo: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        x, y = inputs[todo.to(inputs.device)], labels[todo.to(labels.device)]
        radius = eps.to(device=inputs.device, dtype=inputs.dtype)
        if bool((eps == eps[0]).all()):
            adv = info.function(model, x, y, eps=float(eps[0]), **kwargs)
        else:
            adv = info.function(model, x, y, eps=radius, **kwargs)
        with torch.no_grad(), attack_mode(model):
            fooled = is_adversarial(model(adv), y, targeted)
        limit = radius * (1 + _BUDGET_RTOL) + _BUDGET_ATOL
        return adv.detach(), fooled & (lp_norm(adv - x, p) <= limit)

    search = _Search(inputs, values, run)
    for point in _coarse_indices(values.numel(), 2**refine_steps):
        todo = (search.succeeded < 0).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        search.probe(todo, torch.full((todo.numel(),), point, dtype=torch.long))
    while True:
        open_bracket = (search.succeeded >= 0) & (search.succeeded - search.failed > 1)
        todo = open_bracket.nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        search.probe(todo, (search.failed[todo] + search.succeeded[todo]) // 2)
    if not return_eps:
        return search.best
    found = search.succeeded >= 0
    eps = torch.where(found, values[search.succeeded.clamp_min(0)], math.inf)
    return search.best, eps


def as_minimal_attack(attack: str | AttackInfo, **defaults) -> AttackInfo:
    """A minimal-norm registry entry ``<name>-minimal`` that runs :func:`minimal_eps` on a bounded
    attack (what ``advx attack --attack ifgm --minimal`` evaluates).

    Args:
        attack: a bounded attack's registry name or AttackInfo.
        **defaults: keywords for :func:`minimal_eps` (``grid=``, ``refine_steps=`` ...).
    """
    info = _resolve(attack)
    function = functools.partial(minimal_eps, info, **defaults)
    return AttackInfo(
        name=f"{info.name}-minimal",
        function=function,
        kind=MINIMAL,
        norms=info.norms,
        any_p=info.any_p,
        access=info.access,
        randomized=info.randomized,
        paper=f"{info.paper}; minimal eps by grid search (Chen et al., AAAI 2018, Table 4)",
        quick={"refine_steps": 6, **info.quick},
    )


__all__ = ["TABLE4_GRIDS", "as_minimal_attack", "minimal_eps", "table4_grid"]
