"""ZOO (thesis ch. 3, Algorithms 2-3): query-only access, closed-form optimum on the linear
harness, finite differences against autograd, budgets, batch == per-sample, attack-space
reduction, hierarchy and importance sampling."""

from __future__ import annotations

import pytest
import torch
from helpers import NoAutograd
from linear_harness import assert_within_factor_of_optimum, make_problem, minimal_distance
from torch import nn

from advx.attacks import ATTACKS, zoo
from advx.attacks import zoo as zoo_function
from advx.attacks.registry import BLACK_BOX
from advx.attacks.zoo import (
    _CoordinateState,
    _Problem,
    _settings,
    choose_coordinates,
    downscale,
    estimate_derivatives,
    importance_weights,
    interpolation_matrix,
    upscale,
)
from advx.blackbox import QueryModel

assert zoo is zoo_function


def _conv_net(channels: int = 1, classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, classes),
    )


def _images(n: int, channels: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, channels, 8, 8, generator=gen)


@pytest.mark.parametrize("name", sorted(n for n, i in ATTACKS.items() if i.access == BLACK_BOX))
def test_black_box_attacks_never_call_the_model_with_autograd(name):
    info = ATTACKS[name]
    model = NoAutograd(_conv_net()).train()
    x = _images(3)
    with torch.no_grad():
        y = model.model.eval()(x).argmax(1)
    model.train()
    before = x.clone()
    adv = info.function(model, x, y, **info.quick, generator=torch.Generator().manual_seed(0))
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert adv.min() >= 0 and adv.max() <= 1 and torch.equal(x, before)
    assert model.training and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("solver", ["adam", "newton"])
def test_linear_harness_within_1_1_of_the_optimum(solver):
    model, x, y = make_problem(n=6, d=16, k=3, dtype=torch.float64)
    lr = 0.01 if solver == "adam" else 0.5
    adv = zoo(
        model,
        x,
        y,
        coordinates=8,
        steps=400,
        lr=lr,
        binary_search_steps=10,
        c_init=1.0,
        abort_early=False,
        generator=torch.Generator().manual_seed(0),
        solver=solver,
    )
    with torch.no_grad():
        assert (model(adv).argmax(1) != y).all()
    norms = (adv - x).flatten(1).norm(dim=1)
    assert_within_factor_of_optimum(norms, minimal_distance(model, x, y, 2.0), 1.1)


def _problem(model, x, y, const, targeted=False, box="clip"):
    settings = _settings(
        x,
        targeted=targeted,
        solver="adam",
        coordinates=8,
        h=1e-4,
        lr=0.01,
        steps=1,
        confidence=0.0,
        abort_early=False,
        box=box,
        attack_size=None,
        hierarchy=(),
        importance_sampling=False,
        reset_adam=True,
    )
    seeds = torch.zeros(x.shape[0], dtype=torch.int64)
    tanh = None
    return _Problem(QueryModel(model), x, y, tanh, seeds, settings)


def test_finite_differences_match_autograd_on_a_smooth_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    x = 0.3 + 0.4 * torch.rand(4, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    const = torch.tensor([0.5, 1.0, 2.0, 10.0], dtype=torch.float64)
    problem = _problem(model, x, y, const)
    y_attack = 0.05 * torch.randn(4, 16, dtype=torch.float64)
    rows = torch.arange(4)
    coords = torch.stack([torch.randperm(16)[:8] for _ in range(4)])
    grad, hessian, loss, *_ = estimate_derivatives(problem, y_attack, rows, coords, const, (4, 4))
    w = y_attack.clone().requires_grad_(True)
    xs = x + w.reshape(x.shape)
    log_p = model(xs).log_softmax(1)
    chosen = log_p.gather(1, y[:, None]).squeeze(1)
    others = log_p.masked_fill(nn.functional.one_hot(y, 3).bool(), -1e9).amax(1)
    exact = (xs - x).flatten(1).square().sum(1) + const * (chosen - others).clamp_min(0.0)
    (autograd,) = torch.autograd.grad(exact.sum(), w)
    expected = autograd.gather(1, coords)
    assert torch.allclose(loss, exact.detach())
    assert ((grad - expected).abs() <= 1e-3 * expected.abs().clamp_min(1e-6)).all()
    # second derivative of the distance term along e_i is exactly 2
    assert (hessian > 0).all()
    assert problem.query.queries.tolist() == [17] * 4


def test_query_budget_is_respected_exactly_and_returns_best_so_far():
    model, x, y = make_problem(n=3, d=16, k=3, seed=2)
    per_iteration = 2 * 4 + 1
    budget = 1 + 7 * per_iteration + 5  # the clean query, 7 iterations, 5 left unused
    query = QueryModel(NoAutograd(model), budget=budget)
    adv = zoo(
        query,
        x,
        y,
        coordinates=4,
        steps=50,
        binary_search_steps=3,
        abort_early=False,
        c_init=100.0,
        lr=0.1,
        generator=torch.Generator().manual_seed(0),
    )
    assert query.queries.tolist() == [1 + 7 * per_iteration] * 3
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    unlimited = QueryModel(model)
    zoo(
        unlimited,
        x,
        y,
        coordinates=4,
        steps=7,
        binary_search_steps=1,
        abort_early=False,
        c_init=100.0,
        lr=0.1,
        generator=torch.Generator().manual_seed(0),
    )
    assert unlimited.queries.tolist() == query.queries.tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"solver": "newton", "box": "tanh"},
        {"attack_size": 4, "hierarchy": ((3, 8),), "importance_sampling": True},
    ],
)
def test_batch_equals_per_sample_with_the_same_generator(options, dtype):
    model = _conv_net().to(dtype).eval()
    x = _images(3).to(dtype)
    with torch.no_grad():
        y = model(x).argmax(1)
    kw = dict(coordinates=16, steps=12, binary_search_steps=2, c_init=10.0, lr=0.05, **options)
    batch = zoo(model, x, y, generator=torch.Generator().manual_seed(3), **kw)
    for i in range(3):
        single = zoo(
            model, x[i : i + 1], y[i : i + 1], generator=torch.Generator().manual_seed(3), **kw
        )
        assert torch.allclose(batch[i : i + 1], single, atol=1e-6)
    other = zoo(model, x, y, generator=torch.Generator().manual_seed(4), **kw)
    assert not torch.equal(other, batch) or torch.equal(batch, x)


