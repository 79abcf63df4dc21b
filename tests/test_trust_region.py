"""Trust-region attack (Yao et al., CVPR 2019) on the linear harness, its radius rule, and the
second-order variant on piecewise-linear and smooth toy models."""

import importlib

import pytest
import torch
from linear_harness import assert_within_factor_of_optimum, make_problem, minimal_distance
from torch import nn

from advx.attacks._core import INF, lp_norm
from advx.attacks.trust_region import (
    _overshoot,
    _project_to_linear_boundary,
    _refine,
    gltr,
    lanczos,
    steihaug_cg,
    trust_region,
    update_radius,
)

NORMS = [2.0, INF]


@pytest.mark.parametrize("k", [2, 3, 10])
@pytest.mark.parametrize("p", NORMS)
def test_untargeted_best_reaches_optimum_within_2_percent(k, p):
    model, x, y = make_problem(n=16, k=k, seed=k, dtype=torch.float64)
    adv = trust_region(model, x, y, norm=p)
    assert (model(adv).argmax(1) != y).all()
    assert_within_factor_of_optimum(lp_norm(adv - x, p), minimal_distance(model, x, y, p), 1.02)


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("how", ["target", "targeted"])
def test_given_target_on_two_classes_reaches_optimum(p, how):
    model, x, y = make_problem(n=16, k=2, seed=3, dtype=torch.float64)
    t = 1 - y
    if how == "target":
        adv = trust_region(model, x, y, norm=p, target=t)
    else:
        adv = trust_region(model, x, t, norm=p, targeted=True)
    assert (model(adv).argmax(1) == t).all()
    optimum = minimal_distance(model, x, y, p, targets=t)
    assert_within_factor_of_optimum(lp_norm(adv - x, p), optimum, 1.02)


@pytest.mark.parametrize("p", NORMS)
def test_given_target_among_many_classes_wins(p):
    model, x, y = make_problem(n=16, k=5, seed=4)
    t = (y + 2) % 5
    adv = trust_region(model, x, y, norm=p, target=t)
    assert (model(adv).argmax(1) == t).all()
    assert (lp_norm(adv - x, p) >= minimal_distance(model, x, y, p, targets=t) * 0.999).all()


def test_hardest_target_is_no_closer_than_best():
    model, x, y = make_problem(n=16, k=5, seed=7, dtype=torch.float64)
    best = trust_region(model, x, y, target="best")
    hardest = trust_region(model, x, y, target="hardest")
    assert (model(hardest).argmax(1) != y).all()
    assert (lp_norm(hardest - x, 2) >= lp_norm(best - x, 2) - 1e-9).all()


def test_radius_update_rule():
    radius = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.5, 3.0, 1.0])
    rho = torch.tensor([0.95, 0.7, 0.2, -1.0, 0.1, 2.0, float("nan")])
    new = update_radius(radius, rho, sigma1=0.9, sigma2=0.5, eta=2.0, radius_min=0.4, radius_max=4)
    # grow, keep, shrink, shrink, shrink clamped at the minimum, grow clamped, NaN keeps
    assert torch.allclose(new, torch.tensor([2.0, 1.0, 0.5, 0.5, 0.4, 4.0, 1.0]))
    assert torch.equal(radius, torch.tensor([1.0, 1.0, 1.0, 1.0, 0.5, 3.0, 1.0]))
    per_sample_bounds = update_radius(
        torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]), eta=1.5,
        radius_min=torch.tensor([0.0, 0.9]), radius_max=torch.tensor([1.2, 9.0]),
    )  # fmt: skip
    assert torch.allclose(per_sample_bounds, torch.tensor([1.2, 0.9]))


def test_fixed_radius_takes_radius_sized_steps():
    """adaptive=False with a small radius: the linear path is cut into radius-long steps, so
    a budget too short to cover the distance finds nothing and returns the input."""
    model, x, y = make_problem(n=4, k=2, seed=1, dtype=torch.float64)
    dist = minimal_distance(model, x, y, 2.0)
    r = float(dist.max()) / 10
    short = trust_region(model, x, y, adaptive=False, radius=r, steps=3)
    far = dist > 3 * r * 1.02
    assert far.any() and torch.equal(short[far], x[far])
    long = trust_region(model, x, y, adaptive=False, radius=r, steps=12)
    assert (model(long).argmax(1) != y).all()
    assert (lp_norm(long - x, 2) / dist <= 1.02 + 1e-6).all()


