"""Test helpers shared by several test modules (tests/ is on sys.path, see conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from advx.evaluation import ResultsStore

# Columns that measure time, not results: the only ones allowed to differ between runs.
TIMING = {"seconds"}


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


def stored_results(db: str | Path) -> dict:
    """{configuration: (status, rows, summary, stored images)} of a database, without the timing
    columns and the summary entries that measure time (the only ones allowed to differ)."""
    out = {}
    with ResultsStore(db) as store:
        for run in store.runs():
            columns = store.samples(run["id"])
            rows = [
                tuple(columns[c][k].item() for c in sorted(columns) if c not in TIMING)
                for k in range(len(columns["sample_index"]))
            ]
            summary = {k: v for k, v in (run["summary"] or {}).items() if "seconds" not in k}
            images = [(i, o.tobytes(), a.tobytes()) for i, o, a in store.images(run["id"])]
            key = json.dumps(run["config"], sort_keys=True)
            out[key] = (run["status"], rows, json.dumps(summary, sort_keys=True), images)
    return out
