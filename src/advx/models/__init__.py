"""Model zoo: named architectures (registry), training recipes and cached checkpoints.

Every zoo model takes inputs in [0, 1] and returns logits.
"""

from .architectures import (
    CifarAlexLike,
    CifarCNN,
    CifarMLP,
    MnistCNN,
    MnistFCNN,
    MnistLeNet5,
    MnistMLP,
)
from .checkpoints import load, load_demo_model, model_path, resolve_cache_dir, resolve_spec
from .registry import MODELS, ModelSpec, get_spec, register
from .training import evaluate, train

__all__ = [
    "MODELS",
    "CifarAlexLike",
    "CifarCNN",
    "CifarMLP",
    "MnistCNN",
    "MnistFCNN",
    "MnistLeNet5",
    "MnistMLP",
    "ModelSpec",
    "evaluate",
    "get_spec",
    "load",
    "load_demo_model",
    "model_path",
    "register",
    "resolve_cache_dir",
    "resolve_spec",
    "train",
]
