"""Carlini & Wagner L2 on the linear harness (small step size so that tiny distances resolve)."""

import numpy as np
import pytest
import torch
from linear_harness import make_problem, minimal_distance
from scipy.optimize import minimize

from advx.attacks._core import lp_norm, margin
from advx.attacks.cw import carlini_wagner_l2, from_tanh_space, to_tanh_space

# Adam moves each pixel by about lr / 2 per step, so tiny optima need a small lr to resolve.
FAST = {"steps": 200, "lr": 2e-3}
RESOLUTION = 1e-3  # absolute slack for samples whose optimum is below ~10 Adam steps


@pytest.fixture(autouse=True)
def _one_thread():
    """Thousands of tiny steps: one thread avoids thread-pool thrashing on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_near_optimum(norms, optimum, factor=1.05):
    """norms <= factor * optimum where the optimum is resolvable, + RESOLUTION everywhere."""
    norms, optimum = norms.double(), optimum.double()
    assert (norms >= optimum * 0.999).all()
    assert (norms <= factor * optimum + RESOLUTION).all()
    big = optimum >= 0.01
    assert (norms[big] <= factor * optimum[big]).all()


def exact_targeted_l2(model, inputs, targets):
    """min ||r||_2 s.t. z_t(x + r) >= z_j(x + r) for all j and x + r in [0, 1] (a tiny QP)."""
    w = model.linear.weight.detach().double().numpy()
    b = model.linear.bias.detach().double().numpy()
    out = []
    for x, t in zip(inputs.reshape(len(inputs), -1).double().numpy(), targets.tolist()):
        others = [j for j in range(w.shape[0]) if j != t]
        a = w[t] - w[others]
        c = b[t] - b[others]
        cons = {
            "type": "ineq",
            "fun": lambda r, a=a, c=c, x=x: a @ (x + r) + c,
            "jac": lambda r, a=a: a,
        }
        res = minimize(
            lambda r: (r @ r, 2 * r),
            np.zeros_like(x),
            jac=True,
            method="SLSQP",
            constraints=[cons],
            bounds=[(-v, 1 - v) for v in x],
            options={"ftol": 1e-14},
        )
        out.append(np.sqrt(res.x @ res.x))
    return torch.tensor(out)


def test_tanh_change_of_variables_round_trip():
    x = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.allclose(from_tanh_space(to_tanh_space(x)), x, atol=1e-6)


@pytest.mark.parametrize("k", [2, 3, 10])
def test_untargeted_within_five_percent(k):
    model, x, y = make_problem(n=12, k=k, seed=k)
    adv = carlini_wagner_l2(model, x, y, **FAST)
    assert (model(adv).argmax(1) != y).all()
    assert_near_optimum(lp_norm(adv - x, 2), minimal_distance(model, x, y, 2))


def test_targeted_two_classes_within_five_percent():
    model, x, y = make_problem(n=12, k=2, seed=7)
    t = 1 - y
    adv = carlini_wagner_l2(model, x, t, targeted=True, **FAST)
    assert (model(adv).argmax(1) == t).all()
    assert_near_optimum(lp_norm(adv - x, 2), minimal_distance(model, x, y, 2, targets=t))


def test_targeted_many_classes_against_exact_qp():
    model, x, y = make_problem(n=8, k=4, seed=8)
    t = (y + 1) % 4
    adv = carlini_wagner_l2(model, x, t, targeted=True, **FAST)
    assert (model(adv).argmax(1) == t).all()
    assert_near_optimum(lp_norm(adv - x, 2), exact_targeted_l2(model, x, t))


def test_confidence_is_respected():
    model, x, y = make_problem(n=8, k=3, seed=9)
    adv = carlini_wagner_l2(model, x, y, confidence=0.5, **FAST)
    assert (margin(model(adv), y) <= -0.5 + 1e-5).all()
    assert (lp_norm(adv - x, 2) > minimal_distance(model, x, y, 2)).all()


@pytest.mark.parametrize("abort_early", [False, True])
def test_batch_equals_per_sample(abort_early):
    """Early abort is decided per sample, so the batch around a sample does not change it."""
    model, x, y = make_problem(n=4, k=3, seed=10)
    kw = {"steps": 30, "lr": 1e-3, "binary_search_steps": 4, "abort_early": abort_early}
    batch = carlini_wagner_l2(model, x, y, **kw)
    single = torch.cat(
        [carlini_wagner_l2(model, x[i : i + 1], y[i : i + 1], **kw) for i in range(4)]
    )
    assert torch.allclose(batch, single, atol=1e-5)


def test_box_inputs_untouched_model_restored_and_originals_kept():
    model, x, y = make_problem(n=6, k=3, seed=11)
    model.train()
    x_copy = x.clone()
    wrong = y.clone()
    wrong[0] = (y[0] + 1) % 3  # sample 0 is already misclassified
    adv = carlini_wagner_l2(model, x, wrong, steps=20, binary_search_steps=2)
    assert torch.equal(x, x_copy)
    assert torch.equal(adv[0], x[0])
    assert adv.min() >= 0 and adv.max() <= 1
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())
    # one step and a tiny constant cannot succeed: the originals come back
    assert torch.equal(carlini_wagner_l2(model, x, y, steps=1, binary_search_steps=1), x)


def test_rejects_bad_arguments():
    model, x, y = make_problem(n=4, k=3)
    for kw, name in [
        ({"c_init": 0.0}, "c_init"),
        ({"steps": 0}, "steps"),
        ({"lr": -1.0}, "lr"),
        ({"confidence": -1.0}, "confidence"),
        ({"binary_search_steps": 0}, "binary"),
    ]:
        with pytest.raises(ValueError, match=name):
            carlini_wagner_l2(model, x, y, **kw)