@pytest.mark.parametrize("p", NORMS)
def test_without_the_stop_each_step_is_the_models_minimiser_in_the_ball(p):
    """stop_at_boundary=False (Algorithm 1 as printed): every step is -radius g/||g||_2 (L2) or
    -radius sign(g) (Linf), the minimiser of the linear model in the ball, with no stop at the
    linearised boundary and no overshoot; so the one-step perturbation has norm radius exactly,
    while with the stop (and no final search) it ends at (1 + overshoot) times the nearer
    boundary."""
    model, x, y = make_problem(n=8, k=2, seed=5, dtype=torch.float64)
    dist = minimal_distance(model, x, y, p)
    r = float(dist.max()) * 1.5
    kept = {}

    def grab(k, iterates, _succeeded):
        kept[k] = iterates.clone()

    trust_region(model, x, y, norm=p, adaptive=False, radius=r, steps=1,
                 stop_at_boundary=False, callback=grab)  # fmt: skip
    inside = ((kept[1] > 0) & (kept[1] < 1)).flatten(1).all(1)  # not clipped by the box
    assert inside.sum() >= 4
    norms = lp_norm(kept[1] - x, p)[inside]
    assert torch.allclose(norms, torch.full_like(norms, r))
    stopped = trust_region(model, x, y, norm=p, adaptive=False, radius=r, steps=1, final_search=0)
    assert torch.allclose(lp_norm(stopped - x, p), 1.02 * dist)


def _relu_mlp(d=16, k=4, seed=0, act=nn.ReLU) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 32), act(), nn.Linear(32, k)).double()


def test_outputs_in_box_inputs_untouched_model_restored():
    model = _relu_mlp()
    model.train()
    x = torch.rand(8, 1, 4, 4, dtype=torch.float64)
    x[:, :, 0] = 1.0
    x[:, :, 1] = 0.0
    y = model(x).argmax(1)
    x_copy = x.clone()
    for p in NORMS:
        adv = trust_region(model, x, y, norm=p)
        assert adv.min() >= 0 and adv.max() <= 1
        assert (model(adv).argmax(1) != y).all()
    assert torch.equal(x, x_copy)
    assert model.training
    assert all(q.grad is None and q.requires_grad for q in model.parameters())


@pytest.mark.parametrize("solver", ["lanczos", "steihaug"])
@pytest.mark.parametrize("stop", [True, False])
def test_second_order_outputs_in_box_inputs_untouched(solver, stop):
    """Second order on a smooth network with pixels on the box: outputs stay in [0, 1], the
    inputs and the model's mode and parameters are untouched."""
    model = _relu_mlp(seed=1, act=nn.SiLU)
    model.train()
    x = torch.rand(8, 1, 4, 4, dtype=torch.float64)
    x[:, :, 0], x[:, :, 1] = 1.0, 0.0
    y = model(x).argmax(1)
    x_copy = x.clone()
    adv = trust_region(model, x, y, order=2, solver=solver, stop_at_boundary=stop, steps=30)
    assert adv.min() >= 0 and adv.max() <= 1
    assert (model(adv).argmax(1) != y).sum() >= 6
    assert torch.equal(x, x_copy)
    assert model.training
    assert all(q.grad is None and q.requires_grad for q in model.parameters())


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("target", ["best", "hardest"])
def test_batch_equals_per_sample(p, target):
    model = _relu_mlp(seed=2)
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    y = model(x).argmax(1)
    batch = trust_region(model, x, y, norm=p, target=target)
    single = torch.cat(
        [trust_region(model, x[i : i + 1], y[i : i + 1], norm=p, target=target) for i in range(6)]
    )
    assert torch.allclose(batch, single, atol=1e-10)


@pytest.mark.parametrize("solver", ["lanczos", "steihaug"])
@pytest.mark.parametrize("stop", [True, False])
def test_second_order_batch_equals_per_sample_on_a_smooth_network(solver, stop):
    """Lanczos/Steihaug run batched, each row with its own Krylov space and stopping point."""
    model = _relu_mlp(seed=4, act=nn.SiLU)
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    y = model(x).argmax(1)
    options = {"order": 2, "solver": solver, "stop_at_boundary": stop, "steps": 20}
    batch = trust_region(model, x, y, **options)
    single = torch.cat(
        [trust_region(model, x[i : i + 1], y[i : i + 1], **options) for i in range(6)]
    )
    assert (model(batch).argmax(1) != y).sum() >= 4
    assert torch.allclose(batch, single, atol=1e-8)


def test_returns_original_where_no_adversarial_or_already_misclassified():
    model, x, y = make_problem(n=4, k=3)
    wrong = (y + 1) % 3
    assert torch.equal(trust_region(model, x, wrong), x)
    assert torch.equal(trust_region(model, x, wrong, refine_steps=5), x)
    flat_model = nn.Linear(16, 3)
    with torch.no_grad():
        flat_model.weight.zero_()
        flat_model.bias.copy_(torch.tensor([2.0, 0.0, 0.0]))
    constant = nn.Sequential(nn.Flatten(), flat_model)
    labels = torch.zeros(4, dtype=torch.long)
    assert torch.equal(trust_region(constant, x, labels, steps=3), x)
    assert torch.equal(trust_region(constant, x, labels, steps=3, order=2), x)
    assert torch.equal(trust_region(constant, x, labels, steps=3, refine_steps=5), x)


