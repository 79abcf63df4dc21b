"""Convex-programming attacks (Balda et al. 2018): closed form of (GNII) against brute force,
Proposition 1, the box, targeted/untargeted attacks, the Bernoulli baseline and the robustness
measures."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from linear_harness import LinearClassifier, make_problem, minimal_distance
from scipy.optimize import linprog, minimize

from advx.attacks import convex
from advx.attacks._core import dual_exponent, lp_norm
from advx.evaluation import robustness

INF = float("inf")
NORMS = [1.0, 1.5, 2.0, 3.0, INF]


def _random_grads(n=5, d=7, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=torch.float64)


def _brute_force_min(g: np.ndarray, eps: float, p: float) -> float:
    """min g^T eta over ||eta||_p <= eps: an LP for p in {1, inf}, SLSQP otherwise."""
    d = g.size
    if p == INF:
        return linprog(g, bounds=[(-eps, eps)] * d).fun
    if p == 1:  # eta = u - v, u, v >= 0, sum(u + v) <= eps
        res = linprog(np.concatenate([g, -g]), A_ub=np.ones((1, 2 * d)), b_ub=[eps])
        return res.fun
    cons = {"type": "ineq", "fun": lambda e: eps**p - np.sum(np.abs(e) ** p)}
    best = np.inf
    for start in (-eps * g / np.linalg.norm(g), np.full(d, 1e-3)):
        res = minimize(lambda e: g @ e, start, constraints=[cons], method="SLSQP", tol=1e-12)
        if np.sum(np.abs(res.x) ** p) <= eps**p * (1 + 1e-6):
            best = min(best, res.fun)
    return best


def _random_sphere_values(g: torch.Tensor, eps: float, p: float, count=20000) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    points = torch.randn(count, g.numel(), generator=gen, dtype=g.dtype)
    points = points * (eps / lp_norm(points, p))[:, None]
    return points @ g


# --------------------------------------------------------------------------- gn_step


@pytest.mark.parametrize("p", NORMS)
def test_gn_step_attains_closed_form_value_and_budget(p):
    grads, eps = _random_grads(), 0.3
    eta = convex.gn_step(grads, eps, p)
    q = dual_exponent(p)
    torch.testing.assert_close(lp_norm(eta, p), torch.full((5,), eps, dtype=grads.dtype))
    torch.testing.assert_close((eta * grads).sum(1), -eps * lp_norm(grads, q))


@pytest.mark.parametrize("p", NORMS)
def test_gn_step_beats_brute_force(p):
    grads, eps = _random_grads(n=3), 0.5
    eta = convex.gn_step(grads, eps, p)
    ours = (eta * grads).sum(1)
    for i in range(grads.shape[0]):
        best = _brute_force_min(grads[i].numpy(), eps, p)
        assert ours[i].item() <= best + 1e-6
        assert ours[i].item() == pytest.approx(best, abs=1e-4)
        assert _random_sphere_values(grads[i], eps, p).min() >= ours[i] - 1e-9


def test_gn_step_per_sample_eps_zero_gradient_and_special_cases():
    grads = _random_grads(n=3)
    grads[1] = 0
    eps = torch.tensor([0.1, 0.2, 0.3], dtype=grads.dtype)
    eta = convex.gn_step(grads, eps, INF)
    assert torch.equal(eta[1], torch.zeros_like(eta[1]))
    torch.testing.assert_close(eta[[0, 2]], -eps[[0, 2], None] * grads[[0, 2]].sign())
    one_hot = convex.gn_step(grads, 0.4, 1)
    assert ((one_hot != 0).sum(1) == torch.tensor([1, 0, 1])).all()
    two = convex.gn_step(grads[[0]], 0.4, 2)
    torch.testing.assert_close(two, -0.4 * grads[[0]] / grads[[0]].norm())


@pytest.mark.parametrize("p", NORMS)
def test_proposition1_infeasible_below_bound_feasible_above(p):
    """(GN) has no solution iff eps ||g||_q < L(x) (Eq. 5); gn_step attains the minimum."""
    grads = _random_grads(n=4)
    values = torch.tensor([0.3, 1.0, 2.0, 0.05], dtype=grads.dtype)
    bound = values / lp_norm(grads, dual_exponent(p))
    below = values + (convex.gn_step(grads, 0.99 * bound, p) * grads).sum(1)
    above = values + (convex.gn_step(grads, 1.01 * bound, p) * grads).sum(1)
    assert (below > 0).all() and (above < 0).all()
    for i in range(4):  # nothing in the ball makes the linearised margin negative
        sampled = values[i] + _random_sphere_values(grads[i], 0.99 * bound[i].item(), p)
        assert (sampled > 0).all()


# --------------------------------------------------------------------------- the box


def _box_lp(g: np.ndarray, x: np.ndarray, eps: float, p: float) -> float:
    d = g.size
    if p == INF:
        bounds = [(max(-eps, -xi), min(eps, 1 - xi)) for xi in x]
        return linprog(g, bounds=bounds).fun
    # eta = u - v, 0 <= u <= 1 - x, 0 <= v <= x, sum(u + v) <= eps
    bounds = [(0, 1 - xi) for xi in x] + [(0, xi) for xi in x]
    return linprog(np.concatenate([g, -g]), A_ub=np.ones((1, 2 * d)), b_ub=[eps], bounds=bounds).fun


@pytest.mark.parametrize("p", [1.0, INF])
def test_box_step_is_exact_lp_solution(p):
    gen = torch.Generator().manual_seed(3)
    grads = torch.randn(6, 10, generator=gen, dtype=torch.float64)
    x = torch.rand(6, 10, generator=gen, dtype=torch.float64)
    x[:, :3] = torch.tensor([0.0, 1.0, 0.02], dtype=torch.float64)  # coordinates at the faces
    for eps in (0.05, 0.4, 3.0):
        eta = convex.gn_box_step(grads, x, eps, p)
        assert (x + eta >= -1e-12).all() and (x + eta <= 1 + 1e-12).all()
        assert (lp_norm(eta, p) <= eps + 1e-9).all()
        ours = (eta * grads).sum(1)
        for i in range(6):
            assert ours[i].item() == pytest.approx(
                _box_lp(grads[i].numpy(), x[i].numpy(), eps, p), abs=1e-7
            )


@pytest.mark.parametrize("p", [1.5, 2.0, 3.0])
def test_box_step_clips_for_other_norms(p):
    grads = _random_grads(n=4, d=9)
    x = torch.rand(4, 9, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    eta = convex.gn_box_step(grads, x, 0.8, p)
    expected = (x + convex.gn_step(grads, 0.8, p)).clamp(0, 1) - x
    torch.testing.assert_close(eta, expected)
    assert (lp_norm(eta, p) <= 0.8 + 1e-9).all()


# --------------------------------------------------------------------------- attacks


ATTACKS = [convex.gn, convex.gn_simple, functools.partial(convex.gn_iterative, steps=4)]
ALL_PIECES = [
    functools.partial(convex.gn, pieces="all"),
    functools.partial(convex.gn_iterative, steps=4, pieces="all"),
]


@pytest.mark.parametrize("attack", ATTACKS + ALL_PIECES)
@pytest.mark.parametrize("p", NORMS)
def test_attacks_respect_budget_and_box(attack, p):
    model, inputs, labels = make_problem(n=6)
    inputs = inputs.clone()
    inputs[0] = 0.0
    inputs[1] = 1.0  # points on the faces of the box
    eps = torch.linspace(0.1, 2.0, 6)
    adv = attack(model, inputs, labels, eps=eps, norm=p)
    assert adv.shape == inputs.shape
    assert (adv >= 0).all() and (adv <= 1).all()
    assert (lp_norm(adv - inputs, p) <= eps * (1 + 1e-5) + 1e-6).all()


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0, INF])
def test_gn_on_linear_model_is_exact(p):
    """With logits every piece of the Eq. (3) minimum is linear: the Proposition 1 bound over
    all pieces is the minimal distance to the decision boundary, and Algorithm 1 with
    ``pieces='all'`` fools exactly above it (the box does not bind for these small distances).
    With ``pieces='active'`` it fools exactly above the active piece's bound (the distance to
    the runner-up's boundary), which is larger for some samples: there 'active' can fail at
    an eps where 'all' succeeds (its step may still cross a third class's boundary)."""
    model, inputs, labels = make_problem(n=16, k=4, seed=4, dtype=torch.float64)
    distance = minimal_distance(model, inputs, labels, p)
    bounds = robustness.linearised_bounds(model, inputs, norm=p)
    torch.testing.assert_close(bounds, distance)
    active = robustness.linearised_bounds(model, inputs, norm=p, pieces="active")
    assert (active >= bounds - 1e-12).all()
    keep = active < 0.25
    assert keep.sum() >= 4
    x, y, dist, act = inputs[keep], labels[keep], distance[keep], active[keep]
    above = convex.gn(model, x, y, eps=1.01 * dist, norm=p, pieces="all")
    below = convex.gn(model, x, y, eps=0.99 * dist, norm=p, pieces="all")
    assert (model(above).argmax(1) != y).all()
    assert (model(below).argmax(1) == y).all()
    above_active = convex.gn(model, x, y, eps=1.01 * act, norm=p, pieces="active")
    below_active = convex.gn(model, x, y, eps=0.99 * dist, norm=p, pieces="active")
    assert (model(above_active).argmax(1) != y).all()
    assert (model(below_active).argmax(1) == y).all()
    gap = act > 1.05 * dist  # the runner-up is not the closest boundary
    assert gap.any()
    between = convex.gn(model, x[gap], y[gap], eps=1.01 * dist[gap], norm=p, pieces="active")
    assert (model(between).argmax(1) == y[gap]).any()  # 'all' fools every one of them here


@pytest.mark.parametrize("p", NORMS)
def test_active_equals_all_with_one_piece(p):
    """Two classes: the Eq. (3) minimum has a single piece, so linearising the active piece or
    all pieces is the same problem; both modes return the same points (single and iterated)."""
    model, inputs, labels = make_problem(n=8, k=2, seed=3, dtype=torch.float64)
    eps = torch.linspace(0.02, 0.3, 8, dtype=torch.float64)
    for attack in (convex.gn, functools.partial(convex.gn_iterative, steps=3)):
        active = attack(model, inputs, labels, eps=eps, norm=p, pieces="active")
        every = attack(model, inputs, labels, eps=eps, norm=p, pieces="all")
        torch.testing.assert_close(active, every)
        assert not torch.equal(active, inputs)


def test_active_equals_all_where_the_active_piece_is_best():
    """K = 10 classes on a nonlinear network: where the active piece (the runner-up class) also
    has the lowest linearised value L_l - eps ||grad L_l||_1 over the box, the best piece of
    'all' is the active one and the two modes return the same point; where another piece is
    better they differ (both cases occur here)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10)
    ).double()
    inputs = torch.rand(
        64, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    labels = model(inputs).argmax(1)
    scores, grads = convex.all_class_gradients(model, inputs)
    values, piece_grads = convex.margin_pieces(scores, grads, labels)
    eps = 0.01
    predicted = values + convex._linf_box_values(
        piece_grads, convex.flat(inputs), torch.full((64,), eps, dtype=torch.float64)
    )
    active_piece = values.argmin(1)
    agree = predicted.argmin(1) == active_piece
    assert agree.any() and (~agree).any()
    active = convex.gn(model, inputs, labels, eps=eps, pieces="active")
    every = convex.gn(model, inputs, labels, eps=eps, pieces="all")
    torch.testing.assert_close(active[agree], every[agree])
    assert not torch.allclose(active[~agree], every[~agree])


@pytest.mark.parametrize("eps", [0.01, 0.2, 0.7])
def test_linf_box_values_match_box_step(eps):
    """The closed-form p = inf piece values used by pieces='all' equal eta^T g of the exact
    box-constrained step (Eq. 7 clipped to the box), coordinates on the faces included."""
    gen = torch.Generator().manual_seed(8)
    grads = torch.randn(5, 4, 12, generator=gen, dtype=torch.float64)
    x = torch.rand(5, 12, generator=gen, dtype=torch.float64)
    x[:, :2] = torch.tensor([0.0, 1.0], dtype=torch.float64)
    radius = torch.full((5,), eps, dtype=torch.float64)
    values = convex._linf_box_values(grads, x, radius)
    flat_grads = grads.reshape(20, 12)
    eta = convex.gn_box_step(
        flat_grads, x.repeat_interleave(4, 0), radius.repeat_interleave(4), INF
    )
    torch.testing.assert_close(values, (eta * flat_grads).sum(1).reshape(5, 4))


class _BatchSizes(torch.nn.Module):
    """Records the batch size of every forward call."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.model(x)


def test_active_costs_one_gradient_all_costs_k():
    """pieces='active' evaluates the model on the batch only (validation + one gradient pass);
    pieces='all' backpropagates through K copies of it (all class gradients)."""
    model, inputs, labels = make_problem(n=6, k=5)
    counted = _BatchSizes(model)
    convex.gn(counted, inputs, labels, eps=0.1, pieces="active")
    assert counted.sizes == [6, 6]
    counted.sizes.clear()
    convex.gn(counted, inputs, labels, eps=0.1, pieces="all")
    assert max(counted.sizes) == 6 * 5


def test_all_class_gradients_match_jacobian():
    model, inputs, _ = make_problem(n=3, k=4, dtype=torch.float64)
    for kind in ("logits", "probabilities"):
        scores, grads = convex.all_class_gradients(model, inputs, margin=kind)
        for i in range(3):
            jac = torch.autograd.functional.jacobian(
                lambda z, kind=kind: convex._scores(model(z), kind)[0], inputs[[i]]
            )
            torch.testing.assert_close(grads[i], jac.reshape(grads[i].shape))
        assert scores.shape == (3, 4)


@pytest.mark.parametrize("margin", ["probabilities", "logits"])
def test_untargeted_linear_fooling(margin):
    model, inputs, labels = make_problem(n=16, seed=1)
    distance = minimal_distance(model, inputs, labels, INF)
    eps = 1.5 * distance
    single = convex.gn(model, inputs, labels, eps=eps, margin=margin)
    iterated = convex.gn_iterative(model, inputs, labels, eps=eps, steps=10, margin=margin)
    fooled_single = (model(single).argmax(1) != labels).float().mean()
    fooled_iterated = (model(iterated).argmax(1) != labels).float().mean()
    assert fooled_iterated >= 0.9
    assert fooled_iterated >= fooled_single - 1e-6


@pytest.mark.parametrize("attack", ATTACKS)
def test_targeted_reaches_targets(attack):
    model, inputs, labels = make_problem(n=16, seed=2)
    targets = (labels + 1) % 3
    adv = attack(model, inputs, targets, eps=0.1, targeted=True)
    success = (model(adv).argmax(1) == targets).float().mean()
    assert success >= (0.95 if isinstance(attack, functools.partial) else 0.75)


def test_targeted_gn_decreases_lt_exactly_on_linear_model():
    """L_t = z_k - z_t (Section III) with k the best class other than t is linear for a linear
    model: one Linf step lowers it by exactly eps * ||w_k - w_t||_1 (box not binding)."""
    model, inputs, labels = make_problem(n=16, seed=2, dtype=torch.float64)
    targets = (labels + 1) % 3
    logits = model(inputs).detach()
    k = logits.scatter(1, targets[:, None], -INF).argmax(1)
    adv = convex.gn(model, inputs, targets, eps=0.05, targeted=True, margin="logits")
    w = model.linear.weight.detach()

    def gap(z):
        return z.gather(1, k[:, None]).squeeze(1) - z.gather(1, targets[:, None]).squeeze(1)

    expected = gap(logits) - 0.05 * (w[k] - w[targets]).abs().sum(1)
    torch.testing.assert_close(gap(model(adv).detach()), expected)


@pytest.mark.parametrize("pieces", convex.PIECES)
@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_batch_equals_per_sample_and_contract(pieces, p):
    model, inputs, labels = make_problem(n=5, k=4)
    model.train()
    before = inputs.clone()
    eps = torch.tensor([0.05, 0.1, 0.2, 0.3, 0.4])
    for attack in (convex.gn, functools.partial(convex.gn_iterative, steps=3)):
        batch = attack(model, inputs, labels, eps=eps, norm=p, pieces=pieces)
        single = torch.cat(
            [
                attack(model, inputs[[i]], labels[[i]], eps=eps[[i]], norm=p, pieces=pieces)
                for i in range(5)
            ]
        )
        torch.testing.assert_close(batch, single)
    assert torch.equal(inputs, before)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_bad_arguments():
    model, inputs, labels = make_problem(n=2)
    with pytest.raises(ValueError, match="norm"):
        convex.gn(model, inputs, labels, eps=0.1, norm=0.5)
    with pytest.raises(ValueError, match="margin"):
        convex.gn(model, inputs, labels, eps=0.1, margin="softmax")
    with pytest.raises(ValueError, match="steps"):
        convex.gn_iterative(model, inputs, labels, eps=0.1, steps=0)
    with pytest.raises(ValueError, match="pieces"):
        convex.gn(model, inputs, labels, eps=0.1, pieces="best")
    with pytest.raises(ValueError, match="eps"):
        convex.gn_simple(model, inputs, labels, eps=-1.0)
    with pytest.raises(ValueError, match="inputs"):
        convex.gn(model, inputs + 2, labels, eps=0.1)


# --------------------------------------------------------------------------- random baseline


def test_bernoulli_noise():
    inputs = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    noisy = convex.bernoulli_noise(inputs, 0.05, generator=torch.Generator().manual_seed(1))
    again = convex.bernoulli_noise(inputs, 0.05, generator=torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)
    torch.testing.assert_close((noisy - inputs).abs(), torch.full_like(inputs, 0.05))
    signs = (noisy - inputs).sign()
    assert 0.35 < (signs > 0).float().mean() < 0.65
    clipped = convex.bernoulli_noise(inputs, torch.tensor([0.0, 0.5, 1.0, 2.0]))
    assert (clipped >= 0).all() and (clipped <= 1).all()
    assert torch.equal(clipped[0], inputs[0])
    model, x, y = make_problem(n=3)
    out = convex.bernoulli(model, x, y, eps=0.1, generator=torch.Generator().manual_seed(0))
    assert (out - x).abs().max() <= 0.1 + 1e-6


# --------------------------------------------------------------------------- robustness


def _exact_minimal_attack(model: LinearClassifier, inputs, labels, p=2.0):
    """Closed-form minimal L2 perturbation for a binary linear classifier (slightly past it)."""
    w = model.linear.weight.detach()
    z = model(inputs).detach()
    direction = (w[1 - labels] - w[labels]).reshape(inputs.shape)
    gap = (z.gather(1, labels[:, None]) - z.gather(1, (1 - labels)[:, None])).squeeze(1)
    step = 1.001 * gap / lp_norm(direction, 2).pow(2)
    return (inputs + step.reshape(-1, 1, 1, 1) * direction).clamp(0, 1)


def test_rho1_rho2_on_binary_linear_model():
    model, inputs, labels = make_problem(n=12, k=2, seed=6, dtype=torch.float64)
    distance = minimal_distance(model, inputs, labels, 2.0)
    expected_rho1 = (distance / lp_norm(inputs, 2)).mean().item()
    value = robustness.rho1(model, inputs, labels, _exact_minimal_attack, norm=2)
    assert value == pytest.approx(expected_rho1, rel=1e-2)
    rho2 = robustness.rho2(model, inputs, labels, norm=2, margin="logits")
    assert rho2 == pytest.approx(distance.mean().item(), rel=1e-6)
    assert robustness.rho2(model, inputs, norm=INF) > 0  # probabilities margin, paper's p


def test_min_eps_for_fooling():
    model, inputs, labels = make_problem(n=12, k=2, seed=7, dtype=torch.float64)
    distance = minimal_distance(model, inputs, labels, INF)
    attack = functools.partial(convex.gn, norm=INF, margin="logits")
    found = robustness.min_eps_for_fooling(
        model, inputs, labels, attack, eps_grid=[0.001, 0.01, 0.1, 0.3, 1.0], bisection_steps=12
    )
    assert found == pytest.approx(distance.max().item(), abs=1e-3 * 1.0)
    assert found >= distance.max().item()
    from_norms = robustness.eps_for_fooling_from_norms(distance)
    assert from_norms == pytest.approx(distance.max().item())
    none = robustness.min_eps_for_fooling(model, inputs, labels, attack, eps_grid=[1e-6])
    assert none == INF
    adv = attack(model, inputs, labels, eps=1.01 * distance)
    assert robustness.fooling_ratio(model, inputs, labels, adv) == 1.0
