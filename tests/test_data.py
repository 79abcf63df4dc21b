import os
from pathlib import Path

import pytest
import torch
from torch import nn

from advx import data

SHARED = Path(os.environ.get("ADVX_DATA", "/work/shared/data"))
needs_data = pytest.mark.skipif(
    not (SHARED / "MNIST" / "raw").is_dir(), reason=f"real data not found in {SHARED}"
)


@pytest.fixture
def shared(monkeypatch):
    monkeypatch.setenv("ADVX_DATA", str(SHARED))
    return SHARED


def test_resolve_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("ADVX_DATA", str(tmp_path / "env"))
    assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("ADVX_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.resolve_data_dir() == tmp_path / "xdg" / "advx" / "data"


@needs_data
@pytest.mark.parametrize("split,n", [("test", 10000), ("train", 60000)])
def test_load_mnist(shared, split, n):
    x, y = data.load_mnist(split)
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() == 1
    assert set(y.unique().tolist()) == set(range(10))


@needs_data
def test_load_cifar10_test(shared):
    x, y = data.load_dataset("cifar10", "test")
    assert x.shape == (1017, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.bincount().tolist()[:3] == [105, 93, 100]
    assert x.min() >= 0 and x.max() <= 1


@needs_data
def test_loads_are_cached_and_independent(shared):
    x1, _ = data.load_mnist("test")
    x1.zero_()
    x2, _ = data.load_mnist("test")
    assert x2.max() == 1  # callers get fresh tensors from the cached arrays


def test_missing_files_error_names_dir(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        data.load_mnist("test", tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "t10k-images-idx3-ubyte" in msg and "ADVX_DATA" in msg
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        data.load_cifar10("train", tmp_path)


def test_uncompressed_idx_accepted(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = (
        bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28])
        + bytes(range(256)) * 6
        + bytes(32)
    )
    (raw / "t10k-images-idx3-ubyte").write_bytes(images)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 3, 7]))
    x, y = data.load_mnist("test", tmp_path)
    assert x.shape == (2, 1, 28, 28) and y.tolist() == [3, 7]
    assert x[0, 0, 0, 1] == pytest.approx(1 / 255)


@needs_data
def test_cifar10_128_is_cifar10_upsampled_bilinearly_after_the_limit(shared):
    """The stand-in for large inputs (ZOO's Table 3): the first images of CIFAR-10, each 4 x 4
    block of the upsampled image interpolating the 32 x 32 pixels, in [0, 1]."""
    small, labels = data.load_dataset("cifar10", "test", limit=5)
    large, large_labels = data.load_dataset("cifar10-128", "test", limit=5)
    assert small.shape == (5, 3, 32, 32) and large.shape == (5, 3, 128, 128)
    assert torch.equal(labels, large_labels)
    expected = nn.functional.interpolate(small, size=(128, 128), mode="bilinear")
    assert torch.allclose(large, expected)
    assert large.min() >= 0 and large.max() <= 1
    # bilinear at scale 4 (align_corners=False): the mean of each 4 x 4 block is close to the pixel
    blocks = nn.functional.avg_pool2d(large, 4)
    assert (blocks - small)[..., 1:-1, 1:-1].abs().max() < 0.25


def test_upsample_in_chunks_equals_one_interpolation():
    x = torch.rand(7, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    whole = nn.functional.interpolate(x, size=(12, 12), mode="bilinear", align_corners=False)
    assert torch.allclose(data.upsample(x, 12, chunk=3), whole.clamp(0, 1))


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_load_dataset_rejects_a_bad_limit(limit):
    with pytest.raises(ValueError, match="limit"):
        data.load_dataset("mnist", "test", limit=limit)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        data.load_mnist("val")
    with pytest.raises(ValueError, match="split"):
        data.load_cifar10("validation")
    with pytest.raises(ValueError, match="name"):
        data.load_dataset("imagenet", "test")


def test_load_demo():
    x, y = data.load_demo()
    assert x.shape == (500, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (500,) and y.dtype == torch.int64
    assert 0 <= x.min() and x.max() <= 1


@needs_data
def test_demo_matches_first_test_images(shared):
    x, y = data.load_mnist("test")
    dx, dy = data.load_demo()
    assert torch.equal(dx, x[:500]) and torch.equal(dy, y[:500])


class _ParityModel(nn.Module):
    """Predicts class 0 for even-indexed-pixel images: logits from the first pixel."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        first = x.flatten(1)[:, 0] * self.scale
        return torch.stack([1 - first, first], dim=1)


def test_first_correct():
    x = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 1.0]).view(6, 1, 1, 1)
    y = torch.tensor([0, 0, 1, 1, 0, 1])
    model = _ParityModel().train()
    xs, ys, idx = data.first_correct(model, x, y, n=3, batch_size=2)
    assert idx.tolist() == [0, 2, 4]
    assert torch.equal(xs, x[idx]) and torch.equal(ys, y[idx])
    assert model.training  # mode restored
    _, _, idx = data.first_correct(model, x, y, n=10)
    assert idx.tolist() == [0, 2, 4, 5]
