"""Attack registry: the names the CLI, the runner and the contract suite know, and what each
attack is, in named fields."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from . import convex, gradient
from .cw import carlini_wagner_l2
from .ddn import anu, ddn
from .deepfool import deepfool
from .ead import cov, ead
from .lbfgs import lbfgs
from .linear_region import linear_region
from .trust_region import trust_region
from .zoo import zoo

INF = float("inf")
MINIMAL = "minimal-norm"
BOUNDED = "bounded"
WHITE_BOX = "white-box"
BLACK_BOX = "black-box"
KINDS = (MINIMAL, BOUNDED)
ACCESS = (WHITE_BOX, BLACK_BOX)


@dataclass(frozen=True, kw_only=True)
class AttackInfo:
    """An attack function and what the runner and the contract suite need to know about it.

    Args:
        name: the registry name (lower case, dashes).
        function: the attack, ``function(model, inputs, labels, *, targeted=..., **kw)``.
        kind: ``"minimal-norm"`` (searches the smallest perturbation; robust accuracy at eps is
            read off the per-sample norms) or ``"bounded"`` (keeps ``||delta||_p <= eps``).
        norms: the norms it attacks in. A function without a ``norm=`` keyword has one fixed
            norm, named here alone.
        any_p: it also accepts any other p >= 1 as ``norm=`` (``norms`` lists the usual ones).
        access: ``"white-box"`` (gradients) or ``"black-box"`` (scores only, under no_grad).
        randomized: it draws random numbers (from ``generator=`` when it takes one), so
            reproducibility is per generator, not per sample.
        paper: the reference it implements.
        quick: hyperparameters for a small-budget run (contract tests, smoke runs).
    """

    name: str
    function: Callable
    kind: str
    norms: tuple[float, ...]
    any_p: bool = False
    access: str = WHITE_BOX
    randomized: bool = False
    paper: str = ""
    quick: Mapping = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.access not in ACCESS:
            raise ValueError(f"access must be one of {ACCESS}, got {self.access!r}")
        if not self.norms:
            raise ValueError(f"norms: attack {self.name} must name at least one norm")
        object.__setattr__(self, "quick", MappingProxyType(dict(self.quick)))

    @property
    def minimal_norm(self) -> bool:
        """Whether the attack searches the smallest perturbation."""
        return self.kind == MINIMAL

    @property
    def black_box(self) -> bool:
        """Whether the attack uses scores only."""
        return self.access == BLACK_BOX

    @property
    def takes_norm(self) -> bool:
        """Whether the function takes a ``norm=`` keyword."""
        return accepts(self.function, "norm")

    @property
    def takes_generator(self) -> bool:
        """Whether the function takes a ``generator=`` keyword."""
        return accepts(self.function, "generator")


def accepts(function: Callable, name: str) -> bool:
    """Whether ``function`` takes the keyword ``name`` (or any keyword)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return True
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


ATTACKS: dict[str, AttackInfo] = {}


def register(info: AttackInfo) -> AttackInfo:
    """Add an attack to the registry under its name (the contract suite then covers it)."""
    ATTACKS[info.name] = info
    return info


def get_attack(name: str) -> AttackInfo:
    """Look an attack up by name; raises ``ValueError`` listing the known names."""
    key = name.strip().lower().replace("_", "-")
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known attacks: {', '.join(sorted(ATTACKS))}")
    return ATTACKS[key]


_LP = (1.0, 2.0, INF)
_GOODFELLOW = "Goodfellow, Shlens & Szegedy, ICLR 2015"
_KURAKIN = "Kurakin, Goodfellow & Bengio, ICLR workshop 2017"
_BALDA = "Balda, Behboodi & Mathar, IEEE TSP 2019"

