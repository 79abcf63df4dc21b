"""The benchmarks' results file: an append-only jsonl of rows, so that a rerun reuses every row
already measured (resume) and loses nothing when interrupted."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterator, Mapping
from pathlib import Path


class Results(Mapping):
    """Append-only jsonl of rows, read as a mapping from each row's key to the row.

    Rows are keyed by their stored ``"key"`` field (``add``), or, when ``key`` is given, by
    ``key(row)`` computed from the row's own fields (``record``)."""

    def __init__(self, path: Path, key: Callable[[dict], Hashable] | None = None):
        self.path = path
        self._key = key
        self.rows: dict[Hashable, dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[self._row_key(row)] = row

    def _row_key(self, row: dict) -> Hashable:
        return row["key"] if self._key is None else self._key(row)

    def __getitem__(self, key: Hashable) -> dict:
        return self.rows[key]

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def _write(self, key: Hashable, row: dict) -> dict:
        self.rows[key] = row
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        return row

    def add(self, key: str, row: dict) -> dict:
        """Append ``row`` under the explicit ``key`` (stored in the row); return the stored row."""
        return self._write(key, {"key": key, **row})

    def record(self, row: dict) -> dict:
        """Append ``row`` under the key derived from it (needs ``key`` at construction)."""
        return self._write(self._row_key(row), row)
