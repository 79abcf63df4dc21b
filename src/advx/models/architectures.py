"""Zoo architectures. Every model takes inputs in [0, 1] and returns logits; any input
normalisation lives inside the model."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = [
    "CifarAlexLike",
    "CifarCNN",
    "CifarLargeCNN",
    "CifarMLP",
    "MnistCNN",
    "MnistFCNN",
    "MnistLeNet5",
    "MnistMLP",
]


def _conv_relu(c_in: int, c_out: int, kernel: int = 3, padding: int = 0) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, padding=padding), nn.ReLU()]


class MnistCNN(nn.Module):
    """Carlini-Wagner MNIST network: 2x conv3x3(32), pool, 2x conv3x3(64), pool, fc200-fc200-fc10.

    Valid (unpadded) convolutions as in the original; dropout ``dropout`` before the fc layers.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_relu(1, 32),
            *_conv_relu(32, 32),
            nn.MaxPool2d(2),
            *_conv_relu(32, 64),
            *_conv_relu(64, 64),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(64 * 4 * 4, 200),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(200, 200),
            nn.ReLU(),
            nn.Linear(200, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch (N, 1, 28, 28) in [0, 1]."""
        return self.classifier(self.features(x))


class CifarCNN(nn.Module):
    """Carlini-Wagner CIFAR-10 network: 2x conv3x3(64), pool, 2x conv3x3(128), pool,
    fc256-fc256-fc10 (valid convolutions, ReLU, dropout after the first fc layer as in C&W)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_relu(3, 64),
            *_conv_relu(64, 64),
            nn.MaxPool2d(2),
            *_conv_relu(64, 128),
            *_conv_relu(128, 128),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * 5 * 5, 256),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch (N, 3, 32, 32) in [0, 1]."""
        return self.classifier(self.features(x))


class CifarLargeCNN(nn.Module):
    """A CNN for 128 x 128 inputs (CIFAR-10 upsampled, ``cifar10-128``), the stand-in for an
    ImageNet model in ZOO's attack-space ablation (thesis Table 3): a learned 4 x 4 stride-4
    patch convolution (32 channels) to 32 x 32, two conv3x3 layers of stride 2 (64, 128
    channels, padding 1) to 8 x 8, fc256-fc10, ReLU. No fixed downsampling layer, so every input
    pixel reaches the logits through learned weights; cheap enough for ZOO's 257 queries per
    iteration on a CPU."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 4, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * 8 * 8, 256), nn.ReLU(), nn.Linear(256, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch (N, 3, 128, 128) in [0, 1]."""
        return self.classifier(self.features(x))


class MnistLeNet5(nn.Module):
    """LeNet-5 with ReLU and max pooling: conv5x5(6, pad 2), pool, conv5x5(16), pool,
    fc120-fc84-fc10."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_relu(1, 6, kernel=5, padding=2),
            nn.MaxPool2d(2),
            *_conv_relu(6, 16, kernel=5),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch (N, 1, 28, 28) in [0, 1]."""
        return self.classifier(self.features(x))


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MnistMLP(nn.Module):
    """One-hidden-layer MLP 784-1024-10 with ReLU."""

    def __init__(self, hidden: int = 1024, num_classes: int = 10) -> None:
        super().__init__()
        self.net = _mlp([784, hidden, num_classes])

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch (N, 1, 28, 28) in [0, 1]."""
        return self.net(x)


class MnistFCNN(nn.Module):
    """Fully connected 784-150-100-10 ReLU network (the linear-region paper's MNIST FCNN)."""

    def __init__(self, hidden: tuple[int, ...] = (150, 100), num_classes: int = 10) -> None:
        super().__init__()
        self.net = _mlp([784, *hidden, num_classes])

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch (N, 1, 28, 28) in [0, 1]."""
        return self.net(x)


def _activation(name: str) -> type[nn.Module]:
    """The activation module class for ``name``: "relu" or "swish" (SiLU, x * sigmoid(x))."""
    table = {"relu": nn.ReLU, "swish": nn.SiLU}
    if name not in table:
        raise ValueError(f"activation must be one of {sorted(table)}, got {name!r}")
    return table[name]


class CifarAlexLike(nn.Module):
    """AlexLike CIFAR-10 network of the trust-region paper (Yao et al., CVPR 2019, Sec. 4.1:
    "a simple CNN [29, C1]", AlexLike with ReLU, AlexLike-S with Swish): the AlexNet-like
    network of the TensorFlow CIFAR-10 tutorial as we read [29]'s C1, without its local
    response normalisation: conv5x5(64, same), maxpool 3x3/2, conv5x5(64, same), maxpool 3x3/2,
    fc384-fc192-fc10. ``activation`` is "relu" or "swish" (every ReLU replaced by SiLU, so the
    logits are smooth almost everywhere and have a non-zero Hessian; max pooling stays).
    About 33M multiply-adds per image, ~0.6x the C&W CIFAR CNN, to train on 2 CPU cores."""

    def __init__(self, num_classes: int = 10, activation: str = "relu") -> None:
        super().__init__()
        act = _activation(activation)
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 5, padding=2),
            act(),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(64, 64, 5, padding=2),
            act(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 8 * 8, 384),
            act(),
            nn.Linear(384, 192),
            act(),
            nn.Linear(192, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch (N, 3, 32, 32) in [0, 1]."""
        return self.classifier(self.features(x))


class CifarMLP(nn.Module):
    """The trust-region paper's CIFAR-10 MLP 3072-1024-512-512-256-10 (Yao et al., CVPR 2019,
    Sec. 4.1, used for the second-order comparison of Table 5), Swish (SiLU) activations by
    default, "relu" for the piecewise-linear variant."""

    def __init__(
        self,
        hidden: tuple[int, ...] = (1024, 512, 512, 256),
        num_classes: int = 10,
        activation: str = "swish",
    ) -> None:
        super().__init__()
        act = _activation(activation)
        sizes = [3 * 32 * 32, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), act()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch (N, 3, 32, 32) in [0, 1]."""
        return self.net(x)
