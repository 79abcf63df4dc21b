"""DDN and ANU (advx.attacks.ddn) against known answers on linear classifiers.

On the harness problems the minimal L2 distances are ~0.01-0.1, so the tests scale the paper's
MNIST-sized hyperparameters (eps_0 = 1, alpha 1 -> 0.01 for distances ~1.4) down by ten.
The multi-class models have their logits multiplied by ``SHARP``: that leaves every decision
region (hence every minimal distance) unchanged, but the cross-entropy gradient that DDN follows
then points at the nearest boundary instead of mixing in the other near-tied classes. On the raw
3-class harness, whose margins are all small, DDN's fixed point is ~1.12x the optimum.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from linear_harness import ProbabilityModel, make_problem, minimal_distance
from scipy.optimize import minimize

from advx.attacks._core import lp_norm
from advx.attacks.ddn import (
    ANU_DEFAULTS,
    ANU_TARGETED_DEFAULTS,
    DDN_DEFAULTS,
    AdaptiveFactor,
    anu,
    cosine_schedule,
    ddn,
)

SCALED = {"init_epsilon": 0.1, "alpha_init": 0.1, "alpha_final": 0.001}
SHARP = 30.0
ATTACKS = [ddn, anu]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """These problems are tiny: one thread avoids contention on shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sharpened_problem(k: int = 3, n: int = 8, seed: int = 0, dtype=torch.float32):
    model, inputs, labels = make_problem(n=n, k=k, seed=seed, dtype=dtype)
    with torch.no_grad():
        model.linear.weight.mul_(SHARP)
        model.linear.bias.mul_(SHARP)
    return model, inputs, labels


