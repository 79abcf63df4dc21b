"""Attack registry: the names the CLI and the evaluation runner know, and what kind each is."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import convex, gradient
from .cw import carlini_wagner_l2
from .ddn import anu, ddn
from .deepfool import deepfool
from .lbfgs import lbfgs
from .trust_region import trust_region


@dataclass(frozen=True)
class AttackInfo:
    """An attack function with what the runner needs to know about it.

    ``minimal_norm``: the attack searches the smallest perturbation (DeepFool, C&W, DDN...),
    so robust accuracy at eps is read off the per-sample norms; otherwise the attack is bounded
    by ``eps`` and is run once per budget. ``norms``: the norms it accepts as ``norm=``
    (empty when it has a single fixed norm, named by ``fixed_norm``).
    """

    name: str
    function: Callable
    minimal_norm: bool
    norms: tuple[float, ...] = ()
    fixed_norm: float | None = None
    defaults: dict = field(default_factory=dict)


INF = float("inf")

ATTACKS: dict[str, AttackInfo] = {}


def register(info: AttackInfo) -> AttackInfo:
    """Add an attack to the registry under its name."""
    ATTACKS[info.name] = info
    return info


def get_attack(name: str) -> AttackInfo:
    """Look an attack up by name; raises ``ValueError`` listing the known names."""
    key = name.strip().lower().replace("_", "-")
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known attacks: {', '.join(sorted(ATTACKS))}")
    return ATTACKS[key]


register(AttackInfo("fgm", gradient.fgm, False, (1.0, 2.0, INF)))
register(AttackInfo("ifgm", gradient.ifgm, False, (1.0, 2.0, INF)))
register(AttackInfo("bim", gradient.ifgm, False, (1.0, 2.0, INF)))
register(AttackInfo("pgd", gradient.pgd, False, (1.0, 2.0, INF)))
register(AttackInfo("ddn", ddn, True, fixed_norm=2.0))
register(AttackInfo("anu", anu, True, fixed_norm=2.0))
register(AttackInfo("gn", convex.gn, False, (1.0, 2.0, INF)))
register(AttackInfo("gn-iterative", convex.gn_iterative, False, (1.0, 2.0, INF)))
register(AttackInfo("gn-simple", convex.gn_simple, False, (1.0, 2.0, INF)))
register(AttackInfo("bernoulli", convex.bernoulli, False, fixed_norm=INF))
register(AttackInfo("deepfool", deepfool, True, (2.0, INF)))
register(AttackInfo("cw-l2", carlini_wagner_l2, True, fixed_norm=2.0))
register(AttackInfo("lbfgs", lbfgs, True, fixed_norm=2.0))
register(AttackInfo("trust-region", trust_region, True, (2.0, INF)))
