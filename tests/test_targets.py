"""Target-class selection and the every-other-class expansion."""

import pytest
import torch
from linear_harness import make_problem

from advx.attacks._core import INF, dual_exponent, lp_norm
from advx.attacks.targets import all_targets, linearised_distances, select_targets


def pairwise_distances(model, x, y, p):
    """Exact distances to every pairwise boundary of the linear model (inf at the label)."""
    w, b = model.linear.weight.detach(), model.linear.bias.detach()
    z = x.reshape(len(x), -1) @ w.T + b
    diff = w[y][:, None, :] - w[None, :, :]
    norms = lp_norm(diff.reshape(-1, w.shape[1]), dual_exponent(p)).reshape(z.shape)
    dist = (z.gather(1, y[:, None]) - z).abs() / norms
    return dist.scatter(1, y[:, None], INF)


@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_linearised_distances_exact_on_linear_model(p):
    model, x, y = make_problem(n=6, k=5, seed=1, dtype=torch.float64)
    classes = torch.arange(5).expand(6, 5)
    got = linearised_distances(model, x, y, classes, norm=p)
    assert torch.allclose(got, pairwise_distances(model, x, y, p))


@pytest.mark.parametrize("p", [2.0, INF])
def test_best_and_hardest(p):
    model, x, y = make_problem(n=10, k=6, seed=2, dtype=torch.float64)
    exact = pairwise_distances(model, x, y, p)
    assert torch.equal(select_targets(model, x, y, mode="best", norm=p), exact.argmin(1))
    hardest = exact.masked_fill(exact == INF, -1).argmax(1)
    assert torch.equal(select_targets(model, x, y, mode="hardest", norm=p), hardest)


def test_top_k_restricts_to_most_likely_classes():
    model, x, y = make_problem(n=10, k=6, seed=3, dtype=torch.float64)
    logits = model(x).detach()
    top = logits.scatter(1, y[:, None], -INF).topk(2, dim=1).indices
    targets = select_targets(model, x, y, mode="hardest", top_k=2)
    assert (targets[:, None] == top).any(1).all()
    exact = pairwise_distances(model, x, y, 2.0).gather(1, top)
    assert torch.equal(targets, top.gather(1, exact.argmax(1, keepdim=True)).squeeze(1))
    assert torch.equal(select_targets(model, x, y, mode="best", top_k=1), top[:, 0])


def test_least_likely_never_the_label():
    model, x, y = make_problem(n=10, k=4, seed=4)
    logits = model(x).detach()
    least = logits.argmin(1)
    targets = select_targets(model, x, least, mode="least_likely")
    assert (targets != least).all()
    expected = logits.scatter(1, least[:, None], INF).argmin(1)
    assert torch.equal(targets, expected)
    assert torch.equal(select_targets(model, x, y, mode="least_likely"), least)


def test_random_is_uniform_over_other_classes_and_seeded():
    model, x, y = make_problem(n=400, k=4, seed=5)
    a = select_targets(model, x, y, mode="random", generator=torch.Generator().manual_seed(0))
    b = select_targets(model, x, y, mode="random", generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert (a != y).all() and a.min() >= 0 and a.max() < 4
    for cls in range(4):
        assert ((a == cls).sum() > 0) == bool((y != cls).any())


def test_all_targets_expands_every_other_class():
    labels = torch.tensor([0, 2, 1])
    index, targets = all_targets(labels, 3)
    assert index.tolist() == [0, 0, 1, 1, 2, 2]
    assert targets.tolist() == [1, 2, 0, 1, 0, 2]
    assert (targets != labels[index]).all()


def test_rejects_bad_arguments():
    model, x, y = make_problem(n=4, k=3)
    with pytest.raises(ValueError, match="mode"):
        select_targets(model, x, y, mode="worst")
    with pytest.raises(ValueError, match="top_k"):
        select_targets(model, x, y, top_k=0)
    with pytest.raises(ValueError, match="norm"):
        select_targets(model, x, y, norm=0.5)
    with pytest.raises(ValueError, match="labels"):
        all_targets(torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="num_classes"):
        all_targets(torch.tensor([0]), 1)
