"""Evaluation: count and time attacks, verify their examples, compute norms and summaries,
store results in SQLite, and plot and report them."""

from .counting import CountingModel, Counts
from .metrics import (
    L0_TOLERANCE,
    perturbation_norms,
    robust_accuracy_from_norms,
    summarize,
    target_case_summary,
)
from .runner import RunResult, check_adversarials, choose_targets, run_attack
from .store import ResultsStore, resolve_db_path, run_key
from .transfer import Ensemble, transfer

__all__ = [
    "L0_TOLERANCE",
    "CountingModel",
    "Counts",
    "Ensemble",
    "ResultsStore",
    "RunResult",
    "check_adversarials",
    "choose_targets",
    "perturbation_norms",
    "resolve_db_path",
    "robust_accuracy_from_norms",
    "run_attack",
    "run_key",
    "summarize",
    "target_case_summary",
    "transfer",
]
