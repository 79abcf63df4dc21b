"""FGM, I-FGM/BIM and PGD: budgets, box, closed-form behaviour on a linear model, contract."""

import math

import pytest
import torch
from linear_harness import ProbabilityModel, make_problem, minimal_distance

from advx.attacks import fgm, ifgm, pgd
from advx.attacks._core import lp_norm

NORMS = [1.0, 2.0, math.inf]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("attack", [fgm, ifgm, pgd])
def test_budget_box_and_inputs_untouched(attack, norm):
    model, x, y = make_problem()
    x_copy = x.clone()
    eps = 0.05 if norm == math.inf else 0.5
    adv = attack(model, x, y, eps=eps, norm=norm)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert torch.equal(x, x_copy)
    assert adv.min() >= 0 and adv.max() <= 1
    assert (lp_norm(adv - x, norm) <= eps * (1 + 1e-5) + 1e-6).all()


@pytest.mark.parametrize("norm", NORMS)
def test_fgm_on_linear_two_class_model_is_optimal(norm):
    """With two classes and the margin loss the steepest step of size d* crosses the boundary
    exactly: eps slightly above the closed-form distance fools every sample, slightly below none."""
    model, x, y = make_problem(k=2)
    dist = minimal_distance(model, x, y, norm)
    free = (
        dist < 0.29
    )  # box inactive: points lie in [0.3, 0.7] (binds only for a one-pixel L1 step)
    assert free.sum() >= 6
    above = fgm(model, x, y, eps=dist * 1.01, norm=norm, loss="margin")
    below = fgm(model, x, y, eps=dist * 0.99, norm=norm, loss="margin")
    assert (model(above).argmax(1) != y)[free].all()
    assert (model(below).argmax(1) == y).all()


@pytest.mark.parametrize("norm", NORMS)
def test_pgd_finds_adversarials_just_above_minimal_distance(norm):
    model, x, y = make_problem(k=3)
    dist = minimal_distance(model, x, y, norm)
    slack = 1.2 if norm == 1 else 1.05  # sparse L1 steps zig-zag between coordinates
    adv = pgd(
        model,
        x,
        y,
        eps=dist * slack,
        norm=norm,
        steps=100,
        loss="margin",
        generator=torch.Generator().manual_seed(0),
    )
    assert (model(adv).argmax(1) != y).all()
    below = pgd(model, x, y, eps=dist * 0.95, norm=norm, steps=50, loss="margin")
    assert (model(below).argmax(1) == y).all()


def test_pgd_targeted_reaches_target():
    model, x, y = make_problem(k=2)
    target = 1 - y
    dist = minimal_distance(model, x, y, 2.0)
    adv = pgd(model, x, target, eps=dist * 1.1, norm=2, steps=50, targeted=True)
    assert (model(adv).argmax(1) == target).all()


@pytest.mark.parametrize("attack", [fgm, ifgm, pgd])
def test_batch_equals_per_sample(attack):
    model, x, y = make_problem(n=5)
    kwargs = {"eps": 0.3, "norm": 2}
    if attack is pgd:
        kwargs["random_start"] = False
    batch = attack(model, x, y, **kwargs)
    single = torch.cat([attack(model, x[i : i + 1], y[i : i + 1], **kwargs) for i in range(5)])
    assert torch.allclose(batch, single, atol=1e-6)


