"""Convex-programming attacks: the Gradient-based Norm-constrained method (GNII) of
Balda, Behboodi & Mathar, "On Generation of Adversarial Examples using Convex Programming"
(2018), and the paper's random Bernoulli baseline.

The attacks linearise a loss L around x and solve (GNII)

    min_eta  L(x) + eta^T grad L(x)   s.t.  ||eta||_p <= eps,

whose closed form (Proposition 2, Eq. 6) is eta = -eps * sign(g)|g|^(q-1) / ||g||_q^(q-1) with
q the dual exponent of p (Eq. 7 for p = inf: eta = -eps * sign(g); p = 1 moves the single
largest-|g| coordinate; p = 2 the normalised gradient). The optimal value is
L(x) - eps * ||g||_q, so (GN) is infeasible when eps * ||g||_q < L(x) (Proposition 1, Eq. 5).

* ``gn``            Algorithm 1: L the margin of Eq. (3), min_{l != k} f_k - f_l, linearised at
                    x: by default through its gradient at x, the gradient of the active piece
                    (``pieces='active'``, one backward pass, the (GNII) of the paper);
                    ``pieces='all'`` linearises every piece and keeps the best (the exact
                    minimum of the piecewise-linearised margin, K class gradients).
* ``gn_iterative``  Algorithm 1-n: n successive linearisations with budget eps/n each, summed.
* ``gn_simple``     Algorithm 2: L(x) approximated by the single score f_k(x).
* ``bernoulli_noise`` / ``bernoulli``  the "Random" baseline of Section IV.

The scores f are the logits by default (``margin='logits'``), as in the authors' reference
implementation; ``margin='probabilities'`` uses the softmax output of Eq. (2).

The box [0, 1]. Each linearised step also satisfies 0 <= x + eta <= 1. Where the box-constrained
linear programme has a closed form the step solves it exactly (``gn_box_step``):

* p = inf: per-coordinate bounds max(-eps, -x_i) <= eta_i <= min(eps, 1 - x_i); the minimiser of
  a separable linear objective is the bound opposite to sign(g_i), i.e. clip(x - eps sign g) - x.
* p = 1: a fractional knapsack: coordinates sorted by |g_i| are filled up to their room in the
  descent direction (x_i or 1 - x_i) until the L1 budget is spent (one sort per sample).
* other p (2 included): the unconstrained Eq. (6) step followed by clipping to the box
  (clipping only shrinks |eta_i|, so the budget still holds; the result is not the exact
  box-constrained optimum).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._core import (
    INF,
    EpsLike,
    NormLike,
    attack_mode,
    check_int,
    clip_box,
    contract,
    flat,
    parse_norm,
    per_sample,
    steepest_direction,
    validate,
    view_like,
)
from ._core import margin as margin_loss
from .linearisation import class_gradients

MARGINS = ("probabilities", "logits")
PIECES = ("active", "all")
_OBJECTIVES = ("margin", "score")


# --------------------------------------------------------------------------- linearised steps


def gn_step(grad: Tensor, eps: EpsLike, p: NormLike) -> Tensor:
    """Closed-form solution of the linearised problem (GNII), Proposition 2, Eq. (6)/(7):
    argmin_{||eta||_p <= eps} eta^T grad, per sample, without the box.

    ``grad`` is a batch (N, ...); ``eps`` a float or an (N,) tensor; ``p`` any norm >= 1.
    The result has ||eta||_p = eps and eta^T grad = -eps * ||grad||_q (q = p/(p-1)); a sample
    with a zero gradient gets eta = 0. For p = 1 the single largest-|grad| coordinate moves.
    """
    norm = parse_norm(p, allowed=None)
    radius = per_sample(eps, grad, "eps")
    return -view_like(radius, grad) * steepest_direction(grad, norm)


def _l1_box_step(g: Tensor, x: Tensor, radius: Tensor) -> Tensor:
    """Exact argmin of g^T eta s.t. ||eta||_1 <= r, 0 <= x + eta <= 1 on (N, D) tensors:
    the greedy fractional-knapsack solution (largest |g_i| first, each up to its room)."""
    direction = -g.sign()
    room = torch.where(direction > 0, 1.0 - x, x).clamp_min(0) * direction.abs()
    order = g.abs().argsort(dim=1, descending=True)
    room_sorted = room.gather(1, order)
    spent_before = room_sorted.cumsum(1) - room_sorted
    amount_sorted = torch.minimum(room_sorted, (radius[:, None] - spent_before).clamp_min(0))
    amount = torch.zeros_like(g).scatter_(1, order, amount_sorted)
    return direction * amount


def gn_box_step(grad: Tensor, inputs: Tensor, eps: EpsLike, p: NormLike) -> Tensor:
    """(GNII) with the box: argmin eta^T grad s.t. ||eta||_p <= eps and 0 <= inputs + eta <= 1.

    Exact for p = inf (clip of Eq. 7, which is optimal coordinate-wise) and for p = 1 (sorted
    fractional knapsack); for other p the Eq. (6) step is clipped to the box (feasible, not
    optimal). Returns eta (same shape as ``inputs``), with ||eta||_p <= eps.
    """
    norm = parse_norm(p, allowed=None)
    radius = per_sample(eps, inputs, "eps")
    if norm == 1:
        eta = _l1_box_step(flat(grad), flat(inputs), radius)
        return eta.reshape(inputs.shape)
    step = gn_step(grad, radius, norm)
    return clip_box(inputs + step) - inputs


# --------------------------------------------------------------------------- the loss L(x)


def _scores(logits: Tensor, kind: str) -> Tensor:
    return logits.softmax(1) if kind == "probabilities" else logits


def _loss(scores: Tensor, labels: Tensor, targeted: bool, objective: str) -> Tensor:
    """L per sample, to be *decreased* by the attack.

    objective 'margin' (Eq. 3): untargeted f_y - max_{l != y} f_l; targeted
    max_{j != t} f_j - f_t, which is L_t = f_k - f_t of Section III with k the current top
    class other than t. objective 'score' (Algorithm 2): f_y untargeted, -f_t targeted.
    """
    if objective == "margin":
        return margin_loss(scores, labels, targeted)
    chosen = scores.gather(1, labels[:, None]).squeeze(1)
    return -chosen if targeted else chosen


def linearised_loss(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    targeted: bool = False,
    margin: str = "logits",
    objective: str = "margin",
) -> tuple[Tensor, Tensor]:
    """L(x) and grad_x L(x) per sample (the ingredients of Eq. 5 and Eq. 6).

    ``margin='logits'`` uses the raw logits as f, ``'probabilities'`` the softmax scores of
    Eq. (2)-(3). ``objective='margin'`` is Eq. (3) (or L_t when ``targeted``), with the gradient
    of its active piece; ``'score'`` is the Algorithm 2 approximation L(x) ~ f_k(x).
    No parameter gradients are accumulated.
    """
    if margin not in MARGINS:
        raise ValueError(f"margin must be one of {MARGINS}, got {margin!r}")
    if objective not in _OBJECTIVES:
        raise ValueError(f"objective must be one of {_OBJECTIVES}, got {objective!r}")
    x = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        value = _loss(_scores(model(x), margin), labels, targeted, objective)
        (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad.detach()


def all_class_gradients(
    model: nn.Module, inputs: Tensor, *, margin: str = "logits"
) -> tuple[Tensor, Tensor]:
    """Scores f(x) (N, K) and their input gradients (N, K, *input_shape), all classes at once:
    the batch is replicated K times, copy c backpropagates class c, so one forward and one
    backward pass of N*K samples give every per-class gradient (memory: K times one batch).
    ``margin`` picks logits or softmax probabilities as f."""
    if margin not in MARGINS:
        raise ValueError(f"margin must be one of {MARGINS}, got {margin!r}")
    with torch.no_grad():
        k = model(inputs[:1]).shape[1]
    classes = torch.arange(k, device=inputs.device).expand(inputs.shape[0], k)
    return class_gradients(
        model, inputs, classes, method="replicate", scores=lambda z: _scores(z, margin)
    )


def margin_pieces(scores: Tensor, grads: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The pieces of the Eq. (3) minimum: L_l = f_y - f_l (N, K), +inf at l = y, and their
    gradients grad f_y - grad f_l (N, K, D)."""
    n, k = scores.shape
    values = scores.gather(1, labels[:, None]) - scores
    values = values.scatter(1, labels[:, None], INF)
    g = grads.reshape(n, k, -1)
    own = g.gather(1, labels[:, None, None].expand(n, 1, g.shape[2]))
    return values, own - g


