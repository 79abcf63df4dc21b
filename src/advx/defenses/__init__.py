"""Defenses: adversarial training, defensive distillation and feature squeezing."""

from . import adversarial_training, distillation
from .squeezing import (
    FeatureSqueezing,
    bit_depth,
    median_smoothing,
    non_local_means,
    threshold_at_fpr,
)

__all__ = [
    "FeatureSqueezing",
    "adversarial_training",
    "bit_depth",
    "distillation",
    "median_smoothing",
    "non_local_means",
    "threshold_at_fpr",
]
