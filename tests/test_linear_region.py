"""Linear-region geometry, the per-region convex programs, rLR-QP (Croce & Hein 2018) and the exact
MIP (Tjeng et al. 2019) on small networks with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize
from torch import nn

from advx.attacks import get_attack, linear_region
from advx.attacks.linear_region import (
    activation_patterns,
    float64_layers,
    linear_regions,
    piecewise_linear_layers,
    solve_l1,
    solve_l2,
    solve_linf,
    solvers,
)
from advx.verify import minimal_perturbation

INF = float("inf")


def _mlp(seed=0, sizes=(6, 8, 8, 3), batchnorm=True):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            if batchnorm and i == 0:
                layers.append(nn.BatchNorm1d(b))
            layers += [nn.ReLU(), nn.Dropout(0.3)]
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _convnet(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    net[1].running_mean.uniform_(-0.2, 0.2)
    net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("builder, shape", [(_mlp, (6,)), (_convnet, (1, 8, 8))])
def test_region_reproduces_logits_inside_the_region(builder, shape):
    net = builder().double()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((4, *shape), generator=gen, dtype=torch.float64)
    layers = float64_layers(net)
    with torch.no_grad():
        region = linear_regions(layers, x, net(x))
    flat = x.reshape(4, -1)
    assert (region.slack(flat) >= -1e-12).all()
    checked = 0
    for scale in (1e-2, 1e-3, 1e-4):
        z = x + scale * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        same = (activation_patterns(layers, z) == region.patterns).all(1)
        with torch.no_grad():
            theirs = net(z)
        mine = region.logits(z.reshape(4, -1))
        assert (mine - theirs)[same].abs().max().item() < 1e-5 if same.any() else True
        assert (region.slack(z.reshape(4, -1))[same] >= -1e-9).all()
        checked += int(same.sum())
    assert checked >= 4
    # a point whose pattern differs violates some halfspace of the region
    far = torch.rand((4, *shape), generator=gen, dtype=torch.float64)
    differs = ~(activation_patterns(layers, far) == region.patterns).all(1)
    assert differs.any()
    assert ((region.slack(far.reshape(4, -1)) < 0).any(1) == differs).all()


def _conv_without_pooling(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(48, 6), nn.ReLU(), nn.Linear(6, 3),
    )  # fmt: skip
    net[1].running_mean.uniform_(-0.2, 0.2)
    net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("builder, shape", [(_mlp, (6,)), (_conv_without_pooling, (1, 8, 8))])
def test_implicit_regions_equal_the_explicit_ones(builder, shape):
    from advx.attacks.linear_region.geometry import ImplicitRegions

    layers = float64_layers(builder())
    points = torch.rand(4, *shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    explicit = linear_regions(layers, points)
    implicit = ImplicitRegions(layers, points)
    torch.testing.assert_close(implicit.logits_map, explicit.logits_map)
    torch.testing.assert_close(implicit.logits_offset, explicit.logits_offset)
    z = torch.rand(
        points[0].numel(), generator=torch.Generator().manual_seed(6), dtype=torch.float64
    )
    for k in range(4):
        which = torch.tensor([0, 2, 3])
        rows, offsets = implicit.halfspaces(k, which)
        torch.testing.assert_close(rows, explicit.halfspace_matrix[k, which])
        torch.testing.assert_close(offsets, explicit.halfspace_offset[k, which])
        values = explicit.halfspace_matrix[k] @ z + explicit.halfspace_offset[k]
        torch.testing.assert_close(implicit.values(k, z), values)
        assert (implicit.values_at_points[k] >= 0).all()
    with pytest.raises(TypeError, match="MaxPool2d"):
        ImplicitRegions(float64_layers(_convnet()), torch.rand(1, 1, 8, 8, dtype=torch.float64))


def test_attack_on_implicit_regions_equals_the_explicit_path(monkeypatch):
    """A network with more hidden units than WORKING_SET_ROWS takes the implicit regions and
    constraint generation in L2; the result is the explicit path's."""
    from advx.attacks.linear_region import attack as module

    net = _mlp(7, sizes=(6, 150, 120, 3), batchnorm=False).double()
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    with torch.no_grad():
        labels = net(x).argmax(1)

    def run():
        return linear_region(net, x, labels, n1=2, n2=3, n3=1, n4=1, facets=3,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip

    settings = module._Settings(p=2.0, targeted=False, alpha=1.5, solver="daqp")
    assert module._Search(net, x, settings).implicit
    implicit = run()
    monkeypatch.setattr(
        module._Search, "regions", lambda self, pts: linear_regions(self.layers, pts)
    )
    explicit = run()
    norms = (implicit - x).norm(dim=1), (explicit - x).norm(dim=1)
    torch.testing.assert_close(norms[0], norms[1], rtol=1e-6, atol=1e-9)


def test_region_of_a_float32_model_matches_its_logits():
    net = _convnet(2)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        region = linear_regions(float64_layers(net), x.double(), net(x))
    assert region.logits_map.shape == (3, 3, 64)


@pytest.mark.parametrize("layer", [nn.Tanh(), nn.Sigmoid(), nn.LeakyReLU()])
def test_unsupported_layers_raise_type_error_naming_them(layer):
    net = nn.Sequential(nn.Linear(4, 5), layer, nn.Linear(5, 2))
    name = type(layer).__name__
    with pytest.raises(TypeError, match=name):
        piecewise_linear_layers(net)
    with pytest.raises(TypeError, match=name):
        linear_region(net, torch.rand(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match=name):
        minimal_perturbation(net, torch.rand(2, 4), torch.zeros(2, dtype=torch.long), norm=2)


def _random_instance(seed, d=5, m=3):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 0.8, d)
    matrix = rng.normal(size=(m, d))
    offset = -(matrix @ x) - rng.uniform(0.05, 0.5, m)  # x violates every halfspace
    return x, matrix, offset


def _feasible_region(matrix, offset):
    """Whether {matrix z + offset >= 0} meets the box (an LP)."""
    res = linprog(np.zeros(matrix.shape[1]), A_ub=-matrix, b_ub=offset, bounds=(0, 1))
    return res.status == 0


@pytest.mark.parametrize("seed", range(6))
def test_region_qp_matches_slsqp(seed):
    x, matrix, offset = _random_instance(seed)
    z = solve_l2(x, matrix, offset)
    if not _feasible_region(matrix, offset):
        assert z is None
        return
    ref = minimize(
        lambda v: 0.5 * np.sum((v - x) ** 2),
        np.clip(x, 0, 1),
        jac=lambda v: v - x,
        constraints=[
            {"type": "ineq", "fun": lambda v: matrix @ v + offset, "jac": lambda v: matrix}
        ],
        bounds=[(0, 1)] * len(x),
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    assert ref.success
    assert np.linalg.norm(z - x) == pytest.approx(np.linalg.norm(ref.x - x), rel=1e-6, abs=1e-7)
    assert np.all(matrix @ z + offset >= -1e-7)


def _image_like_instance(seed, d=120, m=12):
    """x with most pixels black or white (an MNIST digit) and a decision halfspace pushing every
    pixel both ways: many bounds are active at the optimum."""
    rng = np.random.default_rng(seed)
    x = rng.choice([0.0, 1.0, 0.5], size=d, p=[0.6, 0.25, 0.15])
    x[x == 0.5] = rng.uniform(0.05, 0.95, int((x == 0.5).sum()))
    matrix = rng.normal(size=(m, d))
    offset = -(matrix @ x) + rng.uniform(0.05, 1.0, m)  # x satisfies the region's halfspaces
    offset[0] = -(matrix[0] @ x) - 2.0  # and violates the decision halfspace
    return x, matrix, offset


@pytest.mark.parametrize("solver", ["daqp", "proxqp", "piqp", "clarabel"])
@pytest.mark.parametrize("seed", range(4))
def test_box_presolve_equals_the_full_qp_with_many_active_bounds(seed, solver, monkeypatch):
    """_solve_qp's guessed-and-verified active bounds give the full QP's optimum (solved by the
    same solver with the box as bounds), with many bounds active, and a guess that is wrong
    (every pixel fixed at 0 to start) is corrected."""
    pytest.importorskip({"proxqp": "proxsuite"}.get(solver, solver))
    x, matrix, offset = _image_like_instance(seed)
    full, _ = solvers._qp(x, matrix, offset, solver, box=True)
    presolved = solvers._solve_qp(x, matrix, offset, solver)
    assert full is not None and presolved is not None
    active = (presolved <= 1e-9) | (presolved >= 1 - 1e-9)
    assert active.sum() >= 20  # the case the presolve is for
    assert np.linalg.norm(presolved - x) == pytest.approx(np.linalg.norm(full - x), rel=1e-6)
    assert np.all(matrix @ presolved + offset >= -1e-6)
    assert presolved.min() >= -1e-8 and presolved.max() <= 1 + 1e-8  # interior-point solvers
    wrong = (np.ones_like(x, dtype=bool), np.zeros_like(x, dtype=bool))
    monkeypatch.setattr(solvers, "_box_guess", lambda *args: wrong)
    corrected = solvers._solve_qp(x, matrix, offset, solver)
    assert np.linalg.norm(corrected - x) == pytest.approx(np.linalg.norm(full - x), rel=1e-6)


@pytest.mark.parametrize("solver", ["daqp", "proxqp"])
def test_the_cached_hessian_is_left_unchanged_by_the_dense_solvers(solver):
    pytest.importorskip({"proxqp": "proxsuite"}.get(solver, solver))
    x, matrix, offset = _image_like_instance(0, d=37)
    for _ in range(2):
        assert solvers._solve_qp(x, matrix, offset, solver) is not None
    assert np.array_equal(solvers._identity(37), np.eye(37))


def _region_like_instance(seed, d=60, m=300):
    """A decision halfspace that x violates and ``m`` region halfspaces that x satisfies, few of
    them active at the optimum (the shape of a wide ReLU layer's region problem)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.1, 0.9, d)
    normal = rng.normal(size=d)
    rows = rng.normal(size=(m, d))
    offsets = -(rows @ x) + rng.uniform(0.05, 3.0, m)
    return x, np.vstack([normal, rows]), np.r_[-(normal @ x) - 0.5, offsets]


@pytest.mark.parametrize("seed", range(4))
def test_constraint_generation_reaches_the_full_qp_optimum(seed):
    x, matrix, offset = _region_like_instance(seed)
    full = solve_l2(x, matrix, offset)
    assert full is not None
    lazy = solve_l2(x, matrix, offset, keep=1)
    assert np.linalg.norm(lazy - x) == pytest.approx(np.linalg.norm(full - x), rel=1e-7)
    assert np.all(matrix @ lazy + offset >= -1e-6 * (np.abs(matrix).sum(1) + 1))
    assert np.all((lazy >= 0) & (lazy <= 1))


def test_constraint_generation_stops_at_the_cutoff_and_reports_infeasible():
    x, matrix, offset = _region_like_instance(0)
    optimum = np.linalg.norm(solve_l2(x, matrix, offset) - x)
    assert solve_l2(x, matrix, offset, keep=1, cutoff=optimum * (1 - 1e-6)) is None
    assert solve_l2(x, matrix, offset, keep=1, cutoff=optimum * (1 + 1e-6)) is not None
    assert solve_l2(x, matrix, offset, cutoff=optimum * (1 - 1e-6)) is None
    contradiction = np.vstack([matrix, -matrix[:1]])  # the decision halfspace and its opposite
    assert solve_l2(x, contradiction, np.r_[offset, -offset[0] - 1.0], keep=1) is None


@pytest.mark.parametrize("seed", range(6))
def test_region_lps_match_linprog(seed):
    x, matrix, offset = _random_instance(seed)
    if not _feasible_region(matrix, offset):
        assert solve_linf(x, matrix, offset) is None
        assert solve_l1(x, matrix, offset) is None
        return
    d = len(x)
    # L1 in (z, e), e >= |z - x|: a different formulation from solve_l1's
    cost = np.r_[np.zeros(d), np.ones(d)]
    eye = np.eye(d)
    rows = np.block([[-matrix, np.zeros_like(matrix)], [eye, -eye], [-eye, -eye]])
    rhs = np.r_[offset, x, -x]
    ref = linprog(cost, A_ub=rows, b_ub=rhs, bounds=[(0, 1)] * d + [(0, None)] * d)
    z = solve_l1(x, matrix, offset)
    assert np.abs(z - x).sum() == pytest.approx(ref.fun, rel=1e-6, abs=1e-8)
    # Linf by bisection on t over feasibility LPs with the box [x - t, x + t]
    lo, hi = 0.0, 1.0
    for _ in range(50):
        t = (lo + hi) / 2
        bounds = list(zip(np.clip(x - t, 0, 1), np.clip(x + t, 0, 1)))
        ok = linprog(np.zeros(d), A_ub=-matrix, b_ub=offset, bounds=bounds).status == 0
        lo, hi = (lo, t) if ok else (t, hi)
    z = solve_linf(x, matrix, offset)
    assert np.abs(z - x).max() == pytest.approx(hi, abs=1e-6)


def _two_input_net():
    """2-10-8-3 ReLU net whose three classes all occupy part of [0, 1]^2."""
    torch.manual_seed(13)
    net = nn.Sequential(nn.Linear(2, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        net[0].weight.mul_(6)
        net[0].bias.uniform_(-3, 3)
    return net.double().eval()


def _grid_minimum(net, x, label, p, steps=801):
    axis = torch.linspace(0, 1, steps, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        adv = net(grid).argmax(1) != label
    dist = torch.linalg.vector_norm(grid[adv] - x, ord=p, dim=1)
    return float(dist.min())


@pytest.mark.parametrize("p", [2.0, INF])
def test_two_input_net_rlr_and_mip_equal_the_grid_minimum(p):
    net = _two_input_net()
    x = torch.tensor([[0.3, 0.6], [0.7, 0.2], [0.5, 0.5]], dtype=torch.float64)
    with torch.no_grad():
        labels = net(x).argmax(1)
    adv = linear_region(net, x, labels, norm=p, generator=torch.Generator().manual_seed(0))
    rlr = torch.linalg.vector_norm(adv - x, ord=p, dim=1)
    res = minimal_perturbation(net, x, labels, norm=p, time_limit=30)
    spacing = 1 / 800 * (2**0.5 if p == 2 else 1)
    for i in range(3):
        grid = _grid_minimum(net, x[i], int(labels[i]), p)
        assert res.status[i] == "optimal"
        assert abs(float(res.norms[i]) - grid) <= spacing
        assert abs(float(rlr[i]) - grid) <= spacing
        assert float(res.lower_bounds[i]) <= float(rlr[i]) + 1e-6
        with torch.no_grad():
            assert net(res.adversarials[i : i + 1]).argmax(1) != labels[i]


@pytest.mark.parametrize("p", [2.0, INF, 1.0])
def test_mip_on_a_linear_model_equals_the_closed_form(p):
    torch.manual_seed(4)
    d, k = 12, 3
    net = nn.Sequential(nn.Linear(d, k)).double().eval()
    with torch.no_grad():  # logits nearly tied at the centre: the boundary is close to x
        net[0].weight.mul_(10.0)
        net[0].bias.copy_(-net[0].weight.sum(1) / 2 + 0.3 * torch.randn(k, dtype=torch.float64))
    x = torch.full((2, d), 0.5, dtype=torch.float64)
    x[1] += 0.05 * torch.randn(d, dtype=torch.float64)
    with torch.no_grad():
        logits = net(x)
    labels = logits.argmax(1)
    w, b = net[0].weight.detach(), net[0].bias.detach()
    q = {2.0: 2.0, INF: 1.0, 1.0: INF}[p]
    res = minimal_perturbation(net, x, labels, norm=p, time_limit=30)
    for i in range(2):
        c = int(labels[i])
        dists = [
            float((logits[i, c] - logits[i, s]) / torch.linalg.vector_norm(w[c] - w[s], ord=q))
            for s in range(k)
            if s != c
        ]
        closed = min(dists)
        assert closed < 0.4  # the box does not bind at this distance from 0.5
        assert res.status[i] == "optimal"
        assert float(res.norms[i]) == pytest.approx(closed, rel=1e-3)
        assert float(res.lower_bounds[i]) <= closed * (1 + 1e-6)
    del b


def test_mip_lower_bound_never_above_an_attack_norm():
    net = _mlp(5, sizes=(10, 12, 3), batchnorm=False).double()
    x = torch.rand(4, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        labels = net(x).argmax(1)
    res = minimal_perturbation(net, x, labels, norm=2, time_limit=30)
    attacks = {
        "rlr": linear_region(net, x, labels, generator=torch.Generator().manual_seed(0)),
        "deepfool": get_attack("deepfool").function(net, x, labels),
        "ddn": get_attack("ddn").function(net, x, labels, steps=100),
    }
    for adv in attacks.values():
        with torch.no_grad():
            ok = net(adv).argmax(1) != labels
        norms = torch.linalg.vector_norm(adv - x, dim=1)
        assert (res.lower_bounds[ok] <= norms[ok] + 1e-6).all()
    assert all(s == "optimal" for s in res.status)


def test_attack_contract_basics():
    net = _mlp(6).train()
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2])
    before = x.clone()
    out = linear_region(
        net, x, labels, n1=2, n2=2, n3=1, n4=1, generator=torch.Generator().manual_seed(1)
    )
    again = linear_region(
        net, x, labels, n1=2, n2=2, n3=1, n4=1, generator=torch.Generator().manual_seed(1)
    )
    assert net.training  # restored
    assert torch.equal(x, before)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, again)
    net.eval()
    with torch.no_grad():
        moved = (out != x).any(1)
        assert (net(out).argmax(1)[moved] != labels[moved]).all()


@pytest.mark.parametrize("p", [2.0, INF])
def test_two_warm_starts_never_end_above_the_nearer_start(p):
    from advx.attacks.linear_region.attack import ddn_start, warm_start

    net = _mlp(3, sizes=(6, 10, 3), batchnorm=False)
    x = torch.rand(6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    net = net.double()
    with torch.no_grad():
        labels = net(x).argmax(1)
    df, df_ok = warm_start(net, x, labels, p, False)
    dd, dd_ok = ddn_start(net, x, labels, False)
    bound = torch.minimum(
        torch.where(df_ok, (df - x).norm(p=p, dim=1), torch.full((6,), INF, dtype=x.dtype)),
        torch.where(dd_ok, (dd - x).norm(p=p, dim=1), torch.full((6,), INF, dtype=x.dtype)),
    )
    out = linear_region(
        net, x, labels, norm=p, init="deepfool+ddn", n1=3, n2=3, n3=1, n4=1,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    with torch.no_grad():
        fooled = net(out).argmax(1) != labels
    assert fooled[torch.isfinite(bound)].all()
    norms = (out - x).norm(p=p, dim=1)
    assert (norms[torch.isfinite(bound)] <= bound[torch.isfinite(bound)] * (1 + 1e-9)).all()


@pytest.mark.parametrize("p", [2.0, INF])
def test_class_starts_reach_their_class_and_the_attack_never_ends_above_them(p):
    from advx.attacks.linear_region.attack import class_starts

    net = _mlp(4, sizes=(6, 10, 4), batchnorm=False).double()
    x = torch.rand(5, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        labels = net(x).argmax(1)
    starts = class_starts(net, x, labels, p, 4)
    assert len(starts) == 4
    nearest = torch.full((5,), INF, dtype=x.dtype)
    for c, (points, found) in enumerate(starts):
        assert not found[labels == c].any()
        with torch.no_grad():
            assert (net(points[found]).argmax(1) == c).all()
        nearest = torch.where(found, torch.minimum(nearest, (points - x).norm(p=p, dim=1)), nearest)
    out = linear_region(
        net, x, labels, norm=p, init="deepfool+classes", n1=2, n2=2, n3=1, n4=1,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    reached = torch.isfinite(nearest)
    with torch.no_grad():
        assert (net(out).argmax(1)[reached] != labels[reached]).all()
    norms = (out - x).norm(p=p, dim=1)
    assert (norms[reached] <= nearest[reached] * (1 + 1e-9)).all()


def test_warm_starts_keep_a_margin_above_rounding():
    """The bisected warm starts (DeepFool's, DDN's) stay adversarial on any batch composition:
    their margin exceeds the logits' rounding (a bare argmax flip lost the MIP's incumbent)."""
    from advx.attacks.linear_region.attack import ddn_start, warm_start

    net = _mlp(5, sizes=(20, 32, 5), batchnorm=False)
    x = torch.rand(16, 20, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        labels = net(x).argmax(1)
    for start in (warm_start(net, x, labels, 2.0, False), ddn_start(net, x, labels, False)):
        points, found = start
        assert found.any()
        with torch.no_grad():
            alone = torch.cat([net(points[i : i + 1]) for i in range(16)])
        assert (alone.argmax(1) != labels)[found].all()


def test_seeded_sample_takes_the_nearer_start_as_best_and_the_other_as_seed():
    from advx.attacks.linear_region.attack import _seeded_sample

    x = np.zeros(3)
    far, near = np.array([[0.0, 0.0, 0.9]]), np.array([[0.3, 0.0, 0.0]])
    starts = [(far, [True], [1]), (near, [True], [2]), (near * 0.1, [False], [0])]
    sample = _seeded_sample(x, 0, starts, 0, lambda c: [c], 2.0)
    assert np.array_equal(sample.best, near[0]) and sample.u == pytest.approx(0.3)
    assert sample.classes == [2]  # 'init' classes follow the best start
    assert len(sample.seeds) == 1 and np.array_equal(sample.seeds[0], far[0])


def test_targeted_reaches_the_target():
    net = _two_input_net()
    x = torch.tensor([[0.3, 0.6], [0.7, 0.2]], dtype=torch.float64)
    with torch.no_grad():
        pred = net(x).argmax(1)
    targets = (pred + 1) % 3
    out = linear_region(net, x, targets, targeted=True, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reached = net(out).argmax(1) == targets
    res = minimal_perturbation(net, x, targets, norm=2, targeted=True, time_limit=30)
    for i in range(2):
        if reached[i]:
            assert float(res.lower_bounds[i]) <= float((out[i] - x[i]).norm()) + 1e-6


@pytest.mark.parametrize(
    "kwargs, name",
    [({"n1": 0}, "n1"), ({"alpha": 0.5}, "alpha"), ({"target_classes": "some"}, "target_classes"),
     ({"norm": 3}, "norm"), ({"init": "pgd"}, "init"), ({"solver": "gurobi"}, "solver"),
     ({"facets": -1}, "facets"), ({"facets": 2.5}, "facets")],
)  # fmt: skip
def test_bad_arguments_name_the_argument(kwargs, name):
    net = _mlp(0)
    with pytest.raises(ValueError, match=name):
        linear_region(net, torch.rand(2, 6), torch.zeros(2, dtype=torch.long), **kwargs)


@pytest.mark.parametrize("seed", range(4))
def test_first_layer_bounds_over_box_and_ball_match_slsqp(seed):
    """verify._ball_box_minimum: min c.delta over the box [-x, 1 - x] and the L2 ball of radius
    r, against SLSQP, with radii where the ball binds and where the box's corner is inside it."""
    from advx.verify import _ball_box_minimum

    rng = np.random.default_rng(seed)
    d = 8
    x = rng.choice([0.0, 1.0, 0.3, 0.8], size=d)
    c = rng.normal(size=(3, d))
    for r in (0.2, 0.7, 5.0):
        ours = _ball_box_minimum(c, -x, 1 - x, r)
        for j in range(3):
            ref = minimize(
                lambda v, j=j: c[j] @ v,
                np.zeros(d),
                jac=lambda v, j=j: c[j],
                constraints=[
                    {"type": "ineq", "fun": lambda v, r=r: r * r - v @ v, "jac": lambda v: -2 * v}
                ],  # fmt: skip
                bounds=list(zip(-x, 1 - x)),
                method="SLSQP",
                options={"ftol": 1e-12, "maxiter": 500},
            )
            # SLSQP may stop with "positive directional derivative" at the precision limit
            # (it does with one BLAS thread): its point must still be feasible and equal ours
            assert ref.success or ref.status == 8
            assert ref.x @ ref.x <= r * r * (1 + 1e-9) and np.all(ref.x >= -x - 1e-12)
            assert ours[j] == pytest.approx(ref.fun, rel=1e-5, abs=1e-7)


def test_branching_picks_the_most_violated_relu_and_stops_at_an_exact_point():
    """verify._branching_variable: the unfixed ReLU whose relaxed output is furthest above
    max(0, pre-activation); None once every ReLU holds exactly and every binary is integral."""
    from advx.verify import _branching_variable, _Problem

    prob = _Problem()
    z = prob.add_many([0.0, 0.0], [1.0, 1.0])
    posts = prob.add_many([0.0, 0.0], [2.0, 2.0])
    binaries = np.array([prob.add(0, 1, integer=True), prob.add(0, 1, integer=True)])
    w = np.array([[1.0, -1.0], [1.0, 1.0]])
    for j in range(2):
        prob.relus.append((binaries[j], posts[j], z, w[j], -0.5))
    sol = np.zeros(len(prob.cost))
    sol[z] = [0.5, 0.25]  # pre-activations -0.25 and 0.25
    sol[posts] = [0.3, 0.4]  # violations 0.3 and 0.15
    sol[binaries] = [0.5, 0.5]
    assert _branching_variable(prob, sol, binaries, {}) == binaries[0]
    assert _branching_variable(prob, sol, binaries, {int(binaries[0]): 0.0}) == binaries[1]
    sol[posts] = [0.0, 0.25]  # both ReLUs exact: the relaxation's point is the network's
    assert _branching_variable(prob, sol, binaries, {}) is None


def test_daqp_wrapper_tells_infeasible_from_solved():
    """verify._daqp: the optimum of a small ranged QP, and DAQP's infeasibility flag."""
    from advx.verify import DAQP_INFEASIBLE, _daqp

    a = np.array([[1.0, 1.0]])
    x, flag = _daqp(np.eye(2), np.array([-1.0, 0.0]), a, np.array([1.5]), np.array([2.0]),
                    np.zeros(2), np.ones(2))  # fmt: skip
    assert flag > 0
    assert x == pytest.approx([1.0, 0.5], abs=1e-8)  # min |v - (1, 0)|^2, v1 + v2 >= 1.5
    _, flag = _daqp(np.eye(2), np.zeros(2), a, np.array([3.0]), np.array([4.0]),
                    np.zeros(2), np.ones(2))  # fmt: skip
    assert flag == DAQP_INFEASIBLE


def test_mip_never_claims_optimal_when_a_relaxation_fails(monkeypatch):
    """A node that neither DAQP nor HiGHS can solve is never pruned: the L2 MIP then reports a
    time limit with a lower bound at most the true minimum, not a false optimum."""
    import qpsolvers

    import advx.verify as verify

    net = _two_input_net()
    x = torch.tensor([[0.3, 0.6]], dtype=torch.float64)
    with torch.no_grad():
        label = net(x).argmax(1)
    monkeypatch.setattr(verify, "_daqp", lambda *args: (None, -4))  # iteration limit
    monkeypatch.setattr(qpsolvers, "solve_qp", lambda *args, **kwargs: None)
    res = minimal_perturbation(net, x, label, norm=2, time_limit=30)
    assert res.status[0] == "time_limit"
    assert float(res.lower_bounds[0]) <= _grid_minimum(net, x[0], int(label[0]), 2) + 1e-9


def test_points_across_facets_lie_in_the_neighbouring_region():
    """Each point of ``across_facets`` flips the unit whose facet it crosses (units whose facets
    are nearer may flip too): it lies in another region, across that facet."""
    from advx.attacks.linear_region.attack import _Sample, _Search, _Settings

    net = _mlp(7, sizes=(6, 12, 3), batchnorm=False).double()
    x = torch.rand(1, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    search = _Search(net, x, _Settings(p=2.0, targeted=False, alpha=1.5, solver="daqp"))
    best = np.full(6, 0.5)
    sample = _Sample(x=x[0].numpy(), source=0, classes=[1, 2], best=best, u=0.4)
    points = search.across_facets([sample], count=4)[0]
    assert len(points) == 4
    layers = float64_layers(net)
    before = activation_patterns(layers, torch.as_tensor(best)[None])[0]
    region = linear_regions(layers, torch.as_tensor(best)[None])
    slack = region.slack(torch.as_tensor(best)[None])[0] / region.halfspace_matrix[0].norm(dim=1)
    nearest = torch.argsort(slack)[:4]
    for unit, point in zip(nearest.tolist(), points):
        after = activation_patterns(layers, torch.as_tensor(point)[None])[0]
        assert after[unit] != before[unit]


@pytest.mark.parametrize("p", [2.0, INF])
def test_facet_descent_never_ends_above_algorithm_1(p):
    """The descent runs after Algorithm 1 with the same random points, and only keeps a region's
    solution that beats the best: its norms are never larger, and every output is adversarial."""
    net = _mlp(5, sizes=(6, 16, 12, 4), batchnorm=False).double()
    x = torch.rand(8, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        labels = net(x).argmax(1)
    runs = {}
    for facets in (0, 10):
        out = linear_region(
            net, x, labels, norm=p, n1=2, n2=2, n3=1, n4=1, facets=facets,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        with torch.no_grad():
            assert (net(out).argmax(1) != labels).all()
        runs[facets] = torch.linalg.vector_norm(out - x, ord=p, dim=1)
    assert (runs[10] <= runs[0] * (1 + 1e-9)).all()
    assert (runs[10] < runs[0] * (1 - 1e-6)).any()  # on this instance it improves some samples
