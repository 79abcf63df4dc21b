"""advx: adversarial examples for image classifiers — attacks, robustness evaluation and
adversarial training in PyTorch."""

from . import attacks, blackbox, checks, data, defenses, evaluation, models

__version__ = "0.1.0"
__all__ = [
    "__version__",
    "attacks",
    "blackbox",
    "checks",
    "data",
    "defenses",
    "evaluation",
    "models",
]
