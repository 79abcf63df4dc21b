"""Query-only access to a classifier: the interface every black-box attack uses (Chen et al.,
"ZOO", AISec 2017; Chen, thesis ch. 3): scores only, no gradients, every query counted."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..checks import expected_input

OUTPUTS = ("logits", "probabilities", "log_probabilities")
DEFAULT_BATCH_SIZE = 8192


class BudgetExceeded(RuntimeError):
    """A query would take a sample past its budget (attacks check ``remaining`` first)."""


class QueryModel:
    """Score-only access to ``model`` with per-sample query counting and budgets.

    The model is called under ``torch.no_grad()`` (no graph is ever built), in chunks of at
    most ``batch_size`` rows. One query is one image evaluated; each query row belongs to a
    sample (``owners``; by default row i belongs to sample i), and ``queries[i]`` counts the
    queries made for sample i. With a ``budget``, a call that would take any sample past
    ``budget`` queries raises :class:`BudgetExceeded` before the model is called; black-box
    attacks check :meth:`remaining` and stop a sample cleanly instead, returning the best
    result found so far.

    Args:
        model: an ``nn.Module`` or any callable mapping a batch (N, ...) to scores (N, K).
        output: what the model returns: ``"logits"``, ``"probabilities"`` or
            ``"log_probabilities"`` (converted by :meth:`log_probabilities`).
        budget: the most queries per sample, or None for no limit.
        batch_size: the most rows per model call.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[Tensor], Tensor],
        *,
        output: str = "logits",
        budget: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        if isinstance(model, QueryModel):
            raise TypeError("model is already a QueryModel; use it directly")
        if not callable(model):
            raise TypeError(f"model must be an nn.Module or a callable, got {type(model).__name__}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if budget is not None and (
            not isinstance(budget, int) or isinstance(budget, bool) or budget < 1
        ):
            raise ValueError(f"budget must be None or an integer >= 1, got {budget!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.model = model
        self.output = output
        self.budget = budget
        self.batch_size = batch_size
        self.reset()

    def reset(self) -> None:
        """Set the query and call counts back to zero."""
        self.queries = torch.zeros(0, dtype=torch.int64)
        self.calls = 0

    @property
    def total_queries(self) -> int:
        """All queries made, over all samples."""
        return int(self.queries.sum())

    def _grow(self, size: int) -> None:
        if size > self.queries.numel():
            grown = torch.zeros(size, dtype=torch.int64)
            grown[: self.queries.numel()] = self.queries
            self.queries = grown

    def remaining(self, owners: Tensor) -> Tensor:
        """Queries left to each sample in ``owners`` (int64; a huge number without budget)."""
        owners = owners.detach().cpu().long()
        if self.budget is None:
            return torch.full(owners.shape, torch.iinfo(torch.int64).max, dtype=torch.int64)
        self._grow(int(owners.max()) + 1 if owners.numel() else 0)
        return self.budget - self.queries[owners]

    def _charge(self, rows: int, owners: Tensor | None) -> None:
        owners = torch.arange(rows) if owners is None else owners.detach().cpu().long().flatten()
        if owners.numel() != rows:
            raise ValueError(f"owners has {owners.numel()} entries for a batch of {rows} rows")
        if rows == 0:
            return
        if (owners < 0).any():
            raise ValueError("owners must be sample indices >= 0")
        counts = torch.bincount(owners)
        self._grow(counts.numel())
        after = self.queries[: counts.numel()] + counts
        if self.budget is not None and bool((after > self.budget).any()):
            worst = int(after.argmax())
            raise BudgetExceeded(
                f"sample {worst} would reach {int(after[worst])} queries; budget is {self.budget}"
            )
        self.queries[: counts.numel()] = after

    def __call__(self, inputs: Tensor, owners: Tensor | None = None) -> Tensor:
        """The model's scores for ``inputs`` (as the model returns them), counted against
        ``owners`` (one sample index per row; default: row i is sample i)."""
        self._charge(inputs.shape[0], owners)
        chunks = []
        with torch.no_grad():
            for start in range(0, inputs.shape[0], self.batch_size):
                chunks.append(self._query(inputs[start : start + self.batch_size]))
                self.calls += 1
        if not chunks:
            raise ValueError("inputs is an empty batch")
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    def _query(self, inputs: Tensor) -> Tensor:
        """One call of the model, with torch's shape errors named as the contract's are."""
        try:
            scores = self.model(inputs)
        except (RuntimeError, ValueError) as error:
            expected = expected_input(self.model)
            wanted = f"; the model expects {expected}" if expected else ""
            raise ValueError(
                f"inputs of shape {tuple(inputs.shape)} cannot be fed to the model{wanted} "
                f"(torch said: {str(error).splitlines()[0]})"
            ) from error
        if not isinstance(scores, Tensor):
            raise TypeError(
                f"model must return a tensor of scores; it returned {type(scores).__name__}"
            )
        return scores

    def log_probabilities(self, inputs: Tensor, owners: Tensor | None = None) -> Tensor:
        """log F(x), the scores of Eq. 10-11 of the thesis, from whatever the model returns
        (log 0 becomes the most negative finite value, not -inf, so margins stay finite)."""
        scores = self(inputs, owners)
        return to_log_probabilities(scores, self.output)


def to_log_probabilities(scores: Tensor, output: str) -> Tensor:
    """Convert model scores of kind ``output`` (see :data:`OUTPUTS`) to log-probabilities."""
    if output == "logits":
        return torch.log_softmax(scores, dim=1)
    if output == "probabilities":
        return torch.log(scores.clamp_min(torch.finfo(scores.dtype).tiny))
    return scores.clamp_min(torch.finfo(scores.dtype).min)


def as_query_model(model, *, output: str = "logits") -> QueryModel:
    """``model`` itself if it is a :class:`QueryModel` (its counts and budget apply), else a new
    unlimited QueryModel around it."""
    if isinstance(model, QueryModel):
        return model
    return QueryModel(model, output=output)
