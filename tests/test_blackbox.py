"""QueryModel (query-only access, counts, budgets), the counter-based streams and the
substitute-model attack's Jacobian-based augmentation."""

from __future__ import annotations

import pytest
import torch
from helpers import NoAutograd
from linear_harness import make_problem
from torch import nn

from advx.blackbox import (
    BudgetExceeded,
    QueryModel,
    _random,
    jacobian_augmentation,
    to_log_probabilities,
    train_substitute,
)


def test_query_model_counts_per_sample_and_calls_under_no_grad():
    model, x, _ = make_problem(n=4)
    query = QueryModel(NoAutograd(model), batch_size=3)
    out = query(x)
    assert torch.allclose(out, model(x))
    assert not out.requires_grad
    assert query.queries.tolist() == [1, 1, 1, 1] and query.calls == 2
    owners = torch.tensor([0, 0, 2, 2, 2])
    query(x[[0, 0, 1, 1, 1]], owners)
    assert query.queries.tolist() == [3, 1, 4, 1] and query.total_queries == 9


def test_query_model_budget_is_exact_and_refuses_before_calling():
    calls = []
    model, x, _ = make_problem(n=2)

    def counted(batch):
        calls.append(batch.shape[0])
        return model(batch)

    query = QueryModel(counted, budget=3)
    query(x)
    query(x)
    assert query.remaining(torch.arange(2)).tolist() == [1, 1]
    with pytest.raises(BudgetExceeded):
        query(x[[0, 0]], torch.tensor([0, 0]))
    assert calls == [2, 2] and query.queries.tolist() == [2, 2]
    query(x)
    assert query.queries.tolist() == [3, 3]


def test_query_model_outputs_become_log_probabilities():
    model, x, _ = make_problem(n=3)
    expected = torch.log_softmax(model(x), 1)
    for output, wrap in (
        ("logits", lambda z: z),
        ("probabilities", lambda z: z.softmax(1)),
        ("log_probabilities", lambda z: z.log_softmax(1)),
    ):
        query = QueryModel(lambda b, wrap=wrap: wrap(model(b)), output=output)
        assert torch.allclose(query.log_probabilities(x), expected, atol=1e-5)
    zero = to_log_probabilities(torch.tensor([[1.0, 0.0]]), "probabilities")
    assert torch.isfinite(zero).all()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"output": "softmax"}, "output"),
        ({"budget": 0}, "budget"),
        ({"budget": 2.5}, "budget"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_query_model_rejects_bad_arguments(kwargs, name):
    model, _, _ = make_problem()
    with pytest.raises(ValueError, match=name):
        QueryModel(model, **kwargs)
    with pytest.raises(TypeError, match="model"):
        QueryModel(42)


def test_streams_depend_on_content_not_position():
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2])
    batch = _random.sample_seeds(x, y, torch.Generator().manual_seed(5))
    alone = _random.sample_seeds(x[2:], y[2:], torch.Generator().manual_seed(5))
    assert batch[2] == alone[0] and len(set(batch.tolist())) == 3
    other = _random.sample_seeds(x, y, torch.Generator().manual_seed(6))
    assert (other != batch).all()
    u = _random.uniform(batch, 7, 5000)
    assert u.shape == (3, 5000) and (u > 0).all() and (u < 1).all()
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.003
    assert torch.equal(_random.uniform(batch[2:], 7, 5000)[0], u[2])
    assert not torch.equal(_random.uniform(batch, 8, 5000), u)


def test_jacobian_augmentation_matches_its_formula():
    """Papernot et al. 2017, Alg. 1: x + lambda * sign(dF_{O(x)}/dx), in [0, 1]. For a linear
    substitute dF_k/dx = W_k, so the new points are clip(x + lambda * sign(W_{O(x)}))."""
    model, x, _ = make_problem(n=6, d=16, k=3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    new = jacobian_augmentation(model, x, labels, 0.1)
    weight = model.linear.weight.detach()
    expected = (x + 0.1 * weight[labels].sign().reshape(x.shape)).clamp(0, 1)
    assert torch.allclose(new, expected)
    flipped = jacobian_augmentation(model, x, labels, -0.1)
    assert torch.allclose(flipped, (x - 0.1 * weight[labels].sign().reshape(x.shape)).clamp(0, 1))
    edge = jacobian_augmentation(model, torch.ones_like(x), labels, 0.5)
    assert edge.min() >= 0 and edge.max() <= 1


def test_train_substitute_doubles_the_set_and_counts_every_oracle_query():
    oracle, x, _ = make_problem(n=10, d=16, k=3, seed=3)
    query = QueryModel(NoAutograd(oracle))
    result = train_substitute(
        query,
        x,
        architecture=lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 3)),
        rounds=3,
        epochs=30,
        lr=0.05,
        test=(x, oracle(x).argmax(1)),
    )
    assert result.images.shape[0] == 40 and [h["size"] for h in result.history] == [10, 20, 40]
    assert result.queries == 40 == query.total_queries
    assert query.queries.tolist() == [1] * 40  # point j of the synthetic set is sample j
    assert torch.equal(result.labels, oracle(result.images).argmax(1))
    assert result.history[-1]["agreement"] > 0.5  # better than chance (1/3)
    with pytest.raises(ValueError, match="rounds"):
        train_substitute(query, x, architecture=nn.Linear(16, 3), rounds=0)