def test_upscale_is_separable_linear_interpolation_and_downscale_inverts_it():
    y = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    a_h, a_w = interpolation_matrix(4, 9), interpolation_matrix(5, 11)
    up = upscale(y, (9, 11))
    assert torch.allclose(up, a_h @ y @ a_w.T)
    assert torch.allclose(downscale(up, (4, 5)), y)
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    least_squares = downscale(x, (4, 5))
    kron = torch.kron(a_h, a_w)
    solution = torch.linalg.lstsq(kron, x.reshape(6, -1).T).solution.T.reshape(2, 3, 4, 5)
    assert torch.allclose(least_squares, solution, atol=1e-10)


def test_perturbation_lives_in_the_attack_space():
    model = _conv_net(channels=3).eval()
    x = _images(2, channels=3)
    with torch.no_grad():
        y = model(x).argmax(1)
    adv = zoo(
        model,
        x,
        y,
        attack_size=(2, 4),
        coordinates=8,
        steps=60,
        binary_search_steps=1,
        c_init=100.0,
        lr=0.02,
        abort_early=False,
        generator=torch.Generator().manual_seed(0),
    )
    delta = (adv - x).double()
    assert delta.abs().max() > 0
    assert delta.abs().max() < 0.3  # well inside the box: no clipping
    assert torch.allclose(upscale(downscale(delta, (2, 4)), (8, 8)), delta, atol=1e-6)


def test_hierarchy_grows_the_attack_space_keeping_the_perturbation():
    state = _CoordinateState(2, (2, 2), torch.zeros(2, 3, 8, 8))
    state.y = torch.randn(2, 12)
    state.m += 1
    before = upscale(state.y.reshape(2, 3, 2, 2), (8, 8))
    state.resize((4, 4), 3, (8, 8))
    after = upscale(state.y.reshape(2, 3, 4, 4), (8, 8))
    assert state.y.shape == (2, 48) and state.size == (4, 4)
    # y_new = D_new^{-1}(D_old(y_old)): the least-squares fit, whose residual is orthogonal to
    # the new attack space (the 2x2 and 4x4 bilinear spaces are not nested)
    assert torch.allclose(downscale(before - after, (4, 4)), torch.zeros(2, 3, 4, 4), atol=1e-5)
    assert (after - before).norm() < 0.5 * before.norm()
    assert (state.m == 0).all() and (state.t == 0).all()
    model, x = _conv_net().eval(), _images(1)
    with torch.no_grad():
        y = model(x).argmax(1)
    for bad in (((3, 2),), ((3, 4), (2, 8)), ((3, 16),)):
        with pytest.raises(ValueError, match="hierarchy"):
            zoo(model, x, y, attack_size=4, hierarchy=bad)
    with pytest.raises(ValueError, match="hierarchy"):
        zoo(model, x, y, hierarchy=((3, 8),))


def test_importance_weights_max_pool_8x8_regions():
    y = torch.zeros(1, 2, 16, 16)
    y[0, 0, 0, 0] = -0.5  # region (0, 0) of channel 0
    y[0, 1, 15, 14] = 0.25  # region (7, 7) of channel 1
    weights = importance_weights(y).reshape(1, 2, 16, 16)
    assert torch.isclose(weights.sum(), torch.tensor(1.0))
    assert torch.allclose(weights[0, 0, :2, :2], torch.full((2, 2), 0.5 / 3))
    assert torch.allclose(weights[0, 1, 14:, 14:], torch.full((2, 2), 0.25 / 3))
    assert (weights > 0).sum() == 8
    uniform = importance_weights(torch.zeros(1, 1, 8, 8))
    assert torch.allclose(uniform, torch.full((1, 64), 1 / 64))


