"""The linear-region attack rLR-QP (Croce & Hein, GCPR 2018) and the region geometry of
piecewise-linear networks it rests on."""

from .attack import linear_region, warm_start
from .geometry import (
    Region,
    activation_patterns,
    float64_layers,
    linear_regions,
    piecewise_linear_layers,
)
from .solvers import solve_l1, solve_l2, solve_linf, solve_region_problem

__all__ = [
    "Region",
    "activation_patterns",
    "float64_layers",
    "linear_region",
    "linear_regions",
    "piecewise_linear_layers",
    "solve_l1",
    "solve_l2",
    "solve_linf",
    "solve_region_problem",
    "warm_start",
]