register(AttackInfo(name="fgm", function=gradient.fgm, kind=BOUNDED, norms=_LP, paper=_GOODFELLOW))
_IFGM = register(
    AttackInfo(
        name="ifgm",
        function=gradient.ifgm,
        kind=BOUNDED,
        norms=_LP,
        paper=_KURAKIN,
        quick={"steps": 3},
    )
)
register(replace(_IFGM, name="bim"))
register(
    AttackInfo(
        name="pgd",
        function=gradient.pgd,
        kind=BOUNDED,
        norms=_LP,
        randomized=True,
        paper="Madry et al., ICLR 2018",
        quick={"steps": 3},
    )
)
register(
    AttackInfo(
        name="ddn",
        function=ddn,
        kind=MINIMAL,
        norms=(2.0,),
        paper="Rony et al., CVPR 2019",
        quick={"steps": 5},
    )
)
register(
    AttackInfo(
        name="anu",
        function=anu,
        kind=MINIMAL,
        norms=(2.0,),
        paper="Liu & Cao, self-adaptive norm update",
        quick={"steps": 5},
    )
)
register(
    AttackInfo(name="gn", function=convex.gn, kind=BOUNDED, norms=_LP, any_p=True, paper=_BALDA)
)
register(
    AttackInfo(
        name="gn-iterative",
        function=convex.gn_iterative,
        kind=BOUNDED,
        norms=_LP,
        any_p=True,
        paper=_BALDA,
        quick={"steps": 3},
    )
)
register(
    AttackInfo(
        name="gn-simple",
        function=convex.gn_simple,
        kind=BOUNDED,
        norms=_LP,
        any_p=True,
        paper=_BALDA,
    )
)
register(
    AttackInfo(
        name="bernoulli",
        function=convex.bernoulli,
        kind=BOUNDED,
        norms=(INF,),
        randomized=True,
        paper=_BALDA,
    )
)
register(
    AttackInfo(
        name="deepfool",
        function=deepfool,
        kind=MINIMAL,
        norms=(2.0, INF),
        paper="Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016",
        quick={"steps": 5},
    )
)
register(
    AttackInfo(
        name="cw-l2",
        function=carlini_wagner_l2,
        kind=MINIMAL,
        norms=(2.0,),
        paper="Carlini & Wagner, IEEE S&P 2017",
        quick={"binary_search_steps": 2, "steps": 5},
    )
)
register(
    AttackInfo(
        name="lbfgs",
        function=lbfgs,
        kind=MINIMAL,
        norms=(2.0,),
        paper="Szegedy et al., ICLR 2014",
        quick={"search_steps": 2, "max_iter": 5},
    )
)
register(
    AttackInfo(
        name="trust-region",
        function=trust_region,
        kind=MINIMAL,
        norms=(2.0, INF),
        paper="Yao, Gholami, Xu, Keutzer & Mahoney, CVPR 2019",
        quick={"steps": 5},
    )
)
register(
    AttackInfo(
        name="ead",
        function=ead,
        kind=MINIMAL,
        norms=(1.0,),
        paper="Chen, Sharma, Zhang, Yi & Hsieh, AAAI 2018",
        quick={"binary_search_steps": 2, "steps": 10},
    )
)
register(
    AttackInfo(
        name="cov",
        function=cov,
        kind=MINIMAL,
        norms=(1.0,),
        paper="Chen et al., AAAI 2018 (Table 5, change-of-variable baseline)",
        quick={"binary_search_steps": 2, "steps": 10},
    )
)

register(
    AttackInfo(
        name="zoo",
        function=zoo,
        kind=MINIMAL,
        norms=(2.0,),
        access=BLACK_BOX,
        randomized=True,
        paper="Chen, Zhang, Sharma, Yi & Hsieh, AISec 2017 (ZOO)",
        quick={"binary_search_steps": 2, "steps": 5, "coordinates": 16},
    )
)
register(
    AttackInfo(
        name="linear-region",
        function=linear_region,
        kind=MINIMAL,
        norms=(1.0, 2.0, INF),
        randomized=True,
        paper="Croce & Hein, GCPR 2018 (rLR-QP)",
        quick={"n1": 1, "n2": 1, "n3": 1, "n4": 1, "target_classes": "init", "facets": 2},
    )
)
