"""Decoupled Direction and Norm (DDN) and the Self-adaptive Norm Update (ANU) L2 attacks.

DDN: Rony, Hafemann, Oliveira, Ben Ayed, Sabourin, Granger, "Decoupling Direction and Norm for
Efficient Gradient-Based L2 Adversarial Attacks and Defenses", CVPR 2019.
ANU: Liu and Cao, "Self-adaptive Norm Update for Faster Gradient-based L2 Adversarial Attacks and
Defenses" (``../shared/papers/self-adaptive-norm-update.txt``): DDN is its Algorithm 1, ANU its
Algorithm 2, hyperparameters in its Section 5.2.

Both attacks run the same loop (``_decoupled_loop``); they differ only in the rule that gives the
per-sample norm-update factor gamma_k of each iteration: a constant for DDN (Alg. 1, lines 6-10),
the self-adaptive factor of Alg. 2 (lines 7-15) for ANU. With ``alpha_gamma=0`` the adaptive rule
keeps gamma_k = gamma_0 and ANU returns exactly what DDN returns (the paper, end of Sec. 3.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._core import (
    attack_mode,
    check_int,
    check_positive,
    clip_box,
    contract,
    is_adversarial,
    loss_and_grad,
    lp_norm,
    project_lp_ball,
    update_best,
    validate,
    view_like,
)

Callback = Callable[[int, Tensor, Tensor], None]
"""``callback(k, iterate, is_adv)``: called with every iterate x'_k the attack evaluates
(k = 0 .. steps, x'_0 the clean input) and its (N,) success mask; for tests and plots."""

# Section 5.2 of the ANU paper (after Rony et al. 2019): eps_0 = 1, gamma = 0.05, step size alpha
# cosine-annealed from 1 to 0.01; 100 iterations is the reference budget of Tables 1 and 2.
_DDN_COMMON = {
    "steps": 100,
    "init_epsilon": 1.0,
    "gamma": 0.05,
    "alpha_init": 1.0,
    "alpha_final": 0.01,
}
DDN_DEFAULTS: dict[str, dict] = {"mnist": dict(_DDN_COMMON), "cifar10": dict(_DDN_COMMON)}

# Section 5.2, untargeted (Table 1): gamma_0 = 0.4 / 0.2 and initial alpha_gamma = 0.15 / 0.1 for
# MNIST / CIFAR-10; alpha as for DDN. The paper finds ANU with 70 iterations better than DDN with
# 100; ``steps`` is kept at the common reference budget of 100.
_ANU_COMMON = {"steps": 100, "init_epsilon": 1.0, "alpha_init": 1.0, "alpha_final": 0.01}
ANU_DEFAULTS: dict[str, dict] = {
    "mnist": {**_ANU_COMMON, "gamma0": 0.4, "alpha_gamma": 0.15},
    "cifar10": {**_ANU_COMMON, "gamma0": 0.2, "alpha_gamma": 0.1},
}
# Section 5.2, targeted (Table 2): gamma_0 = alpha_gamma = 0.05 for MNIST; gamma_0 = 0.15 and
# alpha_gamma = 0.06 for CIFAR-10 (ANU with 85 / 80 iterations beats DDN with 100).
ANU_TARGETED_DEFAULTS: dict[str, dict] = {
    "mnist": {**_ANU_COMMON, "gamma0": 0.05, "alpha_gamma": 0.05},
    "cifar10": {**_ANU_COMMON, "gamma0": 0.15, "alpha_gamma": 0.06},
}


# --------------------------------------------------------------------------- argument checks


def _check_open_unit(value: float, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless 0 < value < 1."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")


@dataclass(frozen=True)
class _Settings:
    """The hyperparameters DDN and ANU share (everything but the norm-update rule)."""

    targeted: bool
    steps: int
    init_epsilon: float
    alpha_init: float
    alpha_final: float
    max_norm: float | None
    quantize: bool
    levels: int
    generator: torch.Generator | None
    callback: Callback | None

    def check(self) -> None:
        """Raise ``ValueError``/``TypeError`` naming the first bad hyperparameter."""
        check_int(self.steps, "steps", 1)
        check_positive(self.init_epsilon, "init_epsilon")
        check_positive(self.alpha_init, "alpha_init")
        check_positive(self.alpha_final, "alpha_final", allow_zero=True)
        if self.max_norm is not None:
            check_positive(self.max_norm, "max_norm")
        check_int(self.levels, "levels", 2)
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            name = type(self.generator).__name__
            raise TypeError(f"generator must be a torch.Generator, got {name}")
        if self.callback is not None and not callable(self.callback):
            raise TypeError("callback must be callable or None")


# --------------------------------------------------------------------------- schedules and rules


def cosine_schedule(start: float, end: float, k: int, steps: int) -> float:
    """Cosine annealing from ``start`` at iteration k = 1 towards ``end`` (Sec. 5.2: "set to 1,
    reduced with cosine annealing to 0.01"): start + (end - start) (1 - cos(pi (k - 1) / steps)) / 2.

    The phase is (k - 1) / steps, as in Rony et al.'s reference DDN code (and adv-lib's), so the
    last iteration uses end + (start - end) (1 - cos(pi / steps)) / 2, just above ``end``. Matching
    the reference schedule step for step makes our DDN follow the reference trajectory exactly.
    """
    t = (k - 1) / steps
    return end + (start - end) * (1.0 + math.cos(math.pi * t)) / 2.0


class FixedFactor:
    """DDN's norm-update factor: the same gamma at every iteration (Alg. 1, lines 6-10)."""

    def __init__(self, gamma: float, like: Tensor):
        self.gamma = torch.full((like.shape[0],), gamma, dtype=like.dtype, device=like.device)

    def __call__(self, k: int, is_adv: Tensor) -> Tensor:
        return self.gamma


class AdaptiveFactor:
    """ANU's self-adaptive norm-update factor (Alg. 2, lines 2 and 7-15), per sample.

    A_{-1} starts at False (line 2). At iteration k, A_{-2} <- A_{-1}, A_{-1} <- [x'_{k-1} is
    adversarial]; gamma_k = (1 + alpha_gamma_k) gamma_{k-1} when A_{-1} = A_{-2} (the last two
    iterates lie on the same side of the boundary), else (1 - alpha_gamma_k) gamma_{k-1}.
    alpha_gamma_k is cosine-annealed from ``alpha_gamma`` to 0 (Sec. 5.2). The paper leaves gamma
    unbounded; it is capped at ``gamma_max`` < 1 here so that (1 - gamma_k) eps stays positive.
    """

    def __init__(
        self, gamma0: float, alpha_gamma: float, gamma_max: float, steps: int, like: Tensor
    ):
        n = like.shape[0]
        self.gamma = torch.full((n,), gamma0, dtype=like.dtype, device=like.device)
        self.previous = torch.zeros(n, dtype=torch.bool, device=like.device)
        self.alpha_gamma, self.gamma_max, self.steps = alpha_gamma, gamma_max, steps

    def __call__(self, k: int, is_adv: Tensor) -> Tensor:
        rate = cosine_schedule(self.alpha_gamma, 0.0, k, self.steps)
        same_side = is_adv == self.previous
        factor = torch.where(same_side, 1.0 + rate, 1.0 - rate).to(self.gamma.dtype)
        self.gamma = (self.gamma * factor).clamp_max(self.gamma_max)
        self.previous = is_adv
        return self.gamma


NormRule = Callable[[int, Tensor], Tensor]
"""``rule(k, is_adv) -> gamma_k``: the (N,) norm-update factor of iteration k, given which
samples x'_{k-1} fooled."""


# --------------------------------------------------------------------------- loop pieces


def _unit_gradient(grad: Tensor, generator: torch.Generator | None) -> Tensor:
    """g / ||g||_2 per sample (Alg. 1, line 5); a zero gradient is replaced by a random unit
    direction, as in the reference implementation of Rony et al."""
    norms = lp_norm(grad, 2)
    zero = norms < 1e-12
    if zero.any():
        device = grad.device if generator is None else generator.device
        noise = torch.randn(grad.shape, generator=generator, dtype=grad.dtype, device=device)
        grad = torch.where(view_like(zero, grad), noise.to(grad.device), grad)
        norms = lp_norm(grad, 2)
    return grad / view_like(norms.clamp_min(1e-12), grad)


def _update_epsilon(epsilon: Tensor, is_adv: Tensor, gamma: Tensor, worst: Tensor) -> Tensor:
    """eps_k = (1 - gamma_k) eps_{k-1} if x'_{k-1} is adversarial else (1 + gamma_k) eps_{k-1}
    (Alg. 1 lines 6-10, Alg. 2 lines 16-20), capped at the largest distance the box allows."""
    scaled = torch.where(is_adv, (1.0 - gamma) * epsilon, (1.0 + gamma) * epsilon)
    return torch.minimum(scaled, worst)


def quantize_image(x: Tensor, levels: int) -> Tensor:
    """Round to the nearest of ``levels`` evenly spaced intensities in [0, 1] (k / (levels - 1))."""
    scale = levels - 1
    return (x * scale).round() / scale


def _project_to_sphere(
    inputs: Tensor, delta: Tensor, epsilon: Tensor, quantize: bool, levels: int
) -> Tensor:
    """x'_k = clip(x + eps_k delta_k / ||delta_k||_2) (Alg. 1 lines 11-12), optionally quantised
    to ``levels`` intensities as in Rony et al. (2019)."""
    scale = epsilon / lp_norm(delta, 2).clamp_min(1e-12)
    x = inputs + delta * view_like(scale, delta)
    if quantize:
        x = quantize_image(x, levels)
    return clip_box(x).detach()


def _decoupled_loop(
    model: nn.Module, inputs: Tensor, labels: Tensor, settings: _Settings, rule: NormRule
) -> tuple[Tensor, Tensor, Tensor]:
    """Run Alg. 1 / Alg. 2 with the norm-update ``rule``; return (lowest-norm adversarial per
    sample, or the input where none was found; its L2 norm, inf where none; the last iterate).

    The gradient is that of the cross-entropy on the logits, ascended for untargeted attacks and
    descended for targeted ones (Alg. 1, lines 2 and 4). Every iterate x'_0 .. x'_K is checked,
    x'_K by one extra forward pass, and the lowest-norm adversarial one is kept (line 14).
    """
    n, steps, targeted = inputs.shape[0], settings.steps, settings.targeted
    epsilon = torch.full((n,), settings.init_epsilon, dtype=inputs.dtype, device=inputs.device)
    worst = lp_norm(torch.maximum(inputs, 1.0 - inputs), 2)
    best_adv = inputs.clone()
    best_norm = torch.full((n,), math.inf, dtype=inputs.dtype, device=inputs.device)
    x = inputs.clone()

    def track(k: int, logits: Tensor) -> Tensor:
        success = is_adversarial(logits, labels, targeted)
        update_best(best_adv, best_norm, x, lp_norm(x - inputs, 2), success)
        if settings.callback is not None:
            settings.callback(k, x.clone(), success.clone())
        return success

    for k in range(1, steps + 1):
        logits, _, grad = loss_and_grad(model, x, labels, "ce", targeted)
        success = track(k - 1, logits)
        alpha = cosine_schedule(settings.alpha_init, settings.alpha_final, k, steps)
        delta = x - inputs + alpha * _unit_gradient(grad, settings.generator)
        epsilon = _update_epsilon(epsilon, success, rule(k, success), worst)
        x = _project_to_sphere(inputs, delta, epsilon, settings.quantize, settings.levels)
    with torch.no_grad():
        track(steps, model(x))
    return best_adv, best_norm, x


def _quantize_toward(x: Tensor, inputs: Tensor, levels: int) -> Tensor:
    """Quantise ``x`` to the intensity grid without moving any coordinate farther from ``inputs``
    than it is (exact when ``inputs`` lie on the grid): round to nearest, and where that rounds
    away from the input, take the grid point on the other side of ``x``."""
    scale = levels - 1
    u, v = x * scale, inputs * scale
    q = u.round()
    away = (q - v).abs() > (u - v).abs()
    q = torch.where(away, q - torch.sign(q - u), q)
    return clip_box(q / scale)


def _cap_norm(
    inputs: Tensor,
    best_adv: Tensor,
    best_norm: Tensor,
    last: Tensor,
    max_norm: float,
    quantize: bool,
    levels: int,
) -> Tensor:
    """For adversarial training (ANU Sec. 4, Eq. 7; Rony et al. Sec. 4): samples fooled within
    ``max_norm`` keep their best adversarial; the others return the last iterate projected onto
    the ``max_norm`` ball (and re-quantised towards the input). Every result has norm <= max_norm.
    """
    fooled = best_norm <= max_norm
    chosen = torch.where(view_like(fooled, inputs), best_adv, last)
    radius = torch.full_like(best_norm, max_norm)
    projected = clip_box(inputs + project_lp_ball(chosen - inputs, radius, 2))
    if quantize:
        quantized = _quantize_toward(projected, inputs, levels)
        bound = lp_norm(projected - inputs, 2).clamp_min(max_norm)
        within = lp_norm(quantized - inputs, 2) <= bound
        projected = torch.where(view_like(within, inputs), quantized, projected)
    return torch.where(view_like(fooled, inputs), best_adv, projected)


def _run(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    settings: _Settings,
    make_rule: Callable[[Tensor], NormRule],
) -> Tensor:
    """Check the arguments, run the shared loop in attack mode, and apply ``max_norm``."""
    settings.check()
    validate(model, inputs, labels, probe=1)  # the loop's first pass gives the clean logits
    with attack_mode(model):
        best_adv, best_norm, last = _decoupled_loop(
            model, inputs, labels, settings, make_rule(inputs)
        )
    if settings.max_norm is not None:
        best_adv = _cap_norm(
            inputs, best_adv, best_norm, last, settings.max_norm, settings.quantize, settings.levels
        )
    return best_adv.detach()


# --------------------------------------------------------------------------- public attacks


@contract
def ddn(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    targeted: bool = False,
    steps: int = 100,
    init_epsilon: float = 1.0,
    gamma: float = 0.05,
    alpha_init: float = 1.0,
    alpha_final: float = 0.01,
    max_norm: float | None = None,
    quantize: bool = False,
    levels: int = 256,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Decoupled Direction and Norm L2 attack (Rony et al., CVPR 2019; Algorithm 1 of the ANU
    paper), batched over samples.

    From delta_0 = 0 and eps_0 = ``init_epsilon``, each of the ``steps`` iterations takes the
    gradient g of the cross-entropy at x'_{k-1} (negated when ``targeted``; line 4), steps
    delta_k = delta_{k-1} + alpha_k g / ||g||_2 (line 5) with alpha_k cosine-annealed from
    ``alpha_init`` to ``alpha_final``, sets eps_k = (1 - gamma) eps_{k-1} if x'_{k-1} is
    adversarial else (1 + gamma) eps_{k-1} (lines 6-10), and projects onto the eps_k-sphere and
    the box: x'_k = clip(x + eps_k delta_k / ||delta_k||_2) (lines 11-12), rounded to ``levels``
    intensities when ``quantize`` (Rony et al. quantise to 8 bits). Returns per sample the
    adversarial iterate of lowest L2 norm (line 14), or the input where none was found.

    ``max_norm`` (adversarial training, Rony et al. Sec. 4): samples not fooled within
    ``max_norm`` return instead their last iterate projected onto the ``max_norm`` L2 ball, so
    every output has norm <= max_norm. ``generator`` draws the random direction that replaces a
    zero gradient. ``callback(k, x'_k, is_adv)`` sees every evaluated iterate.
    Defaults per dataset: ``DDN_DEFAULTS``.
    """
    _check_open_unit(gamma, "gamma")
    settings = _Settings(
        targeted=targeted,
        steps=steps,
        init_epsilon=init_epsilon,
        alpha_init=alpha_init,
        alpha_final=alpha_final,
        max_norm=max_norm,
        quantize=quantize,
        levels=levels,
        generator=generator,
        callback=callback,
    )
    return _run(model, inputs, labels, settings, lambda like: FixedFactor(gamma, like))


@contract
def anu(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    targeted: bool = False,
    steps: int = 100,
    init_epsilon: float = 1.0,
    gamma0: float = 0.2,
    alpha_gamma: float = 0.1,
    gamma_max: float = 0.9,
    alpha_init: float = 1.0,
    alpha_final: float = 0.01,
    max_norm: float | None = None,
    quantize: bool = False,
    levels: int = 256,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Self-adaptive Norm Update L2 attack (Liu and Cao, Algorithm 2), batched over samples.

    DDN (see ``ddn``) with a per-sample norm-update factor gamma_k in place of the constant gamma:
    starting from gamma_0 = ``gamma0`` and A_{-1} = False (line 2), gamma_k =
    (1 + alpha_gamma_k) gamma_{k-1} if x'_{k-2} and x'_{k-1} are both adversarial or both not,
    else (1 - alpha_gamma_k) gamma_{k-1} (lines 7-15); then eps_k = (1 -/+ gamma_k) eps_{k-1}
    (lines 16-20). alpha_gamma_k is cosine-annealed from ``alpha_gamma`` to 0 (Sec. 5.2), and
    gamma_k is capped at ``gamma_max`` (not in the paper; keeps eps_k positive).

    ``alpha_gamma=0`` gives exactly ``ddn(..., gamma=gamma0)`` (Sec. 3.2). The defaults are the
    paper's untargeted CIFAR-10 values; per dataset see ``ANU_DEFAULTS`` (untargeted, Table 1)
    and ``ANU_TARGETED_DEFAULTS`` (Table 2). ``max_norm``, ``quantize``, ``levels``,
    ``generator`` and ``callback`` behave as in ``ddn``.
    """
    _check_open_unit(gamma0, "gamma0")
    _check_open_unit(gamma_max, "gamma_max")
    if gamma0 > gamma_max:
        raise ValueError(f"gamma0 must be <= gamma_max = {gamma_max}, got {gamma0!r}")
    number = isinstance(alpha_gamma, (int, float)) and not isinstance(alpha_gamma, bool)
    if not number or not 0.0 <= alpha_gamma < 1.0:
        raise ValueError(f"alpha_gamma must be a number in [0, 1), got {alpha_gamma!r}")
    settings = _Settings(
        targeted=targeted,
        steps=steps,
        init_epsilon=init_epsilon,
        alpha_init=alpha_init,
        alpha_final=alpha_final,
        max_norm=max_norm,
        quantize=quantize,
        levels=levels,
        generator=generator,
        callback=callback,
    )
    return _run(
        model,
        inputs,
        labels,
        settings,
        lambda like: AdaptiveFactor(gamma0, alpha_gamma, gamma_max, steps, like),
    )