def test_importance_sampling_draws_in_proportion_and_never_repeats():
    seeds = torch.arange(2000, dtype=torch.int64)
    weights = torch.tensor([[0.5, 0.3, 0.2, 0.0]]).expand(2000, -1)
    picks = choose_coordinates(seeds, 0, 4, 1, weights).flatten()
    freq = torch.bincount(picks, minlength=4).double() / 2000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64), atol=0.04)
    three = choose_coordinates(seeds[:50], 1, 4, 3, weights[:50])
    assert (three.sort(1).values == torch.tensor([0, 1, 2])).all()
    uniform = choose_coordinates(seeds[:50], 2, 30, 30)
    assert (uniform.sort(1).values == torch.arange(30)).all()


def test_targeted_zoo_reaches_the_target_and_leaves_inputs_untouched():
    model, x, y = make_problem(n=4, d=16, k=3, seed=1)
    targets = (y + 1) % 3
    before = x.clone()
    adv = zoo(
        model,
        x,
        targets,
        targeted=True,
        coordinates=16,
        steps=200,
        binary_search_steps=3,
        c_init=10.0,
        lr=0.02,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(x, before)
    with torch.no_grad():
        assert (model(adv).argmax(1) == targets).all()


def test_already_adversarial_inputs_cost_one_query_and_come_back_unchanged():
    model, x, y = make_problem(n=3, d=16, k=3)
    wrong = (y + 1) % 3
    query = QueryModel(model)
    adv = zoo(query, x, wrong, steps=5)
    assert torch.equal(adv, x) and query.queries.tolist() == [1, 1, 1]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"solver": "sgd"}, "solver"),
        ({"box": "sigmoid"}, "box"),
        ({"coordinates": 0}, "coordinates"),
        ({"h": 0.0}, "h"),
        ({"steps": 0}, "steps"),
        ({"binary_search_steps": 0}, "binary_search_steps"),
        ({"c_init": -1.0}, "c_init"),
        ({"attack_size": 3}, "attack_size"),
        ({"importance_sampling": True}, "importance_sampling"),
    ],
)
def test_zoo_rejects_bad_arguments(kwargs, name):
    model, x, y = make_problem(n=2)
    flat_x = x.flatten(1)
    flat_model = nn.Sequential(model)
    with pytest.raises((ValueError, TypeError), match=name):
        zoo(flat_model, flat_x, y, **kwargs)


def test_zoo_refuses_probabilities_unless_told():
    model, x, y = make_problem(n=2)
    softmax = nn.Sequential(model, nn.Softmax(1))
    with pytest.raises(ValueError, match="probabilities"):
        zoo(softmax, x, y, steps=2)
    adv = zoo(QueryModel(softmax, output="probabilities"), x, y, steps=2, binary_search_steps=1)
    assert adv.shape == x.shape


def test_runner_reports_queries_per_sample_next_to_gradients():
    from advx.evaluation.runner import run_attack  # noqa: PLC0415

    model, x, y = make_problem(n=4, d=16, k=3)
    kw = {"coordinates": 4, "steps": 3, "binary_search_steps": 1, "abort_early": False}
    result = run_attack(model, x, y, "zoo", hyperparameters=kw, batch_size=3, progress=False)
    # one clean query, then 3 iterations of 2 * 4 + 1 probes, for every sample
    assert result.samples["queries"].tolist() == [28.0] * 4
    assert result.summary["queries_per_sample"] == 28.0
    assert result.summary["backwards_per_sample"] == 0.0
    white = run_attack(model, x, y, "fgm", hyperparameters={"eps": 0.1}, progress=False)
    assert white.summary["queries_per_sample"] == white.summary["forwards_per_sample"]


def test_trace_reports_every_iteration_the_loss_and_the_first_success():
    """``trace`` (thesis Table 3's "first valid" iteration): one call per iteration with the
    centre's total loss, and ``found`` turns on exactly when the returned attack first succeeds;
    the trace changes nothing."""
    model, x, y = make_problem(n=1, d=16, k=3, seed=1)
    targets = (y + 1) % 3
    calls = []
    settings = {"targeted": True, "coordinates": 16, "steps": 60, "binary_search_steps": 1}
    settings |= {"c_init": 10.0, "lr": 0.02, "abort_early": False}

    def trace(round_, iteration, rows, loss, found):
        calls.append((round_, iteration, rows.tolist(), float(loss[0]), bool(found[0])))

    adv = zoo(
        model, x, targets, generator=torch.Generator().manual_seed(0), trace=trace, **settings
    )
    plain = zoo(model, x, targets, generator=torch.Generator().manual_seed(0), **settings)
    assert torch.equal(adv, plain)
    assert [c[1] for c in calls] == list(range(60)) and all(c[2] == [0] for c in calls)
    found = [c[4] for c in calls]
    assert found[-1] and not found[0]
    first = found.index(True)
    assert all(found[first:])  # it stays found within the round
    assert calls[0][3] > calls[-1][3]  # the loss fell
    with torch.no_grad():
        assert model(adv).argmax(1).item() == targets.item()


def test_zoo_rejects_a_trace_that_is_not_callable():
    model, x, y = make_problem(n=1)
    with pytest.raises(TypeError, match="trace"):
        zoo(model, x, y, steps=2, trace=3)
