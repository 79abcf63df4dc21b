"""advx: adversarial examples for image classifiers — attacks, robustness evaluation and
adversarial training in PyTorch."""

from . import attacks

__version__ = "0.1.0"
__all__ = ["attacks", "__version__"]