def _linf_box_values(piece_grads: Tensor, x: Tensor, radius: Tensor) -> Tensor:
    """min of eta^T g over ||eta||_inf <= r, 0 <= x + eta <= 1 for every piece, (N, K), without
    forming eta: coordinate i moves by -min(r, x_i) where g_i > 0 and by min(r, 1 - x_i) where
    g_i < 0, so the minimum is -(relu(g) . min(r, x) + relu(-g) . min(r, 1 - x))."""
    r = radius[:, None]
    down = torch.minimum(x.clamp(0, 1), r)
    up = torch.minimum((1 - x).clamp(0, 1), r)
    return -(
        torch.einsum("nkd,nd->nk", piece_grads.clamp_min(0), down)
        + torch.einsum("nkd,nd->nk", (-piece_grads).clamp_min(0), up)
    )


def _best_piece_step(
    model: nn.Module, x: Tensor, labels: Tensor, radius: Tensor, p: float, margin_kind: str
) -> Tensor:
    """Exact minimiser of the linearised Eq. (3) margin min_l [L_l + eta^T grad L_l] over the
    ball (and the box where ``gn_box_step`` is exact): min over eta and l commute, so solve
    each piece in closed form and keep the piece with the lowest linearised value."""
    scores, grads = all_class_gradients(model, x, margin=margin_kind)
    values, piece_grads = margin_pieces(scores, grads, labels)
    n, k, d = piece_grads.shape
    rows = torch.arange(n, device=x.device)
    if p == INF:  # the optimal values in closed form; eta only for the best piece
        best = (values + _linf_box_values(piece_grads, flat(x), radius)).argmin(1)
        return gn_box_step(piece_grads[rows, best].reshape(x.shape), x, radius, p)
    flat_grads = piece_grads.reshape(n * k, d)
    flat_x = flat(x).repeat_interleave(k, 0)
    eta = gn_box_step(flat_grads, flat_x, radius.repeat_interleave(k), p)
    predicted = values + (eta * flat_grads).sum(1).reshape(n, k)
    best = predicted.argmin(1)
    return eta.reshape(n, k, d)[rows, best].reshape(x.shape)


