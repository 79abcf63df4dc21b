"""Model checkpoints: cache directory, saving and loading zoo models (bundled, cached, trained)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .registry import ModelSpec, get_spec

__all__ = [
    "BUNDLED",
    "load",
    "load_demo_model",
    "model_path",
    "read_checkpoint",
    "resolve_cache_dir",
    "resolve_spec",
    "save_model",
]

_ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED: dict[str, Path] = {"mnist-cnn": _ASSETS / "mnist-cnn.pt"}


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the model cache dir: ``cache_dir``, else ``$ADVX_CACHE``, else
    ``$XDG_CACHE_HOME/advx/models`` (default ``~/.cache/advx/models``)."""
    if cache_dir is not None and str(cache_dir) != "":
        return Path(cache_dir).expanduser()
    env = os.environ.get("ADVX_CACHE")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "advx" / "models"


def model_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the final trained model ``<cache>/<name>.pt``."""
    return resolve_cache_dir(cache_dir) / f"{name}.pt"


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_model(
    model: nn.Module,
    name: str,
    path: str | os.PathLike,
    metrics: dict | None = None,
    architecture: str | None = None,
) -> Path:
    """Save ``model``'s float32 CPU state dict with its name, metrics and zoo ``architecture``
    (the registered model it is an instance of; default ``name``) to ``path``."""
    state = {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
        for k, v in model.state_dict().items()
    }
    blob = {
        "format": "advx-model-v1",
        "name": name,
        "architecture": architecture or name,
        "state_dict": state,
        "metrics": dict(metrics or {}),
    }
    atomic_save(blob, Path(path))
    return Path(path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read a saved model or training checkpoint (tensors mapped to CPU, weights only)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def _build_from(name: str, path: Path) -> nn.Module:
    blob = read_checkpoint(path)
    state = blob["state_dict"] if "state_dict" in blob else blob
    architecture = blob.get("architecture", name) if "state_dict" in blob else name
    model = get_spec(architecture).build()
    model.load_state_dict(state)
    return model.float().eval()


def resolve_spec(name: str, cache_dir: str | os.PathLike | None = None) -> ModelSpec:
    """The :class:`ModelSpec` of zoo model ``name`` or of a cached trained variant of one (such as
    ``mnist-cnn-adv-ddn``, whose checkpoint records its architecture); ``ValueError`` if neither.
    """
    path = model_path(name, cache_dir)
    if path.is_file():
        blob = read_checkpoint(path)
        if isinstance(blob, dict) and "architecture" in blob:
            return get_spec(blob["architecture"])
    return get_spec(name)


def load(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    train_if_missing: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> nn.Module:
    """Return zoo model ``name`` in eval mode.

    Order: the cached ``<cache>/<name>.pt`` (also for trained variants of a zoo architecture,
    e.g. ``mnist-cnn-adv-ddn``, which record their architecture); else the model bundled with
    the package (mnist-cnn); else train it with its recipe (data from ``data_dir``) if
    ``train_if_missing``; else ``FileNotFoundError`` naming the file looked for.
    """
    path = model_path(name, cache_dir)
    if path.is_file():
        return _build_from(name, path)
    get_spec(name)
    if name in BUNDLED and BUNDLED[name].is_file():
        return _build_from(name, BUNDLED[name])
    if not train_if_missing:
        raise FileNotFoundError(
            f"no trained model {name!r}: {path} does not exist; train it with "
            f"`advx train {name}` or load(..., train_if_missing=True)"
        )
    from .training import train  # noqa: PLC0415  (import cycle)

    model, _ = train(name, data_dir, cache_dir=cache_dir, progress=progress)
    return model.eval()


def load_demo_model() -> nn.Module:
    """The pretrained mnist-cnn shipped inside the package (no data or training needed)."""
    path = BUNDLED["mnist-cnn"]
    if not path.is_file():
        raise FileNotFoundError(f"bundled model missing: {path}")
    return _build_from("mnist-cnn", path)