def test_rejects_bad_arguments():
    model, x, y = make_problem(n=4, k=3)
    with pytest.raises(ValueError, match="norm"):
        trust_region(model, x, y, norm=1)
    with pytest.raises(ValueError, match="target"):
        trust_region(model, x, y, target="easiest")
    with pytest.raises(ValueError, match="target"):
        trust_region(model, x, y, target=torch.full_like(y, 7))
    with pytest.raises(ValueError, match="target"):
        trust_region(model, x, y, target=y, targeted=True)
    with pytest.raises(ValueError, match="order"):
        trust_region(model, x, y, order=3)
    with pytest.raises(ValueError, match="order"):
        trust_region(model, x, y, order=2, norm="inf")
    with pytest.raises(ValueError, match="eta"):
        trust_region(model, x, y, eta=1.0)
    with pytest.raises(ValueError, match="radius"):
        trust_region(model, x, y, radius=-1.0)
    with pytest.raises(ValueError, match="candidates"):
        trust_region(model, x, y, candidates=0)
    with pytest.raises(ValueError, match="inputs"):
        trust_region(model, x + 2, y)
    with pytest.raises(TypeError, match="callback"):
        trust_region(model, x, y, callback=3)
    with pytest.raises(ValueError, match="solver"):
        trust_region(model, x, y, order=2, solver="cg")
    with pytest.raises(TypeError, match="stop_at_boundary"):
        trust_region(model, x, y, stop_at_boundary=1)


@pytest.mark.parametrize("p", NORMS)
def test_overshoot_extends_the_step_without_compounding(p):
    """A boundary-reaching step is extended by overshoot x the new perturbation's norm along the
    step: the whole perturbation times 1 + overshoot when the step is parallel to it (a linear
    model), but repeated sideways crossings (a junction of classes) do not grow the perturbation
    by the factor each time, as overshooting the whole perturbation did (1.02^50 = 2.7x)."""
    x0 = torch.zeros(1, 2, dtype=torch.float64)
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    yes = torch.tensor([True])
    along = _overshoot(x, 0.5 * x, x0, yes, 0.02, p)
    assert torch.allclose(along, 1.02 * 1.5 * x)
    assert torch.equal(_overshoot(x, 0.5 * x, x0, ~yes, 0.02, p), 1.5 * x)
    for k in range(50):  # tiny steps alternating sideways, each "crossing"
        side = torch.tensor([[0.0, 1e-3 * (-1) ** k]], dtype=torch.float64)
        x = _overshoot(x, side, x0, yes, 0.02, p)
    assert lp_norm(x - x0, p).item() < 1.1


# --------------------------------------------------------------------------- refinement


@pytest.mark.parametrize("p", NORMS)
def test_refinement_walks_a_far_adversarial_to_the_optimum(p):
    """From adversarials far off the nearest boundary point (past the boundary plus a large
    sideways push), the boundary refinement and its closing bisection reach the exact minimal
    distance on a two-class linear model, within 1%."""
    model, x, y = make_problem(n=16, k=2, seed=5, dtype=torch.float64)
    w = model.linear.weight.detach()
    normal = (w[1 - y] - w[y]).reshape(x.shape)
    normal = normal / lp_norm(normal, 2).reshape(-1, 1, 1, 1)
    sideways = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    sideways -= (sideways * normal).sum((1, 2, 3), keepdim=True) * normal
    sideways = sideways / lp_norm(sideways, 2).reshape(-1, 1, 1, 1)
    d2 = minimal_distance(model, x, y, 2).reshape(-1, 1, 1, 1)
    far = x + 1.3 * d2 * normal + 2.0 * d2 * sideways
    assert far.min() >= 0 and far.max() <= 1 and (model(far).argmax(1) != y).all()
    optimum = minimal_distance(model, x, y, p)
    norms = lp_norm(far - x, p)
    assert (norms > 1.3 * optimum).all()
    adv = far.clone()
    _refine(model, x, y, None, adv, norms, p, steps=120, shrink=0.9, overshoot=0.02)
    assert (model(adv).argmax(1) != y).all()
    assert torch.allclose(norms, lp_norm(adv - x, p))
    assert_within_factor_of_optimum(norms, optimum, 1.01)


@pytest.mark.parametrize("p", NORMS)
def test_refinement_keeps_the_linear_optimum(p):
    model, x, y = make_problem(n=16, k=3, seed=3, dtype=torch.float64)
    adv = trust_region(model, x, y, norm=p, refine_steps=20)
    assert (model(adv).argmax(1) != y).all()
    assert_within_factor_of_optimum(lp_norm(adv - x, p), minimal_distance(model, x, y, p), 1.02)


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("target", ["best", "hardest", "given"])
def test_refinement_never_grows_the_norm_and_keeps_the_class(p, target):
    model = _relu_mlp(seed=4)
    x = torch.rand(8, 1, 4, 4, dtype=torch.float64)
    y = model(x).argmax(1)
    t = (y + 1) % 4 if target == "given" else target
    plain = trust_region(model, x, y, norm=p, target=t, final_search=0)
    refined = trust_region(model, x, y, norm=p, target=t, final_search=0, refine_steps=30)
    assert refined.min() >= 0 and refined.max() <= 1
    pred = model(refined).argmax(1)
    assert (pred == t).all() if target == "given" else (pred != y).all()
    assert (lp_norm(refined - x, p) <= lp_norm(plain - x, p) + 1e-12).all()
    assert (lp_norm(refined - x, p) < lp_norm(plain - x, p) - 1e-6).any()