def targeted_optimum(model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Exact minimal L2 distance to the region where ``targets`` wins, inside the box: the QP
    min ||d||^2 s.t. (w_j - w_t).(x + d) + b_j - b_t <= 0 for j != t, 0 <= x + d <= 1 (SLSQP)."""
    w = model.linear.weight.detach().double().numpy()
    b = model.linear.bias.detach().double().numpy()
    out = []
    for x, t in zip(inputs.reshape(inputs.shape[0], -1).double().numpy(), targets.tolist()):
        others = [j for j in range(w.shape[0]) if j != t]
        a, c = w[others] - w[t], b[others] - b[t]
        result = minimize(
            lambda d: d @ d,
            np.zeros_like(x),
            jac=lambda d: 2 * d,
            constraints=[
                {
                    "type": "ineq",
                    "fun": lambda d, a=a, c=c, x=x: -(a @ (x + d) + c),
                    "jac": lambda d, a=a: -a,
                }
            ],
            bounds=list(zip(-x, 1 - x)),
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500},
        )
        assert result.success, result.message
        out.append(math.sqrt(result.fun))
    return torch.tensor(out, dtype=inputs.dtype)


def norms(adv: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    return lp_norm(adv - inputs, 2)


# --------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("attack", ATTACKS)
def test_untargeted_reaches_the_minimal_distance(attack):
    model, inputs, labels = sharpened_problem(k=3)
    adv = attack(model, inputs, labels, **SCALED)
    assert (model(adv).argmax(1) != labels).all()
    ratio = norms(adv, inputs) / minimal_distance(model, inputs, labels, 2.0)
    assert ratio.min() >= 1 - 1e-4
    assert ratio.max() <= 1.05


@pytest.mark.parametrize("attack", ATTACKS)
def test_untargeted_two_classes_unscaled(attack):
    model, inputs, labels = make_problem(k=2)
    adv = attack(model, inputs, labels, **SCALED)
    assert (model(adv).argmax(1) != labels).all()
    ratio = norms(adv, inputs) / minimal_distance(model, inputs, labels, 2.0)
    assert ratio.max() <= 1.05


@pytest.mark.parametrize("attack", ATTACKS)
def test_targeted_two_classes_reaches_the_pairwise_distance(attack):
    model, inputs, labels = make_problem(k=2, seed=1)
    targets = 1 - labels
    adv = attack(model, inputs, targets, targeted=True, **SCALED)
    assert (model(adv).argmax(1) == targets).all()
    optimum = minimal_distance(model, inputs, labels, 2.0, targets=targets)
    ratio = norms(adv, inputs) / optimum
    assert ratio.min() >= 1 - 1e-4
    assert ratio.max() <= 1.05


@pytest.mark.parametrize("attack", ATTACKS)
def test_targeted_multiclass_reaches_the_qp_optimum(attack):
    model, inputs, labels = sharpened_problem(k=4, n=6, seed=2)
    targets = (labels + 1 + torch.arange(6) % 3) % 4
    adv = attack(model, inputs, targets, targeted=True, **SCALED)
    assert (model(adv).argmax(1) == targets).all()
    ratio = norms(adv, inputs) / targeted_optimum(model, inputs, targets)
    assert ratio.min() >= 1 - 1e-3
    assert ratio.max() <= 1.05


def test_already_misclassified_returns_the_input():
    model, inputs, labels = make_problem(k=3)
    wrong = (labels + 1) % 3
    adv = ddn(model, inputs, wrong, steps=5, **SCALED)
    assert torch.equal(adv, inputs)


# --------------------------------------------------------------------------- ANU's rule


def test_anu_with_alpha_gamma_zero_is_ddn_bit_for_bit():
    model, inputs, labels = make_problem(k=3)
    for kwargs in ({"steps": 40}, {"steps": 40, "quantize": True}, {"max_norm": 0.02, "steps": 30}):
        reference = ddn(model, inputs, labels, gamma=0.05, **SCALED, **kwargs)
        same = anu(model, inputs, labels, gamma0=0.05, alpha_gamma=0.0, **SCALED, **kwargs)
        assert torch.equal(same, reference)
    targets = (labels + 1) % 3
    reference = ddn(model, inputs, targets, targeted=True, gamma=0.1, **SCALED)
    same = anu(model, inputs, targets, targeted=True, gamma0=0.1, alpha_gamma=0.0, **SCALED)
    assert torch.equal(same, reference)
    adaptive = anu(model, inputs, labels, gamma0=0.05, alpha_gamma=0.1, **SCALED)
    assert not torch.equal(adaptive, ddn(model, inputs, labels, gamma=0.05, **SCALED))


def test_adaptive_factor_follows_algorithm_2():
    steps, gamma0, rate0 = 6, 0.1, 0.2
    rule = AdaptiveFactor(gamma0, rate0, 0.9, steps, torch.zeros(1, 3))
    history = [False, False, True, True, False, True]  # x'_0 .. x'_5 adversarial?
    expected, previous = gamma0, False  # A_{-1} = 0 (line 2)
    for k, adv in enumerate(history, start=1):
        rate = cosine_schedule(rate0, 0.0, k, steps)
        expected *= (1 + rate) if adv == previous else (1 - rate)
        previous = adv
        got = rule(k, torch.tensor([adv]))
        assert got.item() == pytest.approx(expected, rel=1e-6)
    assert cosine_schedule(1.0, 0.01, 1, 100) == 1.0
    assert cosine_schedule(1.0, 0.01, 51, 100) == pytest.approx(0.505)
    # the reference code's phase (k - 1) / steps: the last step is just above alpha_final
    last = 0.01 + 0.99 * (1 + math.cos(math.pi * 99 / 100)) / 2
    assert cosine_schedule(1.0, 0.01, 100, 100) == pytest.approx(last, rel=1e-12)


def test_adaptive_factor_is_capped_below_one():
    rule = AdaptiveFactor(0.4, 0.5, 0.9, 100, torch.zeros(2, 3))
    for k in range(1, 30):
        gamma = rule(k, torch.tensor([True, False]))
    assert (gamma <= 0.9).all() and (gamma > 0).all()


# --------------------------------------------------------------------------- best so far


@pytest.mark.parametrize("attack", ATTACKS)
def test_returns_the_lowest_norm_adversarial_iterate_seen(attack):
    model, inputs, labels = make_problem(k=3, n=6, seed=3)
    seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    adv = attack(
        model, inputs, labels, steps=40, **SCALED, callback=lambda k, x, ok: seen.append((k, x, ok))
    )
    assert [k for k, _, _ in seen] == list(range(41))
    assert torch.equal(seen[0][1], inputs)
    result = norms(adv, inputs)
    lowest = torch.full_like(result, math.inf)
    for _, iterate, success in seen:
        candidate = torch.where(success, norms(iterate, inputs), torch.full_like(result, math.inf))
        assert (result <= candidate).all()  # never worse than any adversarial seen earlier
        lowest = torch.minimum(lowest, candidate)
    assert torch.equal(result, lowest)
    assert (model(adv).argmax(1) != labels).all()


def test_nothing_found_returns_the_input():
    model, inputs, labels = make_problem(k=3)
    adv = ddn(model, inputs, labels, steps=3, init_epsilon=1e-4, alpha_init=1e-4, gamma=0.01)
    assert torch.equal(adv, inputs)


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("attack", ATTACKS)
def test_box_inputs_untouched_model_restored(attack):
    model, inputs, labels = make_problem(k=3)
    inputs = inputs.clone()
    inputs[:, :, 0, 0] = 0.0  # put some coordinates on the box faces
    inputs[:, :, 0, 1] = 1.0
    before = inputs.clone()
    model.train()
    adv = attack(model, inputs, labels, steps=30, init_epsilon=2.0)
    assert torch.equal(inputs, before)
    assert adv.shape == inputs.shape and adv.dtype == inputs.dtype
    assert adv.min() >= 0 and adv.max() <= 1
    assert model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("attack", ATTACKS)
def test_batch_equals_per_sample(attack):
    model, inputs, labels = sharpened_problem(k=3, n=5, seed=4, dtype=torch.float64)
    batch = attack(model, inputs, labels, steps=50, **SCALED)
    for i in range(inputs.shape[0]):
        single = attack(model, inputs[i : i + 1], labels[i : i + 1], steps=50, **SCALED)
        torch.testing.assert_close(single[0], batch[i], rtol=0, atol=1e-10)


@pytest.mark.parametrize("attack", ATTACKS)
def test_max_norm_is_respected(attack):
    model, inputs, labels = sharpened_problem(k=3)
    optimum = minimal_distance(model, inputs, labels, 2.0)
    cap = float(optimum.median())
    adv = attack(model, inputs, labels, max_norm=cap, **SCALED)
    result = norms(adv, inputs)
    assert (result <= cap * (1 + 1e-5)).all()
    unreachable = optimum > cap
    assert (result[unreachable] > 0.9 * cap).all()  # the projected last iterate, not the input
    reachable = optimum * 1.05 < cap
    assert (model(adv[reachable]).argmax(1) != labels[reachable]).all()


@pytest.mark.parametrize("attack", ATTACKS)
def test_quantize_gives_multiples_of_one_over_255(attack):
    model, inputs, labels = make_problem(k=2, seed=5)
    inputs = (inputs * 255).round() / 255
    labels = model(inputs).argmax(1)
    for kwargs in ({}, {"max_norm": 0.02}):
        adv = attack(model, inputs, labels, quantize=True, **SCALED, **kwargs)
        scaled = adv * 255
        assert torch.allclose(scaled, scaled.round(), atol=1e-4)
        if kwargs:
            assert (norms(adv, inputs) <= 0.02 * (1 + 1e-5)).all()
        else:
            assert (model(adv).argmax(1) != labels).all()


def test_zero_gradient_uses_the_generator_deterministically():
    model, inputs, labels = make_problem(k=3)
    with torch.no_grad():  # logits so large that softmax saturates: the CE gradient is 0
        model.linear.weight.mul_(1e5)
        model.linear.bias.mul_(1e5)
    runs = [
        ddn(model, inputs, labels, steps=10, generator=torch.Generator().manual_seed(7), **SCALED)
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    assert torch.isfinite(runs[0]).all()


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("attack", "kwargs", "name"),
    [
        (ddn, {"steps": 0}, "steps"),
        (ddn, {"gamma": 0.0}, "gamma"),
        (ddn, {"gamma": 1.0}, "gamma"),
        (ddn, {"gamma": -0.1}, "gamma"),
        (ddn, {"gamma": float("nan")}, "gamma"),
        (ddn, {"init_epsilon": 0.0}, "init_epsilon"),
        (ddn, {"alpha_init": -1.0}, "alpha_init"),
        (ddn, {"max_norm": 0.0}, "max_norm"),
        (ddn, {"levels": 1}, "levels"),
        (anu, {"steps": 0}, "steps"),
        (anu, {"gamma0": 1.5}, "gamma0"),
        (anu, {"alpha_gamma": -0.1}, "alpha_gamma"),
        (anu, {"alpha_gamma": 1.0}, "alpha_gamma"),
        (anu, {"gamma_max": 1.0}, "gamma_max"),
    ],
)
def test_bad_arguments_raise_naming_them(attack, kwargs, name):
    model, inputs, labels = make_problem(k=3)
    with pytest.raises(ValueError, match=name):
        attack(model, inputs, labels, **kwargs)


@pytest.mark.parametrize("attack", ATTACKS)
def test_bad_inputs_and_probability_models_are_refused(attack):
    model, inputs, labels = make_problem(k=3)
    nan_inputs = inputs.clone()
    nan_inputs[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="inputs"):
        attack(model, nan_inputs, labels)
    with pytest.raises(ValueError, match="probabilities"):
        attack(ProbabilityModel(model), inputs, labels)
    with pytest.raises(ValueError, match="labels"):
        attack(model, inputs, labels[:-1])
    out_of_range = labels.clone()
    out_of_range[-1] = 3  # the contract check probes only the first sample's logits
    with pytest.raises(ValueError, match="labels"):
        attack(model, inputs, out_of_range)


def test_defaults_are_valid_keyword_sets():
    model, inputs, labels = make_problem(k=3, n=2)
    for dataset in ("mnist", "cifar10"):
        ddn(model, inputs, labels, **{**DDN_DEFAULTS[dataset], "steps": 2})
        anu(model, inputs, labels, **{**ANU_DEFAULTS[dataset], "steps": 2})
        anu(model, inputs, labels, targeted=True, **{**ANU_TARGETED_DEFAULTS[dataset], "steps": 2})
    assert DDN_DEFAULTS["mnist"]["gamma"] == 0.05
    assert ANU_DEFAULTS["mnist"]["gamma0"] == 0.4 and ANU_DEFAULTS["cifar10"]["alpha_gamma"] == 0.1