def test_pgd_is_deterministic_for_a_generator():
    model, x, y = make_problem()
    a = pgd(model, x, y, eps=0.3, norm=2, generator=torch.Generator().manual_seed(3))
    b = pgd(model, x, y, eps=0.3, norm=2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_per_sample_eps_tensor():
    model, x, y = make_problem(n=4)
    eps = torch.tensor([0.0, 0.1, 0.2, 0.4])
    adv = fgm(model, x, y, eps=eps, norm=2)
    assert torch.allclose(lp_norm(adv - x, 2), eps, atol=1e-5)
    with pytest.raises(ValueError, match="eps"):
        fgm(model, x, y, eps=torch.ones(3), norm=2)


def test_fgm_l1_variants():
    model, x, y = make_problem(n=3, d=16)
    steep = fgm(model, x, y, eps=0.2, norm=1)
    assert ((steep - x).flatten(1) != 0).sum(1).tolist() == [1, 1, 1]
    spread = fgm(model, x, y, eps=0.2, norm=1, l1_step="normalized")
    assert torch.allclose(lp_norm(spread - x, 1), torch.full((3,), 0.2), atol=1e-5)
    assert (((spread - x).flatten(1) != 0).sum(1) > 1).all()


def test_model_mode_and_parameter_grads_restored():
    model, x, y = make_problem()
    model.train()
    pgd(model, x, y, eps=0.1, norm=math.inf, steps=3)
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda x, y: (x * float("nan"), y), "inputs"),
        (lambda x, y: (x + 2.0, y), "inputs"),
        (lambda x, y: (x[0], y), "inputs|labels"),
        (lambda x, y: (x, y + 10), "labels"),
        (lambda x, y: (x, y[:-1]), "labels"),
        (lambda x, y: (x, y.float()), "labels"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(mutate, match):
    model, x, y = make_problem()
    bad_x, bad_y = mutate(x, y)
    with pytest.raises((ValueError, TypeError), match=match):
        pgd(model, bad_x, bad_y, eps=0.1, norm=2)


def test_bad_norm_and_eps_raise():
    model, x, y = make_problem()
    with pytest.raises(ValueError, match="norm"):
        fgm(model, x, y, eps=0.1, norm=3)
    with pytest.raises(ValueError, match="eps"):
        fgm(model, x, y, eps=-0.1, norm=2)
    with pytest.raises(ValueError, match="steps"):
        pgd(model, x, y, eps=0.1, norm=2, steps=-1)


def test_probability_model_refused():
    model, x, y = make_problem()
    with pytest.raises(ValueError, match="probabilities"):
        fgm(ProbabilityModel(model), x, y, eps=0.1)


def test_keep_last_runs_every_step_to_the_closed_form_corner():
    """On a two-class linear model the margin's gradient is constant, so each Linf step moves
    by eps/steps towards the same corner: keep='last' ends at FGM's x + eps sign(grad) exactly,
    while keep='first' stops at the first adversarial iterate, inside the ball."""
    model, x, y = make_problem(k=2)
    eps = 0.2  # inputs lie in [0.3, 0.7]: the box never binds
    corner = fgm(model, x, y, eps=eps, norm=math.inf, loss="margin")
    last = ifgm(model, x, y, eps=eps, steps=10, loss="margin", keep="last")
    first = ifgm(model, x, y, eps=eps, steps=10, loss="margin")
    assert torch.allclose(last, corner, atol=1e-6)
    near = minimal_distance(model, x, y, math.inf) < 0.8 * eps
    assert near.sum() >= 3
    assert (lp_norm(first - x, math.inf)[near] < eps - 1e-3).all()
    assert (model(first).argmax(1) != y)[near].all()
    restarted = pgd(model, x, y, eps=eps, steps=10, step_size=eps / 10, random_start=False,
                    loss="margin", keep="last")  # fmt: skip
    assert torch.allclose(restarted, corner, atol=1e-6)


def test_bad_keep_raises_naming_the_argument():
    model, x, y = make_problem()
    with pytest.raises(ValueError, match="keep"):
        pgd(model, x, y, eps=0.1, keep="best")


def test_ifgm_normalized_l1_step_is_cleverhans_fgm_iterated():
    """One I-FGM step with l1_step='normalized' is FGM-L1's grad / ||grad||_1 step (its L1 norm
    is eps, so the projection keeps it); more steps stay in the L1 ball and the box."""
    model, x, y = make_problem(n=6, k=3, seed=21)
    x = 0.25 + 0.5 * x  # away from the box, so that no coordinate is clipped
    clean = model(x).argmax(1) == y  # I-FGM returns a misclassified input as it is
    assert 0 < clean.sum() < len(y)
    one = ifgm(model, x, y, eps=0.05, norm=1, steps=1, l1_step="normalized")
    step = fgm(model, x, y, eps=0.05, norm=1, l1_step="normalized")
    assert torch.allclose(one[clean], step[clean]) and torch.equal(one[~clean], x[~clean])
    many = ifgm(model, x, y, eps=0.3, norm=1, steps=10, l1_step="normalized")
    assert (lp_norm(many - x, 1) <= 0.3 + 1e-5).all() and many.min() >= 0 and many.max() <= 1
    with pytest.raises(ValueError, match="l1_step"):
        pgd(model, x, y, eps=0.3, norm=1, l1_step="steepest")
