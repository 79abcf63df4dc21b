"""The benchmarks' results file: an append-only jsonl of rows keyed by ``key``, so that a rerun
reuses every row already measured (resume) and loses nothing when interrupted."""

from __future__ import annotations

import json
from pathlib import Path


class Results:
    """Append-only jsonl of rows keyed by ``key``; rows already present are reused."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["key"]] = row

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def add(self, key: str, row: dict) -> dict:
        row = {"key": key, **row}
        self.rows[key] = row
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        return row
