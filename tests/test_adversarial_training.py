"""Adversarial training (Liu & Cao Eq. 6-7) on a small real subset: it must make the model more
robust, mix losses as specified and reject bad settings."""

import os
from pathlib import Path

import pytest
import torch

from advx.attacks import ddn, lp_norm
from advx.data import load_mnist
from advx.defenses.adversarial_training import adversarial_training, mixed_loss
from advx.models import load, resolve_spec, train

DATA = os.environ.get("ADVX_DATA", str(Path(__file__).parents[2] / "shared" / "data"))
needs_mnist = pytest.mark.skipif(
    not (Path(DATA) / "MNIST").is_dir(), reason="MNIST not available (set ADVX_DATA)"
)


def _median_ddn_norm(model, x, y):
    adv = ddn(model, x, y, steps=30)
    fooled = model(adv).argmax(1) != y
    norms = torch.where(fooled, lp_norm(adv - x, 2), torch.full_like(y, 1e3, dtype=x.dtype))
    return norms.median().item()


@needs_mnist
def test_adversarial_training_raises_median_ddn_norm(tmp_path):
    torch.set_num_threads(1)
    common = dict(
        epochs=2, seed=0, data_dir=DATA, cache_dir=tmp_path, max_samples=1024, progress=False
    )
    clean, _ = train("mnist-fcnn", **common)
    robust, metrics = adversarial_training(
        "mnist-fcnn", "ddn", max_norm=2.4, attack_kwargs={"steps": 10}, **common
    )
    assert (tmp_path / "mnist-fcnn-adv-ddn.pt").is_file()
    x, y = load_mnist("test", DATA)
    x, y = x[:200], y[:200]
    both = (clean(x).argmax(1) == y) & (robust(x).argmax(1) == y)
    assert both.sum() >= 100
    assert _median_ddn_norm(robust, x[both], y[both]) > 1.1 * _median_ddn_norm(
        clean, x[both], y[both]
    )


def test_mixed_loss_weights_clean_and_adversarial_halves():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0])
    ce = torch.nn.functional.cross_entropy
    clean, adv = ce(logits[:1], labels[:1]), ce(logits[1:], labels[1:])
    assert torch.isclose(mixed_loss(logits, labels, beta=0.3), 0.3 * clean + 0.7 * adv)
    assert torch.isclose(mixed_loss(logits, labels, beta=0.0), ce(logits, labels))


@pytest.mark.parametrize(
    "kwargs, match", [({"beta": 1.5}, "beta"), ({"max_norm": -1.0}, "max_norm")]
)
def test_bad_settings_raise(kwargs, match):
    args = {"max_norm": 2.4} | kwargs
    with pytest.raises(ValueError, match=match):
        adversarial_training("mnist-fcnn", "ddn", **args)


def test_unknown_attack_raises():
    with pytest.raises(ValueError, match="attack"):
        adversarial_training("mnist-fcnn", "nope", max_norm=1.0)


def _distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return sum(float((p - q).norm()) for p, q in pairs)


@needs_mnist
def test_init_from_fine_tunes_the_given_weights(tmp_path):
    torch.set_num_threads(1)
    common = dict(seed=0, data_dir=DATA, cache_dir=tmp_path, max_samples=128, progress=False)
    source, _ = train("mnist-fcnn", epochs=1, **common)
    fresh, _ = train("mnist-fcnn", epochs=1, save_as="fresh", **common | {"seed": 1})
    tuned, _ = adversarial_training(
        "mnist-fcnn",
        "fgm",
        max_norm=0.1,
        attack_kwargs={"norm": "inf"},
        epochs=1,
        init_from="mnist-fcnn",
        **common | {"max_samples": 64, "seed": 1},
    )
    # One small batch of fine-tuning stays near the source; seed 1's own start is far away.
    assert _distance(tuned, source) < 0.2 * _distance(fresh, source)
    # The variant is loadable by name and knows its architecture.
    assert resolve_spec("mnist-fcnn-adv-fgm", tmp_path).name == "mnist-fcnn"
    assert _distance(load("mnist-fcnn-adv-fgm", cache_dir=tmp_path), tuned) == 0.0


@needs_mnist
def test_init_from_rejects_another_architecture(tmp_path):
    with pytest.raises(ValueError, match="init_from"):
        train("mnist-fcnn", epochs=1, cache_dir=tmp_path, init_from="mnist-cnn", progress=False)
