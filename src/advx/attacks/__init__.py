"""Attacks. Every public attack is a plain function following the attack contract:
``attack(model, inputs, labels, *, targeted=False, **hyperparameters) -> Tensor``."""

from ._core import lp_norm, margin, parse_norm
from .convex import bernoulli, bernoulli_noise, gn, gn_box_step, gn_iterative, gn_simple, gn_step
from .cw import carlini_wagner_l2
from .ddn import ANU_DEFAULTS, ANU_TARGETED_DEFAULTS, DDN_DEFAULTS, anu, ddn
from .deepfool import deepfool
from .ead import cov, ead
from .gradient import bim, fgm, ifgm, pgd
from .lbfgs import lbfgs
from .linear_region import linear_region
from .linearisation import class_gradients
from .registry import ATTACKS, AttackInfo, get_attack
from .regression import regression_attack
from .targets import all_targets, select_targets
from .trust_region import trust_region, update_radius
from .zoo import zoo

__all__ = [
    "ANU_DEFAULTS",
    "ANU_TARGETED_DEFAULTS",
    "DDN_DEFAULTS",
    "all_targets",
    "anu",
    "carlini_wagner_l2",
    "cov",
    "ead",
    "class_gradients",
    "deepfool",
    "lbfgs",
    "linear_region",
    "select_targets",
    "trust_region",
    "update_radius",
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
    "zoo",
]
