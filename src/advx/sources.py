"""Users' own models and data for the command line.

Models: ``path/to/file.py:factory`` (a function returning an ``nn.Module``, optionally with a
state dict from ``--weights``) or ``file.pt`` / ``file.pth`` (a TorchScript module). Input
normalisation (``--mean``/``--std``) is applied inside the model, so attacks still see inputs
in [0, 1].

Data: ``folder:PATH`` (an ImageFolder tree, ``PATH/<class>/<image>``, classes in sorted
order) and ``npz:PATH`` (arrays ``x``: (N, C, H, W) floats in [0, 1], or uint8 images (N, H, W)
or (N, H, W, C); ``y``: integer labels).

Every problem raises :class:`SourceError` naming the argument and the file, and what to do.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "IMAGE_SUFFIXES",
    "LoadedData",
    "LoadedModel",
    "Normalize",
    "SourceError",
    "check_data_fits_model",
    "is_user_model",
    "load_data_source",
    "load_user_model",
    "parse_channels",
    "parse_size",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ptc", ".torchscript")


class SourceError(ValueError):
    """A user model or data set that cannot be used; the message names the argument."""


@dataclass
class LoadedModel:
    """A user model with the name and fingerprint that identify it in run keys."""

    model: nn.Module
    name: str
    fingerprint: str


@dataclass
class LoadedData:
    """User data: images (N, C, H, W) float32 in [0, 1], int64 labels, and its description for
    the run key (``spec``: source, path, fingerprint, classes, size)."""

    images: Tensor
    labels: Tensor
    spec: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------- models


class Normalize(nn.Module):
    """``model((x - mean) / std)``: normalisation inside the model, so inputs stay in [0, 1].

    Args:
        model: the network that expects normalised inputs.
        mean: per-channel means (one value for all channels, or one per channel).
        std: per-channel standard deviations (all > 0).
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise SourceError(
                f"--mean/--std: give as many values for both, got {len(mean)} and {len(std)}"
            )
        if any(s <= 0 for s in std):
            raise SourceError(f"--std: every value must be > 0, got {list(std)}")
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        shape = (1, -1) + (1,) * (x.dim() - 2) if x.dim() > 2 else (1, -1)
        mean = self.mean.to(x.dtype).view(shape)
        std = self.std.to(x.dtype).view(shape)
        return self.model((x - mean) / std)


def is_user_model(text: str) -> bool:
    """Whether ``--model`` names a user model (``file.py:factory`` or a TorchScript file)
    rather than a zoo model."""
    path_part = text.rsplit(":", 1)[0] if ":" in text else text
    return path_part.endswith(".py") or text.lower().endswith(TORCHSCRIPT_SUFFIXES)


def _file_digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _import_file(path: Path):
    name = f"advx_user_model_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SourceError(f"--model: cannot import {path} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise SourceError(
            f"--model: importing {path} failed ({type(error).__name__}: {error}); fix the file"
        ) from error
    return module


def _from_factory(text: str) -> tuple[nn.Module, Path]:
    file_text, _, factory = text.rpartition(":")
    path = Path(file_text).expanduser()
    if not factory.isidentifier():
        raise SourceError(f"--model: expected path/to/file.py:factory, got {text!r}")
    if not path.is_file():
        raise SourceError(f"--model: no such file {path}")
    module = _import_file(path)
    function = getattr(module, factory, None)
    if function is None or not callable(function):
        found = sorted(n for n in vars(module) if callable(getattr(module, n)) and n[0] != "_")
        raise SourceError(
            f"--model: {path} has no function {factory!r} (callables found: "
            f"{', '.join(found) or 'none'})"
        )
    try:
        model = function()
    except Exception as error:
        raise SourceError(
            f"--model: calling {factory}() from {path} failed ({type(error).__name__}: {error}); "
            "the factory must take no arguments and return an nn.Module"
        ) from error
    if not isinstance(model, nn.Module):
        raise SourceError(
            f"--model: {factory}() in {path} returned {type(model).__name__}, expected a "
            "torch.nn.Module; make the factory return the network"
        )
    return model, path


def _read_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise SourceError(f"--weights: no such file {path}")
    if path.stat().st_size == 0:
        raise SourceError(f"--weights: {path} is empty; save the state dict again")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise SourceError(
            f"--weights: {path} is not a readable state dict ({type(error).__name__}); save it "
            "with torch.save(model.state_dict(), path)"
        ) from error
    if isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
        blob = blob["state_dict"]
    if not isinstance(blob, dict) or not all(isinstance(v, Tensor) for v in blob.values()):
        raise SourceError(
            f"--weights: {path} holds {type(blob).__name__}, not a state dict of tensors; save "
            "it with torch.save(model.state_dict(), path)"
        )
    return blob