def test_refinement_batch_equals_per_sample():
    model = _relu_mlp(seed=2)
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    y = model(x).argmax(1)
    batch = trust_region(model, x, y, refine_steps=15)
    single = torch.cat(
        [trust_region(model, x[i : i + 1], y[i : i + 1], refine_steps=15) for i in range(6)]
    )
    assert torch.allclose(batch, single, atol=1e-10)


def test_refinement_rejects_bad_arguments():
    model, x, y = make_problem(n=4, k=3)
    with pytest.raises(ValueError, match="refine_steps"):
        trust_region(model, x, y, refine_steps=-1)
    with pytest.raises(ValueError, match="refine_shrink"):
        trust_region(model, x, y, refine_shrink=1.0)


# --------------------------------------------------------------------------- second order


def test_steihaug_cg_solves_the_trust_region_subproblem():
    torch.manual_seed(0)
    a = torch.randn(3, 5, 5, dtype=torch.float64)
    h_pd = a @ a.transpose(1, 2) + 0.5 * torch.eye(5, dtype=torch.float64)
    g = torch.randn(3, 5, dtype=torch.float64)

    def hvp(v, h=h_pd):
        return (h @ v.unsqueeze(2)).squeeze(2)

    newton = -torch.linalg.solve(h_pd, g.unsqueeze(2)).squeeze(2)
    big = torch.full((3,), 1e3, dtype=torch.float64)
    s, curved = steihaug_cg(g, hvp, big, max_iter=50, tol=1e-12)
    assert torch.allclose(s, newton, atol=1e-8) and curved.all()
    small = newton.norm(dim=1) / 3
    s, _ = steihaug_cg(g, hvp, small, max_iter=50)
    assert torch.allclose(s.norm(dim=1), small)
    assert ((s * g).sum(1) < 0).all()  # a descent step
    h_neg = -h_pd  # negative curvature: the first CG direction runs to the boundary
    s, _ = steihaug_cg(g, lambda v: hvp(v, h_neg), big, max_iter=50)
    assert torch.allclose(s, -g / g.norm(dim=1, keepdim=True) * 1e3)


def _random_subproblem(n=6, d=8, seed=0, definite=False):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, d, generator=gen, dtype=torch.float64)
    h = a @ a.transpose(1, 2) + torch.eye(d, dtype=torch.float64) if definite else a + a.mT
    g = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return g, h, lambda v: (h @ v.unsqueeze(2)).squeeze(2)


def test_lanczos_gives_an_orthonormal_basis_and_the_projected_hessian():
    g, h, hvp = _random_subproblem(d=8)
    basis, tri, gamma, curved = lanczos(g, hvp, steps=5)
    eye = torch.eye(5, dtype=torch.float64).expand(6, 5, 5)
    assert torch.allclose(basis @ basis.mT, eye, atol=1e-10)
    assert torch.allclose(basis @ h @ basis.mT, tri, atol=1e-10)
    assert torch.allclose(basis[:, 0], g / g.norm(dim=1, keepdim=True))
    assert torch.allclose(gamma, g.norm(dim=1)) and curved.all()


def test_gltr_meets_the_optimality_conditions_of_the_trust_region_subproblem():
    """More & Sorensen (1983): s solves min <g, s> + 1/2 <s, H s> s.t. ||s|| <= r globally iff
    (H + lam I) s = -g with lam >= 0, lam (r - ||s||) = 0 and H + lam I positive semidefinite;
    with the full Krylov space (steps = d) GLTR's answer must meet them, on indefinite H."""
    g, h, hvp = _random_subproblem(d=8)
    r = torch.tensor([0.05, 0.3, 0.7, 1.0, 2.0, 5.0], dtype=torch.float64)
    s, crosses, curved = gltr(g, hvp, r, steps=8)
    assert not crosses.any() and curved.all()
    hs = (h @ s.unsqueeze(2)).squeeze(2)
    lam = -(s * (g + hs)).sum(1) / s.pow(2).sum(1)
    assert torch.allclose(hs + lam[:, None] * s, -g, atol=1e-7)
    assert (lam >= 0).all() and torch.allclose(s.norm(dim=1), r)
    lowest = torch.linalg.eigvalsh(h)[:, 0]
    assert (lowest + lam >= -1e-7).all()


