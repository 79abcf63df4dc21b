import os
from pathlib import Path

import pytest
import torch

from advx import data, models
from advx.models import MODELS, ModelSpec, get_spec, register

SHARED = Path(os.environ.get("ADVX_DATA", "/work/shared/data"))
needs_data = pytest.mark.skipif(
    not (SHARED / "MNIST" / "raw").is_dir(), reason=f"real data not found in {SHARED}"
)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_architectures_give_logits(name):
    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.build().eval()
    x = torch.rand(4, *spec.input_shape)
    out = model(x)
    outputs = 1 if spec.task == "regression" else 10
    assert out.shape == (4, outputs) and out.dtype == torch.float32


def test_get_spec_unknown_lists_names():
    with pytest.raises(ValueError, match="mnist-cnn"):
        get_spec("resnet-1000")


def test_register_rejects_duplicates_and_bad_fields():
    spec = get_spec("mnist-fcnn")
    with pytest.raises(ValueError, match="already registered"):
        register(spec)
    bad = ModelSpec(name="x-bad", dataset="imagenet", builder=spec.builder, epochs=1)
    with pytest.raises(ValueError, match="dataset"):
        register(bad)


def test_register_new_model():
    spec = ModelSpec(name="test-tiny", dataset="mnist", builder=models.MnistFCNN, epochs=1)
    try:
        register(spec)
        assert get_spec("test-tiny") is spec
    finally:
        MODELS.pop("test-tiny", None)


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("ADVX_CACHE", str(tmp_path / "env"))
    assert models.resolve_cache_dir() == tmp_path / "env"
    assert models.resolve_cache_dir(tmp_path / "a") == tmp_path / "a"
    monkeypatch.delenv("ADVX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert models.resolve_cache_dir() == tmp_path / "x" / "advx" / "models"


def test_load_missing_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist-mlp.pt"):
        models.load("mnist-mlp", cache_dir=tmp_path, train_if_missing=False)


def test_demo_model_accuracy():
    model = models.load_demo_model()
    assert not model.training
    x, y = data.load_demo()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.98


def test_load_falls_back_to_bundled(tmp_path):
    model = models.load("mnist-cnn", cache_dir=tmp_path, train_if_missing=False)
    ref = models.load_demo_model()
    for a, b in zip(model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


class _Interrupt(Exception):
    pass


def _interrupt_after(calls: int):
    count = {"n": 0}

    def hook(model, x, y):
        count["n"] += 1
        if count["n"] > calls:
            raise _Interrupt
        return x, y

    return hook


@needs_data
def test_training_resumes_after_interruption(tmp_path):
    kwargs = dict(epochs=2, seed=3, max_samples=256, progress=False)
    steps_per_epoch = 256 // get_spec("mnist-fcnn").batch_size
    ref, ref_metrics = models.train("mnist-fcnn", SHARED, cache_dir=tmp_path / "ref", **kwargs)

    cache = tmp_path / "resumed"
    with pytest.raises(_Interrupt):
        models.train(
            "mnist-fcnn",
            SHARED,
            cache_dir=cache,
            batch_transform=_interrupt_after(steps_per_epoch + 1),
            **kwargs,
        )
    ckpt = torch.load(cache / "mnist-fcnn.ckpt", weights_only=True)
    assert ckpt["epoch"] == 1 and not (cache / "mnist-fcnn.pt").exists()

    calls = {"n": 0}

    def counting(model, x, y):
        calls["n"] += 1
        return x, y

    model, metrics = models.train(
        "mnist-fcnn", SHARED, cache_dir=cache, batch_transform=counting, **kwargs
    )
    assert calls["n"] == steps_per_epoch  # only the second epoch ran
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    for a, b in zip(model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    assert metrics["test_accuracy"] == ref_metrics["test_accuracy"]

    loaded = models.load("mnist-fcnn", cache_dir=cache, train_if_missing=False)
    for a, b in zip(loaded.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


@needs_data
def test_training_is_deterministic_and_keeps_global_rng(tmp_path):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    kwargs = dict(epochs=1, seed=5, max_samples=128, progress=False)
    a, _ = models.train("mnist-fcnn", SHARED, cache_dir=tmp_path / "a", **kwargs)
    after = torch.rand(3)
    assert torch.equal(before, after)
    b, _ = models.train("mnist-fcnn", SHARED, cache_dir=tmp_path / "b", **kwargs)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_augment_crop_flip_shapes():
    from advx.models.training import augment_crop_flip

    x = torch.rand(8, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    out = augment_crop_flip(x, g)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    out0 = augment_crop_flip(x, torch.Generator().manual_seed(1), pad=0)
    assert all(torch.equal(o, i) or torch.equal(o, i.flip(-1)) for o, i in zip(out0, x))


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("name", ["mnist-fcnn", "mnist-mlp", "mnist-lenet5", "mnist-cnn"])
def test_recipe_reaches_expected_accuracy(name, tmp_path):
    _, metrics = models.train(name, SHARED, cache_dir=tmp_path, progress=False)
    assert metrics["test_accuracy"] >= get_spec(name).expected_accuracy


TRUST_REGION_MODELS = ["cifar-alexlike", "cifar-alexlike-swish", "cifar-mlp-swish"]


@pytest.mark.parametrize("name", TRUST_REGION_MODELS)
def test_trust_region_paper_models_map_cifar_batches_to_logits(name):
    spec = get_spec(name)
    assert spec.dataset == "cifar10" and spec.epochs >= 1
    torch.manual_seed(0)
    out = spec.build().eval()(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["cifar-alexlike-swish", "cifar-mlp-swish"])
def test_swish_models_are_smooth(name):
    """No ReLU anywhere, and the margin has a non-zero Hessian (what the second-order
    trust-region attack needs); the ReLU AlexLike's Hessian-vector product is exactly zero."""
    torch.manual_seed(0)
    model = get_spec(name).build().double().eval()
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())
    assert any(isinstance(m, torch.nn.SiLU) for m in model.modules())

    def hvp_norm(net):
        x = torch.rand(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
        logits = net(x)
        (g,) = torch.autograd.grad((logits[:, 0] - logits[:, 1]).sum(), x, create_graph=True)
        (hv,) = torch.autograd.grad((g * torch.ones_like(x)).sum(), x, allow_unused=True)
        return 0.0 if hv is None else hv.abs().max().item()

    assert hvp_norm(model) > 0
    relu = get_spec("cifar-alexlike").build().double().eval()
    assert any(isinstance(m, torch.nn.ReLU) for m in relu.modules())
    assert hvp_norm(relu) == 0


@needs_data
def test_select_keeps_the_best_epoch_and_remembers_it_on_resume(tmp_path):
    """Early stopping: the epoch with the highest ``select`` score is the one saved (ties keep
    the earlier epoch), in the model returned, the cached model and the checkpoint, and a
    rerun of the finished recipe keeps the choice."""
    kwargs = dict(seed=3, max_samples=256, progress=False)
    scores = iter([0.2, 0.9, 0.9, 0.1])
    weights = []

    def select(model):
        assert not model.training
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    model, metrics = models.train(
        "mnist-fcnn", SHARED, cache_dir=tmp_path / "four", epochs=4, select=select, **kwargs
    )
    assert metrics["selected_epoch"] == 2
    assert [h["selection_score"] for h in metrics["history"]] == [0.2, 0.9, 0.9, 0.1]
    assert metrics["test_accuracy"] == metrics["history"][1]["test_accuracy"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[1][name])
    loaded = models.load("mnist-fcnn", cache_dir=tmp_path / "four", train_if_missing=False)
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, weights[1][name])
    checkpoint = torch.load(tmp_path / "four" / "mnist-fcnn.ckpt", weights_only=True)
    assert checkpoint["best"]["epoch"] == 2
    _, again = models.train(
        "mnist-fcnn", SHARED, cache_dir=tmp_path / "four", epochs=4, select=select, **kwargs
    )
    assert again["selected_epoch"] == 2  # resumed: nothing trained, the choice remembered