def _load_weights(model: nn.Module, path: Path, source: str) -> None:
    state = _read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        for name, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                parts.append(f"{name}: {', '.join(items[:3])}{more}")
        raise SourceError(
            f"--weights: {path} does not fit the model from {source} ({'; '.join(parts)}); "
            "pass the weights saved from this architecture"
        )
    model.load_state_dict(state)


def _torchscript(text: str) -> tuple[nn.Module, Path]:
    path = Path(text).expanduser()
    if not path.is_file():
        raise SourceError(f"--model: no such file {path}")
    try:
        return torch.jit.load(str(path), map_location="cpu"), path
    except Exception as error:
        raise SourceError(
            f"--model: {path} is not a TorchScript module ({type(error).__name__}); save one with "
            "torch.jit.save(torch.jit.script(model), path), or pass a state dict as "
            "--model file.py:factory --weights file.pt"
        ) from error


def load_user_model(
    text: str,
    weights: str | os.PathLike | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> LoadedModel:
    """Load ``--model`` given as ``file.py:factory`` (with optional ``--weights``) or as a
    TorchScript file; wrap it in :class:`Normalize` when ``mean``/``std`` are given. Returned in
    eval mode, float32, on the CPU.

    Args:
        text: the ``--model`` argument.
        weights: a state-dict file for a factory model.
        mean: per-channel means for the normalisation inside the model.
        std: per-channel standard deviations.
    """
    if ":" in text and text.rsplit(":", 1)[0].endswith(".py"):
        model, path = _from_factory(text)
        files = [path]
        if weights is not None:
            _load_weights(model, Path(weights).expanduser(), text)
            files.append(Path(weights).expanduser())
        name = f"{path.name}:{text.rsplit(':', 1)[1]}"
        if weights is not None:
            name += f" + {Path(weights).name}"
    elif text.lower().endswith(TORCHSCRIPT_SUFFIXES):
        if weights is not None:
            raise SourceError(
                "--weights: a TorchScript --model carries its weights; drop --weights"
            )
        model, path = _torchscript(text)
        files, name = [path], path.name
    else:
        raise SourceError(
            f"--model: {text!r} is neither a zoo model nor file.py:factory nor a TorchScript .pt"
        )
    if (mean is None) != (std is None):
        raise SourceError("--mean/--std: give both, or neither")
    if mean is not None:
        model = Normalize(model, mean, std)
        name += f" (mean {','.join(f'{m:g}' for m in mean)}, std {','.join(f'{s:g}' for s in std)})"
    model = model.float().eval()
    return LoadedModel(model, name, _file_digest(*files))


def parse_channels(text: str | None, name: str) -> list[float] | None:
    """``"0.5"`` or ``"0.485,0.456,0.406"`` as a list of floats (``None`` stays ``None``)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SourceError(f"{name}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise SourceError(f"{name}: expected comma-separated numbers, got {text!r}")
    return values


# --------------------------------------------------------------------------------- data


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``--size``: ``"32"`` -> (32, 32), ``"28x32"`` -> (28, 32) (height x width)."""
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise SourceError(f"--size: expected N or HxW, got {text!r}") from None
    if len(values) not in (1, 2) or min(values) < 1:
        raise SourceError(f"--size: expected N or HxW with positive sizes, got {text!r}")
    return (values[0], values[-1])


def _npz(path: Path) -> LoadedData:
    try:
        arrays = np.load(path, allow_pickle=False)
        keys = set(arrays.files)
    except Exception as error:
        raise SourceError(
            f"--data: {path} is not a readable .npz file ({type(error).__name__}); save it with "
            "numpy.savez(path, x=images, y=labels)"
        ) from error
    if not {"x", "y"} <= keys:
        raise SourceError(
            f"--data: {path} must hold arrays 'x' and 'y', found {sorted(keys)}; save it with "
            "numpy.savez(path, x=images, y=labels)"
        )
    x, y = arrays["x"], arrays["y"]
    images = _images_from_array(x, path)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise SourceError(
            f"--data: {path}: y must be a 1-D array of integer labels, got {y.dtype} {y.shape}"
        )
    if y.shape[0] != images.shape[0]:
        raise SourceError(
            f"--data: {path}: x holds {images.shape[0]} images but y {y.shape[0]} labels"
        )
    if y.size and y.min() < 0:
        raise SourceError(f"--data: {path}: labels must be >= 0, found {int(y.min())}")
    labels = torch.from_numpy(y.astype(np.int64))
    spec = {"source": "npz", "path": str(path.resolve()), "fingerprint": _file_digest(path)}
    return LoadedData(images, labels, spec)


def _images_from_array(x: np.ndarray, path: Path) -> Tensor:
    if x.dtype == np.uint8:
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim == 4:
            x = np.transpose(x, (0, 3, 1, 2))
        else:
            raise SourceError(
                f"--data: {path}: uint8 x must be (N, H, W) or (N, H, W, C), got {x.shape}"
            )
        return torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
    if not np.issubdtype(x.dtype, np.floating):
        raise SourceError(
            f"--data: {path}: x must be float (N, C, H, W) in [0, 1] or uint8 images, got {x.dtype}"
        )
    if x.ndim != 4:
        raise SourceError(f"--data: {path}: float x must be (N, C, H, W), got shape {x.shape}")
    if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise SourceError(
            f"--data: {path}: float x must lie in [0, 1] (found [{x.min():.4g}, {x.max():.4g}]); "
            "divide uint8 pixels by 255 or store them as uint8"
        )
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _image_folder(path: Path, size: tuple[int, int] | None) -> LoadedData:
    from PIL import Image

    if not path.is_dir():
        raise SourceError(
            f"--data: {path} is not a directory (expected folder:PATH/<class>/<image>)"
        )
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise SourceError(f"--data: {path} has no class folders (expected PATH/<class>/<image>)")
    files = [
        (f, k)
        for k, name in enumerate(classes)
        for f in sorted((path / name).rglob("*"))
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise SourceError(f"--data: no images ({', '.join(IMAGE_SUFFIXES)}) under {path}")
    opened = []
    for file, _ in files:
        try:
            opened.append(Image.open(file))
        except Exception as error:
            raise SourceError(f"--data: cannot read image {file} ({error})") from error
    grey = all(im.mode in ("1", "L", "I;16", "I") for im in opened)
    arrays = []
    for image in opened:
        image = image.convert("L" if grey else "RGB")
        if size is not None:
            image = image.resize((size[1], size[0]), Image.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.uint8))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise SourceError(
            f"--data: the images under {path} differ in size ({', '.join(map(str, sorted(shapes)[:3]))}); "
            "pass --size N or --size HxW to resize them"
        )
    stacked = np.stack(arrays)
    images = _images_from_array(stacked, path)
    labels = torch.tensor([k for _, k in files], dtype=torch.int64)
    digest = hashlib.sha256(stacked.tobytes() + labels.numpy().tobytes()).hexdigest()[:16]
    spec = {
        "source": "folder",
        "path": str(path.resolve()),
        "fingerprint": digest,
        "classes": classes,
    }
    if size is not None:
        spec["size"] = f"{size[0]}x{size[1]}"
    return LoadedData(images, labels, spec)


def load_data_source(text: str, size: tuple[int, int] | None = None) -> LoadedData:
    """Load ``--data`` given as ``npz:PATH`` or ``folder:PATH`` (ImageFolder; ``size``
    resizes every image to (height, width)).

    Args:
        text: the ``--data`` argument.
        size: the ``--size`` for ImageFolder data.
    """
    kind, sep, rest = text.partition(":")
    if not sep or kind not in ("npz", "folder") or not rest:
        raise SourceError(f"--data: expected npz:PATH or folder:PATH, got {text!r}")
    path = Path(rest).expanduser()
    if kind == "npz":
        if size is not None:
            raise SourceError("--size: only for folder: data (npz arrays are used as stored)")
        if not path.is_file():
            raise SourceError(f"--data: no such file {path}")
        return _npz(path)
    return _image_folder(path, size)


@torch.no_grad()
def check_data_fits_model(model: nn.Module, data: LoadedData, device: torch.device) -> int:
    """Run the model on one image; return its number of classes. Raises :class:`SourceError`
    when the images do not fit the model or a label is outside its classes."""
    if data.images.shape[0] == 0:
        raise SourceError(f"--data: {data.spec.get('path', 'the data')} holds no images")
    sample = data.images[:1].to(device)
    try:
        logits = model(sample)
    except Exception as error:
        raise SourceError(
            f"--data: images of shape {tuple(data.images.shape[1:])} (C, H, W) do not fit the "
            f"model ({type(error).__name__}: {str(error).splitlines()[0][:160]}); resize them "
            "(--size for folder: data) or check the model's input shape"
        ) from None
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise SourceError(f"--model: the model must return logits of shape (N, K), got {shape}")
    classes = int(logits.shape[1])
    top = int(data.labels.max())
    if top >= classes:
        raise SourceError(
            f"--data: labels go up to {top} but the model has {classes} outputs (classes "
            f"0..{classes - 1}); check y or the model's last layer"
        )
    return classes