def test_gltr_returns_the_newton_step_inside_and_a_one_dimensional_krylov_space():
    g, h, hvp = _random_subproblem(definite=True)
    newton = -torch.linalg.solve(h, g.unsqueeze(2)).squeeze(2)
    s, _, _ = gltr(g, hvp, torch.tensor(1e3, dtype=torch.float64), steps=8)
    assert torch.allclose(s, newton, atol=1e-8)
    # H = 2 I: the Krylov space closes after one vector; s = -g/2 inside, -r g/||g|| outside
    r = torch.tensor([1e3, 0.1], dtype=torch.float64)
    s, _, _ = gltr(g[:2], lambda v: 2 * v, r, steps=6)
    assert torch.allclose(s[0], -g[0] / 2)
    assert torch.allclose(s[1], -0.1 * g[1] / g[1].norm())
    zero, _, curved = gltr(torch.zeros_like(g), hvp, r[0], steps=4)
    assert torch.equal(zero, torch.zeros_like(g)) and not curved.any()


def test_gltr_with_a_level_stops_at_the_nearest_zero_of_the_model():
    """With level f: min ||s|| s.t. f + m(s) <= 0, checked against scipy's SLSQP from several
    starts (a nonconvex problem); no crossing in the ball leaves the subproblem solution."""
    from scipy.optimize import minimize

    g, h, hvp = _random_subproblem(d=6, seed=1)
    r = torch.full((6,), 0.8, dtype=torch.float64)
    f = torch.tensor([0.3, 0.5, 0.8, 1.0, 1.2, 50.0], dtype=torch.float64)
    s, crosses, _ = gltr(g, hvp, r, steps=6, level=f)
    assert crosses[:5].all() and not crosses[5]
    free, _, _ = gltr(g, hvp, r, steps=6)
    assert torch.allclose(s[5], free[5])
    gen = torch.Generator().manual_seed(2)
    for i in range(5):
        gi, hi, fi = g[i].numpy(), h[i].numpy(), float(f[i])

        def model(u, gi=gi, hi=hi, fi=fi):
            return fi + gi @ u + 0.5 * u @ hi @ u

        best = min(
            minimize(lambda u: u @ u, 0.3 * torch.randn(6, generator=gen, dtype=torch.float64).numpy(),
                     constraints=[{"type": "ineq", "fun": lambda u: -model(u)},
                                  {"type": "ineq", "fun": lambda u: 0.64 - u @ u}],
                     method="SLSQP").fun
            for _ in range(8)
        )  # fmt: skip
        assert abs(model(s[i].numpy())) < 1e-9
        assert float(s[i].norm()) <= best**0.5 * (1 + 1e-5)


class _Saddle(nn.Module):
    """Two classes with the quadratic margin z_0 - z_1 = 0.25 + u_1 - 2 (u_1 + u_2)^2, u = x - 0.5:
    the nearest crossing from the centre (norm 0.167) bends away from -grad = -e_1, along which
    the margin first vanishes at norm (sqrt(3) - 1)/4 = 0.183, and the linearised boundary lies
    at 0.25."""

    def forward(self, x):
        u = x.flatten(1) - 0.5
        z0 = 0.25 + u[:, 0] - 2 * (u[:, 0] + u[:, 1]).pow(2)
        return torch.stack([z0, torch.zeros_like(z0)], 1)


def test_lanczos_second_order_bends_the_step_where_steihaug_cannot():
    """One fixed-radius step from the centre: GLTR reaches the nearest crossing of the (exact)
    quadratic model, times 1 + overshoot; Steihaug-CG meets negative curvature along -g at once
    and only shortens that direction; first order stops at the linearised boundary."""
    from scipy.optimize import minimize

    model = _Saddle()
    x = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    y = torch.zeros(1, dtype=torch.long)
    optimum = minimize(lambda v: v @ v, [-0.15, -0.05],
                       constraints=[{"type": "ineq",
                                     "fun": lambda v: 2 * (v[0] + v[1]) ** 2 - 0.25 - v[0]}],
                       method="SLSQP").fun ** 0.5  # fmt: skip
    norms = {}
    for name, options in {
        "first": {},
        "lanczos": {"order": 2},
        "steihaug": {"order": 2, "solver": "steihaug"},
    }.items():
        adv = trust_region(
            model, x, y, adaptive=False, radius=1.0, steps=1, final_search=0, **options
        )
        assert model(adv).argmax(1).item() == 1
        norms[name] = lp_norm(adv - x, 2).item()
    assert norms["lanczos"] == pytest.approx(1.02 * optimum, rel=1e-6)
    assert norms["steihaug"] == pytest.approx(1.02 * (3**0.5 - 1) / 4, rel=1e-6)
    assert norms["first"] == pytest.approx(1.02 * 0.25, rel=1e-6)
    assert optimum < 0.95 * (3**0.5 - 1) / 4


@pytest.mark.parametrize("target", ["best", "hardest"])
def test_second_order_equals_first_order_on_relu_network(target):
    """ReLU networks are piecewise linear: every Hessian-vector product is exactly zero, so the
    second-order attack falls back to the first-order step (Yao et al. 2019, Sec. 3)."""
    model = _relu_mlp(seed=3)
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = model(x).argmax(1)
    rule = {"sigma1": 0.9, "sigma2": 0.5, "two_sided": False}  # Algorithm 1 as printed
    first = trust_region(model, x, y, target=target, **rule)
    second = trust_region(model, x, y, target=target, order=2, **rule)
    if target == "best":  # (the hardest class of some points is out of the box's reach)
        assert (model(second).argmax(1) != y).all()
    assert torch.allclose(first, second, atol=1e-12)
    t = (y + 1) % 4
    first = trust_region(model, x, y, target=t, steps=20)
    second = trust_region(model, x, y, target=t, steps=20, order=2)
    assert torch.allclose(first, second, atol=1e-12)


