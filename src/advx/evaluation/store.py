"""SQLite results store: one row per run, one per sample, and a few images per run.

A run is identified by a key, the hash of its configuration (model, attack, norm, targeted,
hyperparameters, data specification, seed and batch size). Sample rows are committed batch by
batch, so a run that is interrupted can be started again with the same configuration and only
computes the samples that are not stored yet.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

DEFAULT_DB = "advx-results.sqlite"
ENV_VAR = "ADVX_RESULTS"

SAMPLE_COLUMNS = (
    "sample_index",
    "label",
    "target",
    "clean_pred",
    "adv_pred",
    "success",
    "l0",
    "l1",
    "l2",
    "linf",
    "rel_l0",
    "rel_l1",
    "rel_l2",
    "rel_linf",
    "lp",
    "seconds",
    "forwards",
    "backwards",
    "queries",
)
_INT_COLUMNS = {"sample_index", "label", "target", "clean_pred", "adv_pred", "success"}

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT UNIQUE NOT NULL,
    config TEXT NOT NULL,
    created REAL NOT NULL,
    status TEXT NOT NULL,
    summary TEXT
);
CREATE TABLE IF NOT EXISTS samples (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    {", ".join(f"{c} {'INTEGER' if c in _INT_COLUMNS else 'REAL'}" for c in SAMPLE_COLUMNS)},
    PRIMARY KEY (run_id, sample_index)
);
CREATE TABLE IF NOT EXISTS images (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    sample_index INTEGER NOT NULL,
    shape TEXT NOT NULL,
    original BLOB NOT NULL,
    adversarial BLOB NOT NULL,
    PRIMARY KEY (run_id, sample_index)
);
"""


def resolve_db_path(db: str | os.PathLike | None = None) -> Path:
    """The results database: ``db`` if given, else ``$ADVX_RESULTS``, else
    ``./advx-results.sqlite``."""
    if db is not None and str(db) != "":
        return Path(db)
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DB)


def _canonical(value):
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if type(value).__name__ == "Generator" and hasattr(value, "initial_seed"):
        return f"Generator(initial_seed={value.initial_seed()})"
    if hasattr(value, "tolist"):
        return _canonical(value.tolist())
    return repr(value)


def config_json(config: Mapping) -> str:
    """Canonical JSON of a run configuration (sorted keys, inf as a string)."""
    return json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"))


def run_key(config: Mapping) -> str:
    """SHA-256 of the canonical JSON of ``config``: equal configurations give equal keys."""
    return hashlib.sha256(config_json(config).encode()).hexdigest()


def _encode_summary(summary: Mapping | None) -> str | None:
    if summary is None:
        return None
    data = dict(summary)
    if "robust_accuracy" in data:
        data["robust_accuracy"] = [[k, v] for k, v in data["robust_accuracy"].items()]
    return json.dumps(data)


def _decode_summary(text: str | None) -> dict | None:
    if text is None:
        return None
    data = json.loads(text)
    if "robust_accuracy" in data:
        data["robust_accuracy"] = {float(k): v for k, v in data["robust_accuracy"]}
    return data


def _pack(array: np.ndarray) -> bytes:
    return zlib.compress(np.ascontiguousarray(array, dtype=np.float32).tobytes(), 6)


