"""Box-constrained L-BFGS (Szegedy et al. 2014) on the linear harness."""

import pytest
import torch
from linear_harness import make_problem, minimal_distance
from test_cw import exact_targeted_l2

from advx.attacks._core import lp_norm
from advx.attacks.lbfgs import classification_loss, lbfgs


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_untargeted_loss_is_minus_log_one_minus_p_true():
    logits = torch.tensor([[2.0, 0.5, -1.0]])
    expected = -torch.log1p(-logits.softmax(1)[0, 0])
    assert torch.allclose(classification_loss(logits, torch.tensor([0]), False), expected)


def test_untargeted_two_classes_near_optimum():
    model, x, y = make_problem(n=12, k=2, seed=1, dtype=torch.float64)
    adv = lbfgs(model, x, y, search_steps=20)
    assert (model(adv).argmax(1) != y).all()
    ratio = lp_norm(adv - x, 2) / minimal_distance(model, x, y, 2)
    assert (ratio <= 1.05).all() and (ratio >= 1 - 1e-6).all()


def test_targeted_two_classes_near_optimum():
    model, x, y = make_problem(n=12, k=2, seed=2, dtype=torch.float64)
    t = 1 - y
    adv = lbfgs(model, x, t, targeted=True, search_steps=20)
    assert (model(adv).argmax(1) == t).all()
    ratio = lp_norm(adv - x, 2) / minimal_distance(model, x, y, 2, targets=t)
    assert (ratio <= 1.05).all()


def test_targeted_many_classes_against_exact_qp():
    """With several classes the cross-entropy minimisers are not the margin-optimal points
    (Carlini & Wagner 2017 compare objectives, Sec. V); L-BFGS is a baseline: loose bound."""
    model, x, y = make_problem(n=8, k=4, seed=8, dtype=torch.float64)
    t = (y + 1) % 4
    adv = lbfgs(model, x, t, targeted=True, search_steps=20)
    assert (model(adv).argmax(1) == t).all()
    ratio = lp_norm(adv - x, 2) / exact_targeted_l2(model, x, t)
    assert (ratio <= 1.4).all() and (ratio >= 0.999).all()


def test_untargeted_many_classes_succeeds_in_box():
    model, x, y = make_problem(n=12, k=10, seed=3)
    x_copy = x.clone()
    model.train()
    adv = lbfgs(model, x, y)
    assert torch.equal(x, x_copy)
    assert (model(adv).argmax(1) != y).all()
    assert adv.min() >= 0 and adv.max() <= 1
    assert (lp_norm(adv - x, 2) >= minimal_distance(model, x, y, 2) * 0.999).all()
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())


def test_batch_close_to_per_sample():
    model, x, y = make_problem(n=4, k=2, seed=4, dtype=torch.float64)
    batch = lp_norm(lbfgs(model, x, y, search_steps=15) - x, 2)
    single = torch.cat(
        [
            lp_norm(lbfgs(model, x[i : i + 1], y[i : i + 1], search_steps=15) - x[i : i + 1], 2)
            for i in range(4)
        ]
    )
    assert torch.allclose(batch, single, rtol=0.02)


def test_originals_kept_when_misclassified_or_not_found():
    model, x, y = make_problem(n=4, k=3, seed=5)
    wrong = y.clone()
    wrong[0] = (y[0] + 1) % 3
    adv = lbfgs(model, x, wrong, search_steps=1, c_init=1e-8, max_iter=2)
    assert torch.equal(adv, x)


def test_rejects_bad_arguments():
    model, x, y = make_problem(n=4, k=3)
    for kw, name in [
        ({"c_init": 0.0}, "c_init"),
        ({"search_steps": 0}, "search_steps"),
        ({"max_iter": 0}, "max_iter"),
    ]:
        with pytest.raises(ValueError, match=name):
            lbfgs(model, x, y, **kw)


def test_batch_result_equals_per_sample_results():
    """Each sample runs its own L-BFGS-B (its own line search and stopping test): a batch gives
    what its samples give one at a time (it used to be one separable problem per batch)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(20, 32), torch.nn.Tanh(), torch.nn.Linear(32, 5)
    ).double()
    x = torch.rand(6, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    batched = lbfgs(model, x, y, search_steps=4, max_iter=50)
    for k in range(x.shape[0]):
        single = lbfgs(model, x[k : k + 1], y[k : k + 1], search_steps=4, max_iter=50)
        torch.testing.assert_close(single[0], batched[k], atol=1e-9, rtol=0)
