"""MNIST / CIFAR-10 loading and data-directory resolution.

Images are returned as float32 tensors in [0, 1] with shape (N, C, H, W); labels as int64.
The files are read directly (IDX files for MNIST, the python pickle batches for CIFAR-10), so
torchvision is only needed for ``download=True``. Decoded arrays are cached in memory.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "DATASETS",
    "first_correct",
    "load_cifar10",
    "load_dataset",
    "load_demo",
    "load_mnist",
    "resolve_data_dir",
    "upsample",
]

DATASETS = ("mnist", "cifar10", "cifar10-128")
# CIFAR-10 bilinearly upsampled to 128 x 128: a stand-in for the large inputs of ImageNet models
# (ZOO's attack-space reduction, thesis Table 3), which cannot be had here.
UPSAMPLED = {"cifar10-128": ("cifar10", 128)}
SPLITS = ("train", "test")
_ASSETS = Path(__file__).parent / "assets"
DEMO_PATH = _ASSETS / "mnist_demo.pt"

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_HINT = "pass --data-dir / data_dir=... or set the ADVX_DATA environment variable"


# --------------------------------------------------------------------------- directories


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the data directory: ``data_dir``, else ``$ADVX_DATA``, else a user cache dir.

    The cache dir is ``$XDG_CACHE_HOME/advx/data`` (default ``~/.cache/advx/data``).
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get("ADVX_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "advx" / "data"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _missing(dataset: str, directory: Path, expected: list[str]) -> FileNotFoundError:
    return FileNotFoundError(
        f"{dataset} files not found in {directory} (expected: {', '.join(expected)}); "
        f"{_HINT}, or use download=True (needs torchvision and network access)"
    )


# --------------------------------------------------------------------------- MNIST


def _find_idx(raw: Path, stem: str) -> Path | None:
    """Locate an IDX file under ``raw`` as ``stem``, ``stem.gz`` (or the ``.idx`` spelling)."""
    alt = stem.replace("-idx", ".idx")
    for name in (stem, f"{stem}.gz", alt, f"{alt}.gz"):
        if (raw / name).is_file():
            return raw / name
    return None


def _read_idx(path: Path) -> np.ndarray:
    """Decode an IDX file (optionally gzipped) of unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise ValueError(f"{path} is truncated: {len(data) - offset} of {expected} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


@functools.lru_cache(maxsize=4)
def _mnist_arrays(split: str, directory: str) -> tuple[np.ndarray, np.ndarray]:
    raw = Path(directory) / "MNIST" / "raw"
    stems = _MNIST_FILES[split]
    paths = [_find_idx(raw, stem) for stem in stems]
    if any(p is None for p in paths):
        raise _missing("MNIST", raw, [f"{s}[.gz]" for s in stems])
    images, labels = (_read_idx(p) for p in paths)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images.reshape(-1, 1, 28, 28), labels


def _download_mnist(root: Path) -> None:
    tv = _torchvision()
    for train in (True, False):
        tv.datasets.MNIST(str(root), train=train, download=True)


def load_mnist(
    split: str = "test", data_dir: str | os.PathLike | None = None, download: bool = False
) -> tuple[Tensor, Tensor]:
    """Load MNIST ``split`` as float32 images (N, 1, 28, 28) in [0, 1] and int64 labels.

    Reads ``<data_dir>/MNIST/raw/*-ubyte[.gz]``. ``download=True`` fetches missing files with
    torchvision (optional dependency). Raises ``FileNotFoundError`` naming the directory.
    """
    _check_split(split)
    root = resolve_data_dir(data_dir)
    try:
        images, labels = _mnist_arrays(split, str(root))
    except FileNotFoundError:
        if not download:
            raise
        _download_mnist(root)
        images, labels = _mnist_arrays(split, str(root))
    return _to_tensors(images, labels)


# --------------------------------------------------------------------------- CIFAR-10


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    return data, labels


@functools.lru_cache(maxsize=4)
def _cifar_arrays(split: str, directory: str) -> tuple[np.ndarray, np.ndarray]:
    folder = Path(directory) / "cifar-10-batches-py"
    names = _CIFAR_FILES[split]
    if not all((folder / n).is_file() for n in names):
        raise _missing("CIFAR-10", folder, list(names))
    parts = [_read_cifar_batch(folder / n) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels


def _download_cifar10(root: Path) -> None:
    tv = _torchvision()
    tv.datasets.CIFAR10(str(root), train=True, download=True)


def load_cifar10(
    split: str = "test", data_dir: str | os.PathLike | None = None, download: bool = False
) -> tuple[Tensor, Tensor]:
    """Load CIFAR-10 ``split`` as float32 images (N, 3, 32, 32) in [0, 1] and int64 labels.

    Reads the python pickle batches in ``<data_dir>/cifar-10-batches-py/`` (no md5 checks, so a
    partial test batch is accepted). ``download=True`` uses torchvision if it is installed.
    """
    _check_split(split)
    root = resolve_data_dir(data_dir)
    try:
        images, labels = _cifar_arrays(split, str(root))
    except FileNotFoundError:
        if not download:
            raise
        _download_cifar10(root)
        images, labels = _cifar_arrays(split, str(root))
    return _to_tensors(images, labels)


# --------------------------------------------------------------------------- helpers


def _torchvision():
    try:
        import torchvision  # noqa: PLC0415
    except ImportError:
        raise RuntimeError(
            "download=True needs torchvision (pip install 'advx[download]'); "
            f"otherwise place the files yourself and {_HINT}"
        ) from None
    return torchvision


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[Tensor, Tensor]:
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def load_dataset(
    name: str,
    split: str = "test",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    limit: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Load dataset ``name`` ("mnist", "cifar10" or "cifar10-128"), ``split`` "train" or "test";
    ``limit``: only its first ``limit`` samples.

    See :func:`load_mnist` and :func:`load_cifar10`; "cifar10-128" is CIFAR-10 upsampled
    bilinearly to 128 x 128 (:func:`upsample`), after the ``limit``.
    """
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        raise ValueError(f"limit must be a positive integer or None; got {limit!r}")
    if name in UPSAMPLED:
        base, size = UPSAMPLED[name]
        images, labels = load_dataset(base, split, data_dir, download, limit)
        return upsample(images, size), labels
    key = name.lower().replace("-", "").replace("_", "")
    if key == "mnist":
        images, labels = load_mnist(split, data_dir, download)
    elif key == "cifar10":
        images, labels = load_cifar10(split, data_dir, download)
    else:
        raise ValueError(f"name must be one of {', '.join(DATASETS)}; got {name!r}")
    return images[:limit], labels[:limit]


def upsample(images: Tensor, size: int, chunk: int = 1000) -> Tensor:
    """``images`` (N, C, H, W) resized bilinearly to (N, C, size, size) (``align_corners=False``,
    as ZOO's attack-space resize), in chunks of ``chunk`` images into one preallocated tensor
    (the 50,000 CIFAR-10 training images take 9.8 GB at 128 x 128)."""
    out = torch.empty(images.shape[0], images.shape[1], size, size, dtype=images.dtype)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk]
        out[start : start + chunk] = torch.nn.functional.interpolate(
            part, size=(size, size), mode="bilinear", align_corners=False
        ).clamp_(0.0, 1.0)
    return out


def load_demo() -> tuple[Tensor, Tensor]:
    """Return the MNIST test images (first 500) shipped with the package, as float32 and int64."""
    blob = torch.load(DEMO_PATH, map_location="cpu", weights_only=True)
    return blob["images"].float().div_(255.0), blob["labels"].long()


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in model.parameters():
        return tensor.device
    return None


@torch.no_grad()
def first_correct(
    model: nn.Module, images: Tensor, labels: Tensor, n: int, batch_size: int = 500
) -> tuple[Tensor, Tensor, Tensor]:
    """Return the first ``n`` samples ``model`` classifies correctly: (images, labels, indices).

    Runs in eval mode under ``torch.no_grad`` (the training flag is restored), stopping as soon
    as ``n`` are found; fewer are returned if the data run out.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images and labels differ in length: {images.shape[0]} vs {len(labels)}")
    was_training = model.training
    model.eval()
    device = _model_device(model) or images.device
    found: list[Tensor] = []
    count = 0
    try:
        for start in range(0, images.shape[0], batch_size):
            if count >= n:
                break
            x = images[start : start + batch_size].to(device)
            y = labels[start : start + batch_size].to(device)
            hits = (model(x).argmax(dim=1) == y).nonzero().flatten().cpu() + start
            found.append(hits)
            count += hits.numel()
    finally:
        model.train(was_training)
    index = torch.cat(found)[:n] if found else torch.zeros(0, dtype=torch.long)
    index = index.to(images.device)
    return images[index], labels[index], index