# --------------------------------------------------------------------------- attacks


def _prepare(
    model, inputs, labels, eps, norm, margin_kind, pieces="active"
) -> tuple[float, Tensor]:
    p = parse_norm(norm, allowed=None)
    if margin_kind not in MARGINS:
        raise ValueError(f"margin must be one of {MARGINS}, got {margin_kind!r}")
    if pieces not in PIECES:
        raise ValueError(f"pieces must be one of {PIECES}, got {pieces!r}")
    validate(model, inputs, labels)
    return p, per_sample(eps, inputs, "eps")


def _run(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    radius: Tensor,
    p: float,
    steps: int,
    targeted: bool,
    margin_kind: str,
    objective: str,
    pieces: str = "active",
) -> Tensor:
    """``steps`` linearised box-constrained steps of budget radius/steps each, summed
    (Algorithm 1 for steps = 1, Algorithm 1-n otherwise). By the triangle inequality the total
    perturbation stays within radius; every iterate stays in [0, 1]."""
    x = inputs.detach().clone()
    step_radius = radius / steps
    with attack_mode(model):
        for _ in range(steps):
            if objective == "margin" and not targeted and pieces == "all":
                eta = _best_piece_step(model, x, labels, step_radius, p, margin_kind)
            else:
                _, grad = linearised_loss(
                    model, x, labels, targeted=targeted, margin=margin_kind, objective=objective
                )
                eta = gn_box_step(grad, x, step_radius, p)
            x = clip_box(x + eta).detach()
    return x