class _Sphere(nn.Module):
    """Two classes split by the sphere ||x - 0.5|| = R: z_0 = act(beta (||x - 0.5||^2 - R^2)),
    z_1 = act(0), with act the identity (a quadratic margin) or softplus. The minimal L2
    perturbation from a point outside is known: ||x - 0.5|| - R, straight to the centre."""

    def __init__(self, radius: float = 0.3, beta: float = 4.0, softplus: bool = False):
        super().__init__()
        self.radius, self.beta = radius, beta
        self.act = nn.Softplus() if softplus else nn.Identity()

    def forward(self, x):
        r2 = (x.flatten(1) - 0.5).pow(2).sum(1)
        z0 = self.act(self.beta * (r2 - self.radius**2))
        return torch.stack([z0, self.act(torch.zeros_like(z0))], 1)


def _sphere_points(n: int = 16):
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(n, 16, generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    rad = 0.5 + 0.4 * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    x = (0.5 + rad * d).clamp(0, 1).reshape(n, 1, 4, 4)
    return x, (x.flatten(1) - 0.5).norm(dim=1) - 0.3


@pytest.mark.parametrize("softplus", [False, True])
def test_second_order_beats_first_order_at_equal_steps_on_smooth_toy(softplus):
    """The paper's Sec. 4.4 / Table 5 protocol (fixed radius 1, equal iterations) on a curved
    boundary with a known minimal distance: the linearisation underestimates the distance, so
    first order needs several steps, while the (exact, for the quadratic margin) second-order
    model crosses in one step at the optimum times 1 + overshoot."""
    model = _Sphere(softplus=softplus)
    x, optimum = _sphere_points()
    y = model(x).argmax(1)
    assert (y == 0).all()
    steps = 1 if not softplus else 2
    once = {"adaptive": False, "radius": 1.0, "steps": steps, "final_search": 0}
    first = trust_region(model, x, y, **once)
    second = trust_region(model, x, y, order=2, **once)
    ok1, ok2 = model(first).argmax(1) != y, model(second).argmax(1) != y
    assert ok2.all() and ok1.sum() <= 4
    ratio = lp_norm(second - x, 2) / optimum
    assert (ratio >= 1 - 1e-9).all()
    if not softplus:
        assert torch.allclose(ratio, torch.full_like(ratio, 1.02))
    # with enough steps the first order gets there too
    longer = trust_region(model, x, y, adaptive=False, radius=1.0, steps=10)
    assert (model(longer).argmax(1) != y).all()
    assert (lp_norm(longer - x, 2) / optimum <= 1.02 + 1e-6).all()


def test_second_order_adaptive_defaults_reach_the_sphere():
    model = _Sphere()
    x, optimum = _sphere_points()
    y = model(x).argmax(1)
    adv = trust_region(model, x, y, order=2)
    assert (model(adv).argmax(1) != y).all()
    assert (lp_norm(adv - x, 2) / optimum <= 1.02 + 1e-6).all()


@pytest.mark.parametrize("order", [1, 2])
def test_callback_reports_the_state_after_each_iteration(order):
    """The callback's success mask after iteration k equals the success of a run with
    steps=k (one run gives Table 5's accuracy after k = 1..K iterations)."""
    model = _relu_mlp(seed=5, act=nn.Tanh)
    x = torch.rand(12, 1, 4, 4, dtype=torch.float64)
    y = model(x).argmax(1)
    seen = {}

    def record(k, iterates, succeeded):
        seen[k] = (iterates.clone(), succeeded.clone())

    radius = 0.05
    fixed = {"adaptive": False, "radius": radius, "order": order, "final_search": 0}
    trust_region(model, x, y, steps=6, callback=record, **fixed)
    assert not seen[0][1].any() and torch.equal(seen[0][0], x)
    for k in range(1, 7):
        adv = trust_region(model, x, y, steps=k, **fixed)
        fooled = model(adv).argmax(1) != y
        state = seen.get(k, seen[max(seen)])
        assert torch.equal(state[1], fooled)
        assert torch.allclose(state[0][fooled], adv[fooled])
    assert any(0 < seen[k][1].sum() < 12 for k in seen)  # the radius makes it gradual


def _box_projection_by_scipy(base, x, f, g, p):
    """Reference: min ||u - base||_p s.t. f + <g, u - x> <= 0, 0 <= u <= 1, by a generic solver
    (an LP in (u, t) for Linf, SLSQP for L2)."""
    import numpy as np
    from scipy.optimize import linprog, minimize

    b, xx, gg = base.numpy(), x.numpy(), g.numpy()
    rhs = float(gg @ xx - f)
    dim = b.size
    if p == INF:  # variables (u, t): min t, |u - b| <= t
        eye = np.eye(dim)
        a_ub = np.block(
            [[eye, -np.ones((dim, 1))], [-eye, -np.ones((dim, 1))], [gg[None, :], np.zeros((1, 1))]]
        )
        b_ub = np.concatenate([b, -b, [rhs]])
        cost = np.concatenate([np.zeros(dim), [1.0]])
        res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[(0, 1)] * dim + [(0, None)])
        return res.fun
    res = minimize(
        lambda u: 0.5 * np.sum((u - b) ** 2),
        np.clip(b - gg, 0, 1),
        jac=lambda u: u - b,
        bounds=[(0, 1)] * dim,
        constraints=[{"type": "ineq", "fun": lambda u: rhs - gg @ u, "jac": lambda u: -gg}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    return float(np.sqrt(2 * res.fun))


@pytest.mark.parametrize("p", NORMS)
def test_projection_onto_the_linearised_boundary_respects_the_box_and_is_nearest(p):
    """Many coordinates sit at the box (as in saturated images): the projection must stay in
    [0, 1], satisfy the linearised constraint, and be as near to the base as a generic solver's."""
    gen = torch.Generator().manual_seed(0)
    n, dim = 12, 8
    base = torch.rand(n, dim, generator=gen, dtype=torch.float64)
    base[:, :3] = torch.tensor([0.0, 1.0, 0.02], dtype=torch.float64)
    x = base.clone()
    g = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    g[:, 0], g[:, 1] = g[:, 0].abs() * 3, -g[:, 1].abs() * 3  # pushes against the box
    f = torch.rand(n, generator=gen, dtype=torch.float64) * 0.5 + 0.1
    u = _project_to_linear_boundary(base, x, f, g, p)
    assert ((u >= 0) & (u <= 1)).all()
    assert (f + (g * (u - x)).sum(1) <= 1e-9).all()
    for i in range(n):
        reference = _box_projection_by_scipy(base[i], x[i], f[i].item(), g[i], p)
        assert lp_norm((u - base)[i : i + 1], p).item() == pytest.approx(
            reference, rel=1e-5, abs=1e-7
        )


def test_projection_without_a_feasible_point_moves_every_coordinate_to_its_bound():
    base = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    g = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    f = torch.tensor([5.0], dtype=torch.float64)  # f + <g, u - x> >= 5 - 1 > 0 on the box
    u = _project_to_linear_boundary(base, base, f, g, 2.0)
    assert torch.equal(u, torch.tensor([[0.0, 1.0]], dtype=torch.float64))


def test_two_sided_ratio_shrinks_where_the_margin_fell_much_faster_than_predicted():
    """Algorithm 1 as printed grows the radius for any rho > sigma1; the two-sided reading counts
    rho >> 1 (a boundary nearer than the model says) as a poor approximation too."""
    radius = torch.ones(4, dtype=torch.float64)
    rho = torch.tensor([1.5, 1.01, 0.99, 0.5], dtype=torch.float64)
    rule = {"sigma1": 0.98, "sigma2": 0.9, "eta": 2.0}
    printed = update_radius(radius, rho, **rule)
    two_sided = update_radius(radius, rho, **rule, two_sided=True)
    assert printed.tolist() == [2.0, 2.0, 2.0, 0.5]
    assert two_sided.tolist() == [0.5, 2.0, 2.0, 0.5]


@pytest.mark.parametrize("p", NORMS)
def test_final_search_ends_on_the_boundary_of_a_linear_model(p):
    """One boundary-reaching step overshoots by 2%; the bisection on that step (the default 7
    forward passes) brings it back to within 2^-7 of the step of the boundary, still
    adversarial."""
    model, x, y = make_problem(n=8, k=2, seed=5, dtype=torch.float64)
    optimum = minimal_distance(model, x, y, p)
    one = {"norm": p, "adaptive": False, "radius": 1e3, "steps": 1}
    overshot = lp_norm(trust_region(model, x, y, final_search=0, **one) - x, p)
    adv = trust_region(model, x, y, **one)
    assert (model(adv).argmax(1) != y).all()
    norms = lp_norm(adv - x, p)
    assert torch.allclose(overshot, 1.02 * optimum)
    assert (norms >= optimum * (1 - 1e-9)).all() and (norms <= optimum * (1 + 1.02 / 2**7)).all()


def test_refresh_changes_nothing_where_gradients_are_constant():
    """On a linear model the candidates' gradient norms never change, so choosing the class with
    the last evaluated norms (refresh > 1) is exact and equals re-evaluating them every step."""
    model, x, y = make_problem(n=12, k=10, seed=2, dtype=torch.float64)
    every = trust_region(model, x, y, refresh=1)
    sparse = trust_region(model, x, y, refresh=7)
    assert torch.allclose(every, sparse, atol=1e-12)
    assert (model(sparse).argmax(1) != y).all()


@pytest.mark.parametrize("ambiguity", [1.0, 1.2, float("inf")])
def test_ambiguity_changes_nothing_where_gradients_are_constant(ambiguity):
    """Skipping the fresh gradients of a clear choice is exact on a linear model too."""
    model, x, y = make_problem(n=12, k=10, seed=2, dtype=torch.float64)
    every = trust_region(model, x, y, refresh=1, ambiguity=float("inf"))
    lazy = trust_region(model, x, y, refresh=1, ambiguity=ambiguity)
    assert torch.allclose(every, lazy, atol=1e-12)


def _relu_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10)).double().eval()


