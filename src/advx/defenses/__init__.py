"""Defenses: adversarial training (and, in later issues, distillation and feature squeezing)."""

from . import adversarial_training

__all__ = ["adversarial_training"]
