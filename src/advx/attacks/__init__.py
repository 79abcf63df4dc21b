"""Attacks. Every public attack is a plain function following the attack contract:
``attack(model, inputs, labels, *, targeted=False, **hyperparameters) -> Tensor``."""

from ._core import lp_norm, margin, parse_norm
from .convex import bernoulli, bernoulli_noise, gn, gn_box_step, gn_iterative, gn_simple, gn_step
from .ddn import ANU_DEFAULTS, ANU_TARGETED_DEFAULTS, DDN_DEFAULTS, anu, ddn
from .gradient import bim, fgm, ifgm, pgd
from .registry import ATTACKS, AttackInfo, get_attack
from .regression import regression_attack

__all__ = [
    "ANU_DEFAULTS",
    "ANU_TARGETED_DEFAULTS",
    "DDN_DEFAULTS",
    "anu",
    "bernoulli",
    "bernoulli_noise",
    "gn",
    "gn_box_step",
    "gn_iterative",
    "gn_simple",
    "gn_step",
    "regression_attack",
    "ddn",
    "ATTACKS",
    "AttackInfo",
    "bim",
    "fgm",
    "get_attack",
    "ifgm",
    "lp_norm",
    "margin",
    "parse_norm",
    "pgd",
]