def _unpack(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(zlib.decompress(blob), dtype=np.float32).reshape(shape)


class ResultsStore:
    """Results database (stdlib ``sqlite3``). Use as a context manager or call ``close()``."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = resolve_db_path(path)
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(str(self.path))
        self.connection.row_factory = sqlite3.Row
        self.connection.execute("PRAGMA foreign_keys = ON")
        self.connection.executescript(_SCHEMA)
        self._add_missing_columns()
        self.connection.commit()

    def _add_missing_columns(self) -> None:
        """Bring a database written by an older advx up to the current sample columns (a
        column it lacks is added, NULL for the rows already stored)."""
        present = {r["name"] for r in self.connection.execute("PRAGMA table_info(samples)")}
        for column in SAMPLE_COLUMNS:
            if column not in present:
                kind = "INTEGER" if column in _INT_COLUMNS else "REAL"
                self.connection.execute(f"ALTER TABLE samples ADD COLUMN {column} {kind}")

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()

    # ----------------------------------------------------------------------------- runs

    def open_run(self, config: Mapping) -> tuple[int, set[int]]:
        """Find or create the run with this configuration; return its id and the sample indices
        already stored for it (empty for a new run)."""
        key = run_key(config)
        row = self.connection.execute("SELECT id FROM runs WHERE key = ?", (key,)).fetchone()
        if row is None:
            cursor = self.connection.execute(
                "INSERT INTO runs (key, config, created, status) VALUES (?, ?, ?, 'running')",
                (key, config_json(config), time.time()),
            )
            self.connection.commit()
            return int(cursor.lastrowid), set()
        run_id = int(row["id"])
        done = self.connection.execute(
            "SELECT sample_index FROM samples WHERE run_id = ?", (run_id,)
        ).fetchall()
        return run_id, {int(r[0]) for r in done}

    def finish_run(self, run_id: int, summary: Mapping, status: str = "complete") -> None:
        """Record the run's summary and status."""
        self.connection.execute(
            "UPDATE runs SET summary = ?, status = ? WHERE id = ?",
            (_encode_summary(summary), status, run_id),
        )
        self.connection.commit()

    def set_status(self, run_id: int, status: str) -> None:
        """Set a run's status ('running', 'interrupted', 'complete')."""
        self.connection.execute("UPDATE runs SET status = ? WHERE id = ?", (status, run_id))
        self.connection.commit()

    def runs(self) -> list[dict]:
        """Every run as a dict: id, key, config (dict), created, status, summary (dict or None)."""
        rows = self.connection.execute("SELECT * FROM runs ORDER BY id").fetchall()
        return [
            {
                "id": int(r["id"]),
                "key": r["key"],
                "config": json.loads(r["config"]),
                "created": r["created"],
                "status": r["status"],
                "summary": _decode_summary(r["summary"]),
            }
            for r in rows
        ]

    def delete_run(self, run_id: int) -> None:
        """Remove a run with its samples and images."""
        for table, column in (("images", "run_id"), ("samples", "run_id"), ("runs", "id")):
            self.connection.execute(f"DELETE FROM {table} WHERE {column} = ?", (run_id,))
        self.connection.commit()

    # -------------------------------------------------------------------------- samples

    def add_samples(
        self,
        run_id: int,
        rows: Iterable[Mapping],
        images: Iterable[tuple[int, np.ndarray, np.ndarray]] = (),
    ) -> None:
        """Store sample rows (dicts with ``SAMPLE_COLUMNS``) and optional images
        ``(sample_index, original, adversarial)`` in one transaction; existing indices are
        kept."""
        placeholders = ", ".join("?" for _ in range(len(SAMPLE_COLUMNS) + 1))
        values = [(run_id, *(row[c] for c in SAMPLE_COLUMNS)) for row in rows]
        with self.connection:
            self.connection.executemany(
                f"INSERT OR IGNORE INTO samples (run_id, {', '.join(SAMPLE_COLUMNS)}) "
                f"VALUES ({placeholders})",
                values,
            )
            self.connection.executemany(
                "INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?, ?)",
                [
                    (run_id, int(i), json.dumps(list(o.shape)), _pack(o), _pack(a))
                    for i, o, a in images
                ],
            )

    def samples(self, run_id: int) -> dict[str, np.ndarray]:
        """The run's sample rows as columns (numpy arrays) sorted by sample index."""
        rows = self.connection.execute(
            f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM samples WHERE run_id = ? "
            "ORDER BY sample_index",
            (run_id,),
        ).fetchall()
        return {
            c: np.array(
                [np.nan if r[c] is None else r[c] for r in rows],
                dtype=np.int64 if c in _INT_COLUMNS else np.float64,
            )
            for c in SAMPLE_COLUMNS
        }

    def images(self, run_id: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Stored ``(sample_index, original, adversarial)`` images of a run, by index."""
        rows = self.connection.execute(
            "SELECT * FROM images WHERE run_id = ? ORDER BY sample_index", (run_id,)
        ).fetchall()
        out = []
        for r in rows:
            shape = tuple(json.loads(r["shape"]))
            out.append(
                (
                    int(r["sample_index"]),
                    _unpack(r["original"], shape),
                    _unpack(r["adversarial"], shape),
                )
            )
        return out
