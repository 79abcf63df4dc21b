"""The public trust-region attack (Yao, Gholami, Xu, Keutzer & Mahoney, CVPR 2019): argument
checks, target resolution, and the iterations (``loop.py``) followed by the optional boundary
refinement (``refine.py``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .._core import (
    INF,
    EpsLike,
    NormLike,
    attack_mode,
    attacked_classes,
    check_int,
    check_positive,
    contract,
    parse_norm,
    validate,
)
from ..linearisation import candidate_classes
from .loop import TrustRegionSettings, run_iterations
from .refine import _refine

TARGET_MODES = ("best", "hardest")
SOLVERS = ("lanczos", "steihaug")  # second-order subproblem solvers


def _resolve_target(
    target: str | Tensor, labels: Tensor, targeted: bool, num_classes: int
) -> tuple[str, Tensor | None]:
    if isinstance(target, str):
        if target not in TARGET_MODES:
            raise ValueError(f"target must be one of {TARGET_MODES} or a tensor, got {target!r}")
        if targeted:
            if target != "best":
                raise ValueError("target='hardest' is untargeted; with targeted=True leave target")
            return "fixed", labels
        return target, None
    if not isinstance(target, Tensor):
        raise TypeError(
            f"target must be 'best', 'hardest' or a tensor, got {type(target).__name__}"
        )
    return "fixed", attacked_classes(labels, target, targeted, num_classes)


def _check_radius(value: EpsLike | None, name: str) -> None:
    if value is None or isinstance(value, Tensor):
        return
    check_positive(value, name, allow_zero=name == "radius_min")


@contract
def trust_region(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    norm: NormLike = 2,
    adaptive: bool = True,
    radius: EpsLike | None = None,
    sigma1: float = 0.99,
    sigma2: float = 0.97,
    eta: float = 1.2,
    two_sided: bool = True,
    radius_min: EpsLike | None = None,
    radius_max: EpsLike | None = None,
    target: str | Tensor = "best",
    candidates: int = 9,
    refresh: int = 3,
    ambiguity: float = 1.2,
    final_search: int = 7,
    steps: int = 300,
    order: int = 1,
    overshoot: float = 0.02,
    cg_steps: int = 5,
    solver: str = "lanczos",
    stop_at_boundary: bool = True,
    targeted: bool = False,
    refine_steps: int = 0,
    refine_shrink: float = 0.8,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
) -> Tensor:
    """Trust-region attack (Yao, Gholami, Xu, Keutzer & Mahoney, "Trust Region Based Adversarial
    Attack on Neural Networks", CVPR 2019), minimal-norm; first order for L2 and Linf, second
    order (``order=2``) for L2.

    Each iteration j minimises the local model of the margin f = z_t - z_i (t the true class, i
    the attacked class) within the trust region ||dx||_p <= eps^j, eq. (3) and Algorithm 1:
    first order m^j(dx) = <g, dx>, whose minimiser is -eps^j g/||g||_2 (L2) or -eps^j sign(g)
    (Linf); as in the authors' code the step stops at the linearised boundary f + m = 0 when
    that is nearer than the radius, and such a boundary-reaching step is extended along dx by
    ``overshoot`` times the norm of the whole new perturbation (a per-step factor stalls on the
    boundary, and overshooting the whole perturbation compounds at junctions of classes), so a
    linear model is crossed at 1 + overshoot times its optimum. ``stop_at_boundary=False`` takes
    the minimiser of the model over the trust region instead, Algorithm 1 as printed (no stop,
    no overshoot; the protocol of the paper's Table 5: fixed radius, accuracy after k steps).

    Second order adds 1/2 <dx, H dx> with H the Hessian of f (eq. (3)), through Hessian-vector
    products by double backward, the subproblem solved in a Krylov space of dimension
    ``cg_steps``: ``solver='lanczos'`` by Lanczos as the paper does (Sec. 3; GLTR, ``gltr``),
    stopping at the smallest step that reaches the quadratic model's zero when the model reaches
    it in the ball; ``'steihaug'`` by Steihaug-Toint truncated CG (the paper's [25],
    ``steihaug_cg``), shortened along its step to the model's first zero: cheaper, but where its
    first direction, -g, leaves the ball it returns the steepest-descent direction, so only the
    step length uses the curvature. Where H q = 0 for every Krylov vector (piecewise-linear ReLU
    networks, Sec. 3, [29, Thm. 1]) the first-order step is used, so ``order=2`` equals
    ``order=1`` there.

    Steps leaving [0, 1] are clipped, and pixels on the box boundary are left out of the step
    where it would push them outwards; the predicted change m^j is then re-measured on the step
    actually taken. The radius follows Algorithm 1 (``update_radius``) with the paper's ratio
    rho = [f(x^{j+1}) - f(x^j)] / m^j(dx^j) of the actual to the predicted change of the same
    f = z_t - z_i, scale-free, so its thresholds carry over between models. The public code
    (github.com/amirgholami/TRAttack) divides the change by the radius instead (its thresholds
    then depend on the logit scale) and mixes the new true logit with the old target logit.
    rho costs nothing extra: f(x^{j+1}) comes from the next iteration's forward pass.
    ``two_sided=True`` (default) reads the paper's test, "the approximation of the function is
    accurate", on both sides of 1 (rho folded to min(rho, 1/rho)): a margin that falls much
    faster than its linear model predicts means a nearer boundary than the model says, which a
    long step crosses and overshoots, so the radius shrinks there too. Each sample stops at its
    first adversarial iterate; ``final_search`` bisection steps on the segment of that last step
    (forward passes only) then take the adversarial point nearest the previous iterate, which
    removes the part of the step beyond the boundary and the overshoot.

    Targets: ``'best'`` (default) recomputes at every iteration, among the ``candidates``
    highest-logit classes other than the label, the class with the smallest linearised distance
    (z_t - z_j)/||grad(z_t - z_j)||_q (Algorithm 1's index selection, q the dual exponent);
    ``'hardest'`` the one with the largest distance at the start, kept fixed (untargeted
    success: any misclassification, as in the paper); a tensor of classes (or ``targeted=True``
    with ``labels`` the targets): those classes, kept fixed, success when the target wins, and
    t is then the strongest other class at each iterate.

    ``'best'`` costs 1 + ``candidates`` backward passes per evaluation of the candidates'
    gradients; with ``refresh`` = k > 1 they are evaluated at most every k-th iteration of a
    sample, and in between the class is re-chosen from the current logits (free, from the
    forward pass) and the last gradient norms, at one backward pass per iteration (exact where
    gradients are constant). A sample due for fresh gradients gets them only while the choice
    is in doubt: its second-nearest class, by the last norms, lies within ``ambiguity`` times
    the nearest one's distance. Where one class is clearly nearest, stale norms would have to
    be off by that factor to change the choice, and the 1 + ``candidates`` passes are saved.
    For the same reason a refresh evaluates only the classes in doubt (within ``ambiguity``
    times the nearest distance), every candidate only after an inaccurate step (folded rho
    below 0.5, where all the norms may have changed).

    Defaults, chosen to need no tuning across datasets: when None, the radius and its bounds are
    relative to each sample's first linearised (DeepFool) distance d0: eps^0 = 0.03 d0,
    eps_min = 0.025 d0 (eps^0 / eta: one shrink below the start), eps_max = d0. d0 fixes the
    scale of the problem per sample (MNIST L2 distances are ~10x CIFAR-10's), where the code's
    absolute 5e-4..0.05 bounds suit only its normalised CIFAR-10. Small first steps that grow
    only while the linear model stays accurate follow the curved path to a nearer boundary point
    than a few long steps (the paper notes its adaptive results suffer from "relaxed sigma1 and
    sigma2"); hence sigma1 = 0.99, sigma2 = 0.97 with the two-sided test, and refresh = 3,
    ambiguity = 1.2. eta = 1.2, candidates = 9 (every other class of a 10-class problem) and
    overshoot = 0.02 as in the authors' code (the paper gives no eta). steps = 300 rather than
    the code's 100: each sample stops at its first adversarial iterate, so the cap costs only
    the samples that need it. eps_min = eps^0 / eta: Algorithm 1 shrinks the radius so that the
    local model becomes accurate, which on ReLU networks smaller radii do not buy (the ratio
    rho stays flat below the start), so shrinks below one step under the start only cost
    iterations. final_search = 7 leaves the point within 2^-7 of its last step. The
    measurements behind each default, side by side with adv-lib's tr (benchmarks/peers.py),
    are in docs/results/peers-tr.md and docs/results/peers-tr-floor.md.

    Cost per iteration, on the still-active samples only: one forward pass and the backward
    passes needed (1 + ``candidates`` for ``'best'``, one for a fixed class); ``order=2`` adds a
    forward/backward with graph and ``cg_steps`` + 1 double-backward products (Steihaug: up to
    ``cg_steps`` + 2).

    ``refine_steps`` > 0 (not in the paper; default 0 runs Algorithm 1 as published) continues
    from each adversarial found with that many boundary-refinement steps (FAB's backward step by
    ``refine_shrink`` towards the input, then the projection onto the linearised boundary, Croce
    & Hein 2020; ``refine.py``), keeping the smallest adversarial iterate, then bisects the
    segment from the input to it (10 forward passes). The first-success stop of Algorithm 1
    leaves the example on the decision boundary but not at its nearest point; the refinement
    moves it along the boundary towards that point. With 'hardest' or a fixed target the refined
    iterates must be classified as the attacked class.

    Args:
        model: classifier returning logits (N, K); put in eval mode for the attack, restored.
        inputs: (N, ...) inputs in [0, 1] (not modified).
        labels: (N,) true labels, or the targets with ``targeted=True``.
        norm: 2 or 'inf'.
        adaptive: Algorithm 1's radius rule; False keeps the radius fixed ("TR Non-Adap").
        radius: the first radius eps^0, a number or (N,) (absolute), or None for 0.03 d0.
        sigma1: rho above it grows the radius by ``eta``.
        sigma2: rho below it shrinks the radius by ``eta`` (<= sigma1).
        eta: radius growth / shrink factor, > 1.
        two_sided: rho is folded to min(rho, 1/rho) before the test (False: Algorithm 1 as
            printed, where any rho > sigma1 grows the radius).
        radius_min: lower bound of the radius (absolute), or None for 0.025 d0.
        radius_max: upper bound of the radius (absolute), or None for d0.
        target: 'best', 'hardest' or a (N,) tensor of classes to reach.
        candidates: the number of highest-logit other classes considered.
        refresh: with ``target='best'``, the candidates' gradients are evaluated every
            ``refresh`` iterations (1 + ``candidates`` backward passes); in between the class
            is re-chosen from the current logits and the last gradient norms (one backward).
        ambiguity: with ``target='best'``, a sample due for fresh gradients gets them only
            while its second-nearest class is within ``ambiguity`` times the nearest one's
            linearised distance, and only for the classes within that factor (>= 1; inf:
            always, for every candidate, every ``refresh`` iterations).
        final_search: bisection steps on the step that first reached an adversarial iterate
            (0: return that iterate itself, Algorithm 1 as printed).
        steps: the most iterations per sample.
        order: 1 (first order) or 2 (second order, L2 only).
        overshoot: relative extension of a boundary-reaching step, >= 0.
        cg_steps: Lanczos vectors (Steihaug: at most CG iterations), i.e. Hessian-vector
            products, per second-order step.
        solver: 'lanczos' (GLTR) or 'steihaug' for ``order=2``.
        stop_at_boundary: stop each step at the model's zero (False: the model's minimiser in
            the ball, Algorithm 1 as printed).
        targeted: ``labels`` are the classes to reach.
        refine_steps: boundary-refinement steps after the attack (0: none).
        refine_shrink: the backward step of the refinement, in (0, 1).
        callback: ``callback(j, iterates, succeeded)``, if given, is called after the check of
            iterate j (j = 0 is the clean input) with the (N, ...) current iterates (a sample
            that succeeded keeps its adversarial one) and the (N,) mask of samples that
            succeeded so far; it must not modify them. Calls stop early once every sample
            succeeded; it sees the trust-region iterations only (the paper's Table 5 from one
            run).

    Returns:
        The adversarial examples (the lowest-norm iterate found: the first adversarial one, or
        the smallest refined one), and the original input where none was found within ``steps``.
    """
    p = parse_norm(norm, (2.0, INF))
    check_int(order, "order", 1)
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if order == 2 and p != 2:
        raise ValueError("order=2 (second-order trust region) supports norm=2 only")
    check_int(steps, "steps", 1)
    check_int(candidates, "candidates", 1)
    check_int(refresh, "refresh", 1)
    check_positive(ambiguity, "ambiguity")
    if not ambiguity >= 1:
        raise ValueError(f"ambiguity must be >= 1, got {ambiguity!r}")
    check_int(final_search, "final_search", 0)
    check_int(cg_steps, "cg_steps", 1)
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    check_positive(overshoot, "overshoot", allow_zero=True)
    check_int(refine_steps, "refine_steps", 0)
    number = isinstance(refine_shrink, (int, float)) and not isinstance(refine_shrink, bool)
    if not number or not 0.0 < refine_shrink < 1.0:
        raise ValueError(f"refine_shrink must be a number in (0, 1), got {refine_shrink!r}")
    check_positive(sigma1, "sigma1")
    check_positive(sigma2, "sigma2")
    if not sigma2 <= sigma1:
        raise ValueError(f"sigma2 must be <= sigma1, got sigma1={sigma1}, sigma2={sigma2}")
    check_positive(eta, "eta")
    if not eta > 1:
        raise ValueError(f"eta must be > 1, got {eta!r}")
    for value, name in ((radius, "radius"), (radius_min, "radius_min"), (radius_max, "radius_max")):
        _check_radius(value, name)
    flags = (
        (adaptive, "adaptive"),
        (stop_at_boundary, "stop_at_boundary"),
        (two_sided, "two_sided"),
    )
    for flag, name in flags:
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    clean_logits = validate(model, inputs, labels)
    mode, targets = _resolve_target(target, labels, targeted, clean_logits.shape[1])
    classes = candidate_classes(clean_logits, labels, candidates + 1)
    settings = TrustRegionSettings(
        mode=mode,
        targets=targets,
        classes=classes,
        p=p,
        order=order,
        adaptive=adaptive,
        radius=radius,
        radius_min=radius_min,
        radius_max=radius_max,
        sigma1=sigma1,
        sigma2=sigma2,
        eta=eta,
        two_sided=two_sided,
        overshoot=overshoot,
        steps=steps,
        cg_steps=cg_steps,
        solver=solver,
        stop_at_boundary=stop_at_boundary,
        refresh=refresh,
        ambiguity=float(ambiguity),
        final_search=final_search,
    )
    with attack_mode(model):
        adv, norms, attacked = run_iterations(model, inputs.detach(), labels, settings, callback)
        if refine_steps > 0:
            _refine(
                model,
                inputs.detach(),
                labels,
                attacked,
                adv,
                norms,
                p,
                refine_steps,
                refine_shrink,
                overshoot,
            )
    return adv.detach()
