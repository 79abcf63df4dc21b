"""Shared attack pieces: norms, dual directions, projections, argument checks."""

import math

import pytest
import torch

import advx.attacks as attacks
from advx.attacks._core import (
    binary_search_step,
    dual_exponent,
    lp_norm,
    margin,
    parse_norm,
    project_lp_ball,
    steepest_direction,
    update_best,
    validate,
)


@pytest.mark.parametrize(
    "norm, expected",
    [
        (1, 1.0),
        (2, 2.0),
        ("inf", math.inf),
        (float("inf"), math.inf),
        ("Linf", math.inf),
        ("2", 2.0),
    ],
)
def test_parse_norm_accepts_common_spellings(norm, expected):
    assert parse_norm(norm) == expected


@pytest.mark.parametrize("norm", [0, 3, "foo", -1, float("nan")])
def test_parse_norm_rejects_unknown(norm):
    with pytest.raises(ValueError, match="norm"):
        parse_norm(norm)


def test_parse_norm_general_p():
    assert parse_norm(1.5, allowed=None) == 1.5
    with pytest.raises(ValueError, match="norm"):
        parse_norm(0.5, allowed=None)


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0, math.inf])
def test_steepest_direction_attains_dual_norm(p):
    g = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    d = steepest_direction(g, p)
    assert torch.allclose(lp_norm(d, p), torch.ones(5), atol=1e-5)
    inner = (g * d).flatten(1).sum(1)
    assert torch.allclose(inner, lp_norm(g, dual_exponent(p)), rtol=1e-4)
    for _ in range(20):  # no random unit vector does better
        r = torch.randn_like(g)
        r = r / lp_norm(r, p).reshape(-1, 1, 1, 1)
        assert ((g * r).flatten(1).sum(1) <= inner + 1e-4).all()


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_projection_lands_in_ball_and_keeps_inner_points(p):
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(6, 1, 5, 5, generator=gen)
    radius = torch.tensor([0.1, 0.5, 1.0, 2.0, 100.0, 0.0])
    out = project_lp_ball(delta, radius, p)
    assert (lp_norm(out, p) <= radius + 1e-5).all()
    assert torch.equal(out[4], delta[4])  # already inside


def test_l1_projection_is_euclidean_closest_point():
    v = torch.tensor([[3.0, -1.0, 0.5, 0.0]])
    out = project_lp_ball(v, torch.tensor([2.0]), 1.0)
    # soft threshold with theta = 1: [2, 0, 0, 0]
    assert torch.allclose(out, torch.tensor([[2.0, 0.0, 0.0, 0.0]]))


def test_margin_sign_convention():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    labels = torch.tensor([0, 0])
    assert torch.allclose(margin(logits, labels), torch.tensor([2.0, -2.0]))
    assert torch.allclose(
        margin(logits, torch.tensor([1, 1]), targeted=True), torch.tensor([2.0, -1.0])
    )


def test_update_best_keeps_lowest_successful_norm():
    best = torch.zeros(3, 2)
    best_norm = torch.tensor([1.0, math.inf, 0.5])
    cand = torch.ones(3, 2)
    improved = update_best(
        best, best_norm, cand, torch.tensor([0.8, 2.0, 0.7]), torch.tensor([True, True, True])
    )
    assert improved.tolist() == [True, True, False]
    assert torch.allclose(best_norm, torch.tensor([0.8, 2.0, 0.5]))


def test_binary_search_step_brackets_constant():
    const, lo, hi = torch.tensor([1.0, 1.0]), torch.zeros(2), torch.full((2,), 1e10)
    const = binary_search_step(const, lo, hi, torch.tensor([True, False]))
    assert const.tolist() == [0.5, 10.0]


def _batchnorm_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(16, 8),
        torch.nn.BatchNorm1d(8),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 3),
    )


@pytest.mark.parametrize(
    "attack",
    [
        lambda m, x, y: attacks.ddn(m, x, y, steps=3),
        lambda m, x, y: attacks.anu(m, x, y, steps=3),
        lambda m, x, y: attacks.deepfool(m, x, y, steps=3),
        lambda m, x, y: attacks.carlini_wagner_l2(m, x, y, binary_search_steps=1, steps=3),
        lambda m, x, y: attacks.trust_region(m, x, y, steps=3, refine_steps=2),
        lambda m, x, y: attacks.fgm(m, x, y, eps=0.1),
        lambda m, x, y: attacks.pgd(m, x, y, eps=0.1, steps=3),
    ],
    ids=["ddn", "anu", "deepfool", "cw", "trust_region", "fgm", "pgd"],
)
def test_attacks_leave_batchnorm_statistics_of_a_training_model_alone(attack):
    """An attack on a model left in training mode runs it in eval mode (clean check included)
    and restores training mode without touching the BatchNorm running statistics."""
    model = _batchnorm_model().eval()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    model.train()
    bn = model[2]
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    attack(model, x, y)
    assert model.training
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert torch.equal(bn.num_batches_tracked, before[2])


def test_validate_probe_checks_all_labels_but_runs_the_model_on_the_probe_only():
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)

        def forward(self, x):
            calls.append(x.shape[0])
            return self.linear(x.flatten(1))

    model, inputs = Counting(), torch.rand(5, 1, 2, 2)
    labels = torch.tensor([0, 1, 2, 0, 1])
    logits = validate(model, inputs, labels, probe=1)
    assert calls == [1] and logits.shape == (1, 3)
    assert torch.equal(logits, model.linear(inputs[:1].flatten(1)).detach())
    labels[-1] = 3
    with pytest.raises(ValueError, match="labels"):
        validate(model, inputs, labels, probe=1)
