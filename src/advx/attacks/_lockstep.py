"""Run one sequential solver per sample (for example scipy's L-BFGS-B) while batching their
function evaluations: each solver runs in its own thread and blocks on every evaluation; when
every live solver is waiting, the requests are evaluated together in one batched call."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

Evaluate = Callable[[np.ndarray], Any]
BatchEvaluate = Callable[[dict[int, np.ndarray]], dict[int, Any]]


class _Exchange:
    """Requests from the solver threads and the answers of the batched evaluation."""

    def __init__(self, live: int):
        self.condition = threading.Condition()
        self.requests: dict[int, np.ndarray] = {}
        self.answers: dict[int, Any] = {}
        self.live = live
        self.failure: BaseException | None = None

    def ask(self, index: int, point: np.ndarray) -> Any:
        with self.condition:
            self.requests[index] = np.array(point, dtype=np.float64, copy=True)
            self.condition.notify_all()
            while index not in self.answers:
                if self.failure is not None:
                    raise RuntimeError("the batched evaluation failed") from self.failure
                self.condition.wait()
            return self.answers.pop(index)

    def leave(self) -> None:
        with self.condition:
            self.live -= 1
            self.condition.notify_all()

    def serve(self, evaluate: BatchEvaluate) -> None:
        with self.condition:
            while True:
                while len(self.requests) < self.live:
                    self.condition.wait()
                if self.live == 0:
                    return
                requests, self.requests = self.requests, {}
                try:
                    self.answers.update(evaluate(requests))
                except BaseException as error:
                    self.failure = error
                    self.condition.notify_all()
                    raise
                self.condition.notify_all()


def run_in_lockstep(
    n: int, solve: Callable[[int, Evaluate], Any], evaluate: BatchEvaluate
) -> list[Any]:
    """Run ``solve(i, f_i)`` for i in range(n), each in a thread, where ``f_i(point)`` returns
    ``evaluate({i: point, ...})[i]``; the evaluations of all solvers waiting at the same time
    are made in one call. Returns the solvers' results in order; re-raises a solver's error."""
    exchange = _Exchange(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            results[i] = solve(i, lambda point: exchange.ask(i, point))
        except BaseException as error:
            errors.append(error)
        finally:
            exchange.leave()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    try:
        exchange.serve(evaluate)
    finally:
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return results