@contract
def gn(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    eps: EpsLike,
    norm: NormLike = INF,
    targeted: bool = False,
    margin: str = "logits",
    pieces: str = "active",
) -> Tensor:
    """Algorithm 1 of Balda et al. (2018): one closed-form solution of (GNII) (Proposition 2,
    Eq. 6; Eq. 7 for p = inf) with L the margin of Eq. (3), L(x) = min_{l != y} f_y(x) - f_l(x)
    (y = ``labels``, the true class; the paper's k(x) for correctly classified inputs).

    ``pieces`` says how the minimum of K - 1 pieces is linearised:

    * ``'active'`` (default): L(x) + eta^T grad L(x), with grad L(x) the gradient of the active
      piece f_y - f_l*, l* = argmax_{l != y} f_l(x) (the gradient of L wherever it is
      differentiable). This is (GNII) as the paper writes it (Section II: "L(x + eta) ~ L(x) +
      eta^T grad L(x), where grad L(x) is the gradient of L(x)"); finding l* needs the K
      scores only (Section IV: evaluating L "must search over all l", a forward-pass cost),
      so one forward and one backward pass suffice, about the cost of one FGSM step.
    * ``'all'``: every piece is linearised and (GNII) solved for each in closed form, keeping
      the piece with the lowest linearised value L_l - eps * ||grad L_l||_q. Since the minima
      over eta and over l commute, this is the exact minimum of the piecewise-linearised margin
      over the ball; it needs all K class gradients (one batched backward of N*K samples, about
      K times the cost). On a linear classifier with ``margin='logits'`` it fools exactly when
      eps exceeds the minimal distance to the decision boundary (box permitting); 'active'
      only guarantees that for the boundary of the runner-up class.

    'active' is the default because it is (GNII) with the gradient of L as Eq. (GN) writes it
    and costs about one FGSM pass; 'all' is a stronger single-step variant at about K times the
    cost. The paper also says to "linearize L through the perturbation analysis performed on
    each individual function" (Section II), which 'all' follows literally; its experiments do
    not say which of the two was run.

    ``targeted=True`` uses L_t = f_k - f_t (Section III) with k the best class other than the
    target t = ``labels``: a single piece, so ``pieces`` does not apply. ``norm`` is any
    p >= 1: p = inf moves every pixel by eps along -sign(grad), p = 1 the largest-gradient
    coordinate, p = 2 the normalised gradient.

    ``margin='logits'`` (default) takes f as the logits, as the authors' reference code does;
    it does not saturate on confident models. ``'probabilities'`` takes f as the softmax output
    (Eq. 2 reads f as having unit L1 norm); on confident models its gradients underflow in
    float32, and coordinates whose gradient is exactly zero do not move. The box [0, 1] is
    handled exactly for p in {1, inf} and by clipping otherwise (see ``gn_box_step``).
    Returns x + eta in [0, 1] with ||eta||_p <= eps (``eps`` a float or an (N,) tensor).
    """
    p, radius = _prepare(model, inputs, labels, eps, norm, margin, pieces)
    return _run(model, inputs, labels, radius, p, 1, targeted, margin, "margin", pieces)


@contract
def gn_iterative(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    eps: EpsLike,
    norm: NormLike = INF,
    steps: int = 10,
    targeted: bool = False,
    margin: str = "logits",
    pieces: str = "active",
) -> Tensor:
    """Algorithm 1-n of Balda et al. (2018, Section IV): ``steps`` = n successive
    linearisations of the Eq. (3) margin (``pieces`` as in ``gn``: the active piece by default,
    one backward pass per step; 'all' pieces at K times the cost; y stays the class of the
    clean input), each solved in closed form (Eq. 6/7, box as in ``gn_box_step``) with budget
    eps/n at the current iterate; the n steps are summed, so the total perturbation has
    ||eta||_p <= eps. No early stop: every sample takes all n steps, as in the paper.
    Other arguments as in ``gn``.
    """
    check_int(steps, "steps", 1)
    p, radius = _prepare(model, inputs, labels, eps, norm, margin, pieces)
    return _run(model, inputs, labels, radius, p, steps, targeted, margin, "margin", pieces)


@contract
def gn_simple(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    eps: EpsLike,
    norm: NormLike = INF,
    targeted: bool = False,
    margin: str = "logits",
) -> Tensor:
    """Algorithm 2 of Balda et al. (2018, Section IV): (GNII) solved once with L(x)
    approximated by the single score f_k(x) (k = ``labels``), so only one gradient of one
    output is needed whatever the number of classes. Targeted: L = -f_t (raise the target's
    score). Other arguments as in ``gn``.
    """
    p, radius = _prepare(model, inputs, labels, eps, norm, margin)
    return _run(model, inputs, labels, radius, p, 1, targeted, margin, "score")


def bernoulli_noise(
    inputs: Tensor, eps: EpsLike, *, generator: torch.Generator | None = None
) -> Tensor:
    """The "Random" baseline of Balda et al. (2018, Section IV): independent entries
    +eps or -eps with probability 1/2 each, added to ``inputs`` and clipped to [0, 1]
    (so ||eta||_inf <= eps). ``eps`` is a float or an (N,) tensor; ``generator`` makes it
    deterministic."""
    radius = per_sample(eps, inputs, "eps")
    coins = torch.randint(0, 2, inputs.shape, generator=generator, device=inputs.device)
    signs = coins.to(inputs.dtype) * 2 - 1
    return clip_box(inputs + view_like(radius, inputs) * signs).detach()


@contract
def bernoulli(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    eps: EpsLike,
    targeted: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``bernoulli_noise`` behind the attack signature (for the registry and the runner); the
    model and labels are only validated, never used: the noise ignores them, and ``targeted``
    is accepted for uniformity."""
    validate(model, inputs, labels)
    return bernoulli_noise(inputs, eps, generator=generator)
