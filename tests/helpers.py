"""Test helpers shared by several test modules (tests/ is on sys.path, see conftest.py)."""

from __future__ import annotations

import torch
from torch import nn


class NoAutograd(nn.Module):
    """Wraps a model and raises when it is called with autograd enabled: black-box code (attacks,
    query access) may only query the model, under ``torch.no_grad()``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        if torch.is_grad_enabled():
            raise AssertionError("a black-box attack called the model with autograd enabled")
        return self.model(x)