class _CountBackward:
    """Counts the samples that pass backward through a module (one per sample per pass)."""

    def __init__(self, module: nn.Module):
        self.samples = 0
        module.register_full_backward_hook(self._hook)

    def _hook(self, _module, _grad_in, grad_out):
        self.samples += grad_out[0].shape[0]


def test_ambiguity_refreshes_only_doubtful_choices_on_a_relu_net():
    """ambiguity = 1 re-evaluates the candidates only after inaccurate steps; a larger
    ambiguity re-evaluates more often, so it spends more backward passes, and inf re-evaluates
    every due sample; an endless refresh period spends the fewest. All find adversarials."""
    model = _relu_net(3)
    x = torch.rand(16, 20, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = model(x).argmax(1)
    counter = _CountBackward(model[0])
    spent, advs = {}, {}
    for ambiguity in (1.0, 1.2, float("inf")):
        counter.samples = 0
        advs[ambiguity] = trust_region(model, x, y, refresh=2, ambiguity=ambiguity)
        spent[ambiguity] = counter.samples
    counter.samples = 0
    trust_region(model, x, y, refresh=10**6, ambiguity=float("inf"))
    assert counter.samples <= spent[1.0] <= spent[1.2] < spent[float("inf")]
    for adv in advs.values():
        assert (model(adv).argmax(1) != y).all()


def test_new_options_are_checked():
    model, x, y = make_problem(n=2, k=3, seed=0)
    with pytest.raises(ValueError, match="ambiguity"):
        trust_region(model, x, y, ambiguity=0.5)
    with pytest.raises(ValueError, match="refresh"):
        trust_region(model, x, y, refresh=0)
    with pytest.raises(ValueError, match="final_search"):
        trust_region(model, x, y, final_search=-1)
    with pytest.raises(TypeError, match="two_sided"):
        trust_region(model, x, y, two_sided=1)


def test_refresh_evaluates_only_the_classes_in_doubt():
    """A refresh takes the candidates within ``ambiguity`` times the nearest distance (nearest
    first, -1 padding), every candidate after an inaccurate step or with ambiguity = inf, and
    writes the fresh norms back into those columns only."""
    loop = importlib.import_module("advx.attacks.trust_region.loop")
    dist = torch.tensor([[1.0, 1.1, 2.0, INF], [1.15, 3.0, 1.0, 5.0]])
    clear = torch.tensor([False, False])
    assert loop._doubtful(dist, 1.2, clear).tolist() == [[0, 1], [2, 0]]
    assert loop._doubtful(dist, 1.2, torch.tensor([True, False])).tolist() == [
        [0, 1, 2, 3],
        [2, 0, -1, -1],
    ]
    assert loop._doubtful(dist, INF, clear).tolist() == dist.argsort(1).tolist()
    classes = torch.tensor([[3, 0, 1, 2, 4], [0, 1, 2, 3, 4]])
    cols = torch.tensor([[0, 1, -1], [2, 0, 3]])
    assert loop._subset(classes, cols).tolist() == [[3, 0, 1, 3], [0, 3, 1, 4]]
    norms = torch.zeros(2, 4)
    fresh = torch.tensor([[1.0, 2.0, 9.0], [3.0, 4.0, 5.0]])
    assert loop._scatter_columns(norms, cols, fresh).tolist() == [
        [1.0, 2.0, 0.0, 0.0],
        [4.0, 0.0, 3.0, 5.0],
    ]


def test_default_radius_stays_above_its_floor():
    """With the default bounds the radius never falls below eps^0 / eta = 0.025 d0 (d0 the
    first linearised distance, which bounds the radius from above: eps_max = d0), even where
    thresholds next to 1 shrink it at nearly every step."""
    loop = importlib.import_module("advx.attacks.trust_region.loop")
    model = _relu_net(5)
    x = torch.rand(12, 20, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    y = model(x).argmax(1)
    seen = []
    update = loop.update_radius

    def spy(radius, rho, **rule):
        new = update(radius, rho, **rule)
        seen.append(new / rule["radius_max"])
        return new

    loop.update_radius = spy
    try:
        adv = trust_region(model, x, y, sigma1=1 - 1e-9, sigma2=1 - 1e-9)
    finally:
        loop.update_radius = update
    ratio = torch.cat(seen)
    assert seen and 0.025 * (1 - 1e-9) <= ratio.min() <= 0.025 * (1 + 1e-9)
    assert (model(adv).argmax(1) != y).all()
