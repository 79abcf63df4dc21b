"""Model registry: a :class:`ModelSpec` per zoo model (architecture + training recipe)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from torch import nn

from .architectures import (
    CifarAlexLike,
    CifarCNN,
    CifarLargeCNN,
    CifarMLP,
    MnistCNN,
    MnistFCNN,
    MnistLeNet5,
    MnistMLP,
)

__all__ = ["INPUT_SHAPES", "MODELS", "ModelSpec", "get_spec", "register"]

INPUT_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar10-128": (3, 128, 128)}
TASKS = ("classification", "regression")


@dataclass(frozen=True)
class ModelSpec:
    """A named zoo model: its dataset, architecture builder and training recipe.

    ``optimizer`` is "adam" (AdamW, decoupled ``weight_decay``) or "sgd" (Nesterov momentum);
    ``schedule`` is "onecycle" (warm-up to ``lr``, then cosine to 0), "cosine" (``lr`` to 0)
    or "constant"; the schedule steps every batch. ``augment`` enables random crop (pad 4)
    and horizontal flip (CIFAR-style).
    ``channels_last`` trains in that memory format (faster for some CPU convolutions).
    ``expected_accuracy`` is the test accuracy the recipe is known to reach (a floor for checks).
    ``task`` is "classification" (logits (N, K), cross-entropy) or "regression" (one output
    (N, 1) regressing the label's value, mean squared error; its "accuracy" is that of the
    output rounded to the nearest class, see ``training.predicted_labels``).
    """

    name: str
    dataset: str
    builder: Callable[[], nn.Module]
    epochs: int
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "onecycle"
    augment: bool = False
    channels_last: bool = False
    seed: int = 0
    expected_accuracy: float = 0.0
    description: str = ""
    task: str = "classification"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Per-sample input shape (C, H, W) of the dataset."""
        return INPUT_SHAPES[self.dataset]

    def build(self) -> nn.Module:
        """A fresh, untrained instance of the architecture."""
        return self.builder()


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec, *, overwrite: bool = False) -> ModelSpec:
    """Add ``spec`` to :data:`MODELS`; raises ``ValueError`` if the name exists (unless
    ``overwrite``) or the dataset/optimizer/schedule is unknown."""
    if spec.dataset not in INPUT_SHAPES:
        raise ValueError(f"dataset must be one of {sorted(INPUT_SHAPES)}; got {spec.dataset!r}")
    if spec.optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd'; got {spec.optimizer!r}")
    if spec.schedule not in ("onecycle", "cosine", "constant"):
        raise ValueError(f"schedule must be onecycle, cosine or constant; got {spec.schedule!r}")
    if spec.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {spec.task!r}")
    if spec.name in MODELS and not overwrite:
        raise ValueError(f"model {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    """Return the :class:`ModelSpec` called ``name``; ``ValueError`` lists the known names."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(MODELS))
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None


register(
    ModelSpec(
        name="mnist-cnn",
        dataset="mnist",
        builder=MnistCNN,
        epochs=4,
        batch_size=128,
        optimizer="adam",
        lr=2e-3,
        schedule="onecycle",
        expected_accuracy=0.99,
        description="Carlini-Wagner MNIST CNN (conv32-conv32-pool-conv64-conv64-pool-fc200x2)",
    )
)
register(
    ModelSpec(
        name="mnist-mlp",
        dataset="mnist",
        builder=MnistMLP,
        epochs=6,
        batch_size=128,
        optimizer="adam",
        lr=2e-3,
        schedule="onecycle",
        expected_accuracy=0.975,
        description="MLP 784-1024-10 (ReLU)",
    )
)
register(
    ModelSpec(
        name="mnist-lenet5",
        dataset="mnist",
        builder=MnistLeNet5,
        epochs=6,
        batch_size=128,
        optimizer="adam",
        lr=3e-3,
        schedule="onecycle",
        expected_accuracy=0.985,
        description="LeNet-5 (ReLU, max pooling)",
    )
)
register(
    ModelSpec(
        name="mnist-fcnn",
        dataset="mnist",
        builder=MnistFCNN,
        epochs=6,
        batch_size=128,
        optimizer="adam",
        lr=2e-3,
        schedule="onecycle",
        expected_accuracy=0.975,
        description="FCNN 784-150-100-10 (ReLU), the linear-region paper's MNIST model",
    )
)
register(
    ModelSpec(
        name="cifar-cnn",
        dataset="cifar10",
        builder=CifarCNN,
        epochs=15,
        batch_size=128,
        optimizer="adam",
        lr=2e-3,
        weight_decay=0.05,
        schedule="onecycle",
        augment=True,
        channels_last=True,
        expected_accuracy=0.72,
        description="Carlini-Wagner CIFAR-10 CNN (conv64x2-pool-conv128x2-pool-fc256x2)",
    )
)

# ZOO's attack-space ablation (thesis Table 3) needs inputs of at least 96 x 96; no ImageNet
# weights exist here, so a CNN is trained on CIFAR-10 upsampled to 128 x 128 (all 50,000
# training images take 9.8 GB at this size: `advx train cifar-cnn-128 --max-samples 20000`).
register(
    replace(
        get_spec("cifar-cnn"),  # its recipe, 6 epochs
        name="cifar-cnn-128",
        dataset="cifar10-128",
        builder=CifarLargeCNN,
        epochs=6,
        channels_last=False,
        expected_accuracy=0.5,
        description="CNN for CIFAR-10 upsampled to 128x128 (patch conv, 2 stride-2 convs, fc256)",
    )
)

# Trust-region paper (Yao et al., CVPR 2019) models: AlexLike / AlexLike-S and the Swish MLP.
# Recipes sized for 2 CPU cores (see the builders' docstrings for the architectures).
register(
    ModelSpec(
        name="cifar-alexlike",
        dataset="cifar10",
        builder=partial(CifarAlexLike, activation="relu"),
        epochs=8,
        batch_size=128,
        optimizer="adam",
        lr=2e-3,
        weight_decay=0.05,
        schedule="onecycle",
        augment=True,
        channels_last=True,
        expected_accuracy=0.70,
        description="AlexLike (ReLU) of the trust-region paper: conv5x5(64)-pool-conv5x5(64)-pool-"
        "fc384-fc192",
    )
)
register(
    ModelSpec(
        name="cifar-alexlike-swish",
        dataset="cifar10",
        builder=partial(CifarAlexLike, activation="swish"),
        epochs=8,
        batch_size=128,
        optimizer="adam",
        lr=2e-3,
        weight_decay=0.05,
        schedule="onecycle",
        augment=True,
        channels_last=True,
        expected_accuracy=0.70,
        description="AlexLike-S (Swish) of the trust-region paper, smooth for second-order attacks",
    )
)
register(
    ModelSpec(
        name="cifar-mlp-swish",
        dataset="cifar10",
        builder=partial(CifarMLP, activation="swish"),
        epochs=8,
        batch_size=128,
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.05,
        schedule="onecycle",
        augment=False,
        expected_accuracy=0.50,
        description="MLP 3072-1024-512-512-256-10 (Swish) of the trust-region paper's Table 5",
    )
)

# A regression model for the convex-programming paper's Section III attack (regression_attack):
# LeNet-5 with one output, trained with MSE to predict the digit's value (0-9) of an MNIST image.
register(
    ModelSpec(
        name="mnist-regress",
        dataset="mnist",
        builder=partial(MnistLeNet5, num_classes=1),
        epochs=8,
        batch_size=128,
        optimizer="adam",
        lr=3e-3,
        schedule="onecycle",
        expected_accuracy=0.9,
        description="LeNet-5 regressing the digit value (one output, MSE); accuracy = rounded",
        task="regression",
    )
)

# Linear-region paper (Croce & Hein, GCPR 2018) models: N1 (784-50-10) and N2 (784-50-15-10) for
# the comparison with the exact MIP (Table 1), and the k x 1024 ReLU MLPs of Table 2 on MNIST
# (1x1024 is "mnist-mlp" above) and CIFAR-10.
for _name, _hidden, _shape in (
    ("mnist-n1", (50,), "784-50-10"),
    ("mnist-n2", (50, 15), "784-50-15-10"),
):
    register(
        ModelSpec(
            name=_name,
            dataset="mnist",
            builder=partial(MnistFCNN, hidden=_hidden),
            epochs=6,
            batch_size=128,
            optimizer="adam",
            lr=2e-3,
            schedule="onecycle",
            expected_accuracy=0.96,
            description=f"{_name[-2:].upper()} of the linear-region paper: MLP {_shape} (ReLU)",
        )
    )


def _register_table2_mlp(prefix: str, dataset: str, builder, layers: int, **recipe) -> None:
    """The linear-region paper's k x 1024 ReLU MLP of its Table 2 on ``dataset``."""
    inputs = "784" if dataset == "mnist" else "3072"
    register(
        ModelSpec(
            name=f"{prefix}-mlp{layers}x1024",
            dataset=dataset,
            builder=partial(builder, hidden=(1024,) * layers),
            batch_size=128,
            optimizer="adam",
            lr=1e-3,
            schedule="onecycle",
            description=f"MLP {inputs}-{'-'.join(['1024'] * layers)}-10 (ReLU) of the "
            "linear-region paper's Table 2",
            **recipe,
        )
    )


for _layers in (5, 10):
    _register_table2_mlp("mnist", "mnist", MnistFCNN, _layers, epochs=6, expected_accuracy=0.975)
for _layers in (1, 5, 10):
    _register_table2_mlp(
        "cifar", "cifar10", partial(CifarMLP, activation="relu"), _layers, epochs=8,
        expected_accuracy=0.45,
    )  # fmt: skip
