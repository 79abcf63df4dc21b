"""Regression attacks (Balda et al. 2018, Section III, Eq. 9): power iteration against SVD,
column norms against the explicit Jacobian, optimality and bounds, budget and box."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from advx.attacks._core import lp_norm
from advx.attacks.regression import jacobian_column_norms, regression_attack, top_singular_vector

INF = float("inf")


def _linear_maps(n=4, m=5, d=12, seed=0):
    """f(x) = A_i x_i for each sample (J = A_i), inputs in (0.3, 0.7) of shape (n, 1, d)."""
    gen = torch.Generator().manual_seed(seed)
    mats = torch.randn(n, m, d, generator=gen, dtype=torch.float64)
    inputs = 0.3 + 0.4 * torch.rand(n, 1, d, generator=gen, dtype=torch.float64)

    def f(x):
        return torch.einsum("nmd,nd->nm", mats, x.reshape(x.shape[0], -1))

    return f, mats, inputs


class _MLP(nn.Module):
    def __init__(self, d=12, m=3):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, m))
        self.double()

    def forward(self, x):
        return self.net(x)


def _jacobians(f, inputs):
    """Per-sample explicit Jacobians (N, M, D), for reference only."""
    rows = []
    for i in range(inputs.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda z: f(z).reshape(-1), inputs[[i]])
        rows.append(jac.reshape(jac.shape[0], -1))
    return torch.stack(rows)


@pytest.mark.parametrize("shape", [(5, 12), (12, 5), (1, 8)])
def test_power_iteration_matches_svd(shape):
    f, mats, inputs = _linear_maps(m=shape[0], d=shape[1])
    sigma, v = top_singular_vector(f, inputs, iterations=400, tol=1e-14)
    _, svals, vh = torch.linalg.svd(mats)
    torch.testing.assert_close(sigma, svals[:, 0])
    alignment = (v.reshape(4, -1) * vh[:, 0]).sum(1).abs()
    torch.testing.assert_close(alignment, torch.ones(4, dtype=alignment.dtype), atol=1e-5, rtol=0)


def test_power_iteration_stops_early_in_float32(monkeypatch):
    """A one-output map (rank-1 J) converges after a couple of products; in float32 the
    default tol (below machine precision) must not force all ``iterations``."""
    from advx.attacks import regression

    _, mats, inputs = _linear_maps(m=1, d=784)
    mats, inputs = mats.float(), inputs.float()

    def f(x):
        return torch.einsum("nmd,nd->nm", mats, x.reshape(x.shape[0], -1))

    calls = []
    gram = regression._Linearisation.gram
    monkeypatch.setattr(
        regression._Linearisation, "gram", lambda self, v: calls.append(1) or gram(self, v)
    )
    sigma, _ = top_singular_vector(f, inputs, iterations=50)
    torch.testing.assert_close(sigma, mats.norm(dim=2).squeeze(1))
    assert len(calls) <= 5


def test_power_iteration_on_nonlinear_module():
    model = _MLP()
    inputs = torch.rand(3, 1, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    model.train()
    sigma, _ = top_singular_vector(model, inputs, iterations=1000, tol=1e-14)
    reference = torch.linalg.svdvals(_jacobians(model, inputs))[:, 0]
    torch.testing.assert_close(sigma, reference)
    assert model.training and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("shape", [(5, 12), (12, 5)])  # VJP branch (M <= D), JVP branch
def test_column_norms_match_jacobian(shape):
    f, mats, inputs = _linear_maps(m=shape[0], d=shape[1])
    norms = jacobian_column_norms(f, inputs, chunk_size=3)
    torch.testing.assert_close(norms.reshape(4, -1), mats.norm(dim=1))


def _sphere_samples(d, p, count=20000, seed=1):
    points = torch.randn(
        count, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return points / lp_norm(points, p)[:, None]


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_exact_cases_are_optimal(p):
    """p = 2: eps * sigma_max; p = 1: eps * largest column norm; nothing sampled beats them."""
    f, mats, inputs = _linear_maps()
    eps = 0.05
    adv = regression_attack(f, inputs, eps=eps, norm=p, clip=False, iterations=400, tol=1e-14)
    eta = (adv - inputs).reshape(4, -1)
    torch.testing.assert_close(lp_norm(eta, p), torch.full((4,), eps, dtype=eta.dtype))
    gain = torch.einsum("nmd,nd->nm", mats, eta).norm(dim=1)
    optimum = torch.linalg.svdvals(mats)[:, 0] if p == 2 else mats.norm(dim=1).amax(1)
    torch.testing.assert_close(gain, eps * optimum)
    if p == 1:
        assert ((eta != 0).sum(1) == 1).all()  # a single-pixel attack
    samples = eps * _sphere_samples(12, p)
    for i in range(4):
        assert (samples @ mats[i].T).norm(dim=1).max() <= gain[i] + 1e-9


@pytest.mark.parametrize("p", [3.0, INF])
def test_heuristic_meets_its_bound(p):
    """||J eta||_2 >= eps * sigma_max (p >= 2), and never above the exhaustive optimum (p = inf:
    the maximum of the convex objective over the cube is at one of its 2^D vertices)."""
    f, mats, inputs = _linear_maps(d=9)
    eps = 0.02
    adv = regression_attack(f, inputs, eps=eps, norm=p, clip=False)
    eta = (adv - inputs).reshape(4, -1)
    assert (lp_norm(eta, p) <= eps * (1 + 1e-9)).all()
    gain = torch.einsum("nmd,nd->nm", mats, eta).norm(dim=1)
    sigma = torch.linalg.svdvals(mats)[:, 0]
    assert (gain >= eps * sigma * (1 - 1e-6)).all()
    if p == INF:
        vertices = eps * torch.tensor(
            list(itertools.product([-1.0, 1.0], repeat=9)), dtype=torch.float64
        )
        optimum = torch.stack([(vertices @ mats[i].T).norm(dim=1).max() for i in range(4)])
        assert (gain <= optimum + 1e-12).all()
        assert (gain >= optimum / 3.0).all()  # optimum / sqrt(D)
        torch.testing.assert_close(eta.abs(), torch.full_like(eta, eps))


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, INF])
def test_budget_box_and_batching(p):
    model = _MLP()
    gen = torch.Generator().manual_seed(4)
    inputs = torch.rand(5, 1, 3, 4, dtype=torch.float64, generator=gen)
    inputs[0] = 1.0
    eps = torch.tensor([0.5, 0.01, 0.1, 0.2, 0.3], dtype=torch.float64)
    before = inputs.clone()
    adv = regression_attack(model, inputs, eps=eps, norm=p)
    assert torch.equal(inputs, before)
    assert (adv >= 0).all() and (adv <= 1).all()
    assert (lp_norm(adv - inputs, p) <= eps * (1 + 1e-9)).all()
    singles = torch.cat(
        [regression_attack(model, inputs[[i]], eps=eps[[i]], norm=p) for i in range(5)]
    )
    torch.testing.assert_close(adv, singles)
    with torch.no_grad():
        change = (model(adv) - model(inputs)).norm(dim=1)
    assert (change[1:] > 0).all()


def test_attack_beats_random_directions_on_mlp():
    model = _MLP()
    inputs = 0.5 + 0.1 * torch.rand(
        3, 1, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
    )
    eps = 0.01
    adv = regression_attack(model, inputs, eps=eps, norm=2)
    with torch.no_grad():
        ours = (model(adv) - model(inputs)).norm(dim=1)
        noise = eps * _sphere_samples(12, 2.0, count=2000)
        for i in range(3):
            random_changes = (
                model(inputs[[i]] + noise.reshape(-1, 1, 3, 4)) - model(inputs[[i]])
            ).norm(dim=1)
            assert ours[i] >= random_changes.max()


def test_bad_arguments():
    f, _, inputs = _linear_maps()
    with pytest.raises(ValueError, match="norm"):
        regression_attack(f, inputs, eps=0.1, norm=0.5)
    with pytest.raises(ValueError, match="iterations"):
        regression_attack(f, inputs, eps=0.1, iterations=0)
    with pytest.raises(ValueError, match="inputs"):
        regression_attack(f, inputs + 2, eps=0.1)
    with pytest.raises(ValueError, match="eps"):
        regression_attack(f, inputs, eps=-0.1)


# --------------------------------------------------------------------------- the zoo regressor


def test_predicted_labels_and_regression_loss():
    import torch.nn.functional as F

    from advx.models import get_spec
    from advx.models.training import default_loss, predicted_labels, regression_loss

    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    assert predicted_labels(logits).tolist() == [1, 0]
    values = torch.tensor([[2.4], [6.6], [-0.2]])
    assert predicted_labels(values).tolist() == [2, 7, 0]
    assert predicted_labels(values.flatten()).tolist() == [2, 7, 0]
    loss = regression_loss(values, torch.tensor([2, 7, 0]))
    assert loss.item() == pytest.approx((0.16 + 0.16 + 0.04) / 3)
    assert default_loss(get_spec("mnist-regress")) is regression_loss
    assert default_loss(get_spec("mnist-fcnn")) is F.cross_entropy


def test_mnist_regress_spec_has_one_output():
    from advx.models import ModelSpec, get_spec, register

    spec = get_spec("mnist-regress")
    assert spec.task == "regression" and spec.dataset == "mnist"
    torch.manual_seed(0)
    assert spec.build().eval()(torch.rand(3, 1, 28, 28)).shape == (3, 1)
    bad = ModelSpec(name="x-bad-task", dataset="mnist", builder=spec.builder, epochs=1, task="seg")
    with pytest.raises(ValueError, match="task"):
        register(bad)


def _random_noise_like(inputs, eps, p, generator):
    """Random noise of Lp norm eps (Gaussian direction; signs for p = inf), clipped to [0, 1]."""
    if p == INF:
        noise = (torch.randint(0, 2, inputs.shape, generator=generator) * 2 - 1).float() * eps
    else:
        noise = torch.randn(inputs.shape, generator=generator)
        noise = noise * (eps / lp_norm(noise, p))[:, None, None, None]
    return (inputs + noise).clamp(0, 1)


def _shared_data():
    import os
    from pathlib import Path

    shared = Path(os.environ.get("ADVX_DATA", "/work/shared/data"))
    if not (shared / "MNIST" / "raw").is_dir():
        pytest.skip(f"real data not found in {shared}")
    return shared


def test_mnist_regress_trains_with_mse_and_attack_beats_noise(tmp_path):
    """A short run of the mnist-regress recipe lowers its MSE loss from epoch to epoch and
    gives one output per image; regression_attack (Eq. 9) moves that output far more than
    random noise of the same Lp norm, for p = 1, 2, inf."""
    from advx.data import load_dataset
    from advx.models import train

    shared = _shared_data()
    model, metrics = train(
        "mnist-regress", shared, cache_dir=tmp_path, epochs=2, max_samples=1024, progress=False
    )
    losses = [h["train_loss"] for h in metrics["history"]]
    assert losses[1] < losses[0]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    x = load_dataset("mnist", "test", shared)[0][:64]
    with torch.no_grad():
        clean = model(x)
    assert clean.shape == (64, 1)
    gen = torch.Generator().manual_seed(0)
    for p, eps in ((1.0, 1.0), (2.0, 1.0), (INF, 0.05)):
        adv = regression_attack(model, x, eps=eps, norm=p)
        assert (lp_norm(adv - x, p) <= eps * (1 + 1e-5)).all()
        with torch.no_grad():
            attack_change = (model(adv) - clean).norm(dim=1)
            noise_change = (model(_random_noise_like(x, eps, p, gen)) - clean).norm(dim=1)
        assert attack_change.mean() > 2 * noise_change.mean()
        assert (attack_change > 0).float().mean() > 0.9


@pytest.mark.slow
def test_mnist_regress_learns_the_digit_value(tmp_path):
    """Three epochs on 6000 images already beat predicting the mean digit (MSE < variance)."""
    from advx.data import load_dataset
    from advx.models import train

    shared = _shared_data()
    model, _ = train(
        "mnist-regress", shared, cache_dir=tmp_path, epochs=3, max_samples=6000, progress=False
    )
    x, y = load_dataset("mnist", "test", shared)
    with torch.no_grad():
        pred = model(x[:1000]).reshape(-1)
    assert (pred - y[:1000].float()).pow(2).mean() < 0.5 * y[:1000].float().var()
