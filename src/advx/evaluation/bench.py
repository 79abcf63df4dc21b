"""Declarative, resumable sweeps (``advx bench CONFIG.toml``): a TOML file names the data, the
models and the attacks; lists of values expand into a grid; every point of the grid is one
:func:`advx.evaluation.run_attack` run, keyed by its full configuration in the SQLite results
store, so a sweep started again skips the finished jobs and resumes a half-finished one.

Jobs run in this process (``executor="local"``) or as Ray tasks (``executor="ray"``), whose
workers return their rows to the driver: only the driver writes the store, so both executors
store the same rows.

A configuration::

    [data]
    dataset = "mnist"      # "mnist", "cifar10" or "mnist-demo" (the 500 bundled images)
    split = "test"
    n = 12                 # the first n correctly classified images of each model
    batch_size = 100       # optional; also seed = 0, data_dir = "..."

    [execution]            # optional: resources of one job (a Ray task)
    cpus_per_task = 1
    gpus_per_task = 0

    [[models]]
    name = "mnist-cnn"     # a zoo model; or a name with checkpoint = "path.pt"

    [[attacks]]
    name = "fgm"
    norm = "inf"
    eps = [0.1, 0.2]       # a list: one job per value (the product over every list)

    [[attacks]]
    name = "ddn"
    steps = [10, 20]
    targeted = ["untargeted", "random", "all"]
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..attacks.registry import ATTACKS, AttackInfo, get_attack
from .metrics import norm_name
from .store import SAMPLE_COLUMNS, ResultsStore, config_json

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

EXECUTORS = ("local", "ray")
TARGET_MODES = ("untargeted", "random", "next", "all")
DATASETS = ("mnist", "cifar10", "mnist-demo")
DATA_KEYS = {"dataset", "split", "n", "batch_size", "seed", "data_dir"}
EXECUTION_KEYS = {"cpus_per_task", "gpus_per_task"}
MODEL_KEYS = {"name", "checkpoint"}
# Keys of an [[attacks]] table that are not hyperparameters of the attack function.
RUN_KEYS = {"name", "norm", "targeted", "batch_size", "seed"}
# Not settable from a file: the runner seeds torch per batch (generator) and owns the loop.
_NOT_HYPERPARAMETERS = {
    "model",
    "inputs",
    "labels",
    "targeted",
    "norm",
    "self",
    "callback",
    "generator",
}
_TOP_LEVEL = {"data", "execution", "models", "attacks"}
_IGNORED_IN_KEY = ("targets",)  # determined by the data and the seed (see _lookup_key)


class ConfigError(ValueError):
    """An invalid sweep configuration; the message names the file, the key and the reason."""

    def __init__(self, source: str, key: str, reason: str):
        super().__init__(f"{source}: {key}: {reason}")
        self.source, self.key, self.reason = source, key, reason


# ---------------------------------------------------------------------------------- jobs


@dataclass
class Job:
    """One point of the grid: one ``run_attack`` run (picklable, sent to Ray workers)."""

    model: str
    checkpoint: str | None
    attack: str
    norm: str | float | None
    targets: str
    hyperparameters: dict
    dataset: str
    split: str
    n: int
    batch_size: int
    seed: int
    data_dir: str | None = None
    cpus: float = 1
    gpus: float = 0

    @property
    def targeted(self) -> bool:
        """Whether the job attacks towards target classes."""
        return self.targets != "untargeted"

    def data_spec(self) -> dict:
        """How the images were chosen (the ``data`` entry of the run key)."""
        return {
            "dataset": self.dataset,
            "split": self.split,
            "selection": "first-correct",
            "n": self.n,
            "targets": self.targets,
        }

    def label(self) -> str:
        """Short human-readable description of the job."""
        params = " ".join(f"{k}={_short(v)}" for k, v in sorted(self.hyperparameters.items()))
        norm = "" if self.norm is None else f" L{self.norm}"
        mode = "" if self.targets == "untargeted" else f" [{self.targets}]"
        return f"{self.model} {self.attack}{norm}{mode} {params}".rstrip()


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass
class SweepConfig:
    """A parsed, validated sweep: its jobs (the expanded grid) and where it came from."""

    source: str
    jobs: list[Job]
    raw: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ parsing


def _type_name(value) -> str:
    return type(value).__name__


def _expect(source: str, key: str, value, kinds: tuple[type, ...], what: str):
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        raise ConfigError(source, key, f"expected {what}, got {_type_name(value)} {value!r}")
    return value


def _check_keys(source: str, where: str, table: Mapping, allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(
                source, f"{where}.{key}", f"unknown key (allowed: {', '.join(sorted(allowed))})"
            )


def _parse_data(source: str, data) -> dict:
    if not isinstance(data, Mapping):
        raise ConfigError(source, "data", "missing [data] table (dataset, split, n)")
    _check_keys(source, "data", data, DATA_KEYS)
    if "dataset" not in data:
        raise ConfigError(source, "data.dataset", f"required (one of {', '.join(DATASETS)})")
    dataset = _expect(source, "data.dataset", data["dataset"], (str,), "a string")
    if dataset not in DATASETS:
        raise ConfigError(source, "data.dataset", f"unknown dataset {dataset!r} ({DATASETS})")
    split = _expect(source, "data.split", data.get("split", "test"), (str,), "a string")
    if split not in ("test", "train"):
        raise ConfigError(source, "data.split", f"expected 'test' or 'train', got {split!r}")
    if "n" not in data:
        raise ConfigError(source, "data.n", "required (the first n correctly classified images)")
    parsed = {"dataset": dataset, "split": split}
    for key, default in (("n", None), ("batch_size", 100), ("seed", 0)):
        value = _expect(source, f"data.{key}", data.get(key, default), (int,), "an integer")
        if key != "seed" and value < 1:
            raise ConfigError(source, f"data.{key}", f"expected an integer >= 1, got {value}")
        parsed[key] = value
    data_dir = data.get("data_dir")
    parsed["data_dir"] = (
        None if data_dir is None else _expect(source, "data.data_dir", data_dir, (str,), "a string")
    )
    return parsed


def _parse_execution(source: str, execution) -> dict:
    execution = {} if execution is None else execution
    if not isinstance(execution, Mapping):
        raise ConfigError(source, "execution", "expected a table")
    _check_keys(source, "execution", execution, EXECUTION_KEYS)
    parsed = {}
    for key, default, low in (("cpus_per_task", 1, 0.0), ("gpus_per_task", 0, 0.0)):
        value = _expect(
            source, f"execution.{key}", execution.get(key, default), (int, float), "a number"
        )
        if value < low:
            raise ConfigError(source, f"execution.{key}", f"expected a number >= 0, got {value}")
        parsed[key] = value
    return parsed


def _parse_models(source: str, models, dataset: str) -> list[dict]:
    from ..models import resolve_spec

    if not isinstance(models, list) or not models:
        raise ConfigError(source, "models", "expected at least one [[models]] table")
    parsed = []
    for i, table in enumerate(models):
        where = f"models[{i}]"
        if not isinstance(table, Mapping):
            raise ConfigError(source, where, "expected a table")
        _check_keys(source, where, table, MODEL_KEYS)
        if "name" not in table:
            raise ConfigError(source, f"{where}.name", "required")
        name = _expect(source, f"{where}.name", table["name"], (str,), "a string")
        checkpoint = table.get("checkpoint")
        if checkpoint is not None:
            _expect(source, f"{where}.checkpoint", checkpoint, (str,), "a string")
            path = Path(checkpoint).expanduser()
            if not path.is_absolute():
                path = (Path(source).parent / path).resolve()
            if not path.is_file():
                raise ConfigError(source, f"{where}.checkpoint", f"no such file {path}")
            checkpoint = str(path)
            model_dataset = _checkpoint_dataset(path)
        else:
            try:
                model_dataset = resolve_spec(name).dataset
            except ValueError as error:
                raise ConfigError(source, f"{where}.name", str(error)) from None
        wanted = "mnist" if dataset == "mnist-demo" else dataset
        if model_dataset is not None and model_dataset != wanted:
            raise ConfigError(
                source,
                f"{where}.name",
                f"model {name!r} is a {model_dataset} model, data is {dataset}",
            )
        parsed.append({"name": name, "checkpoint": checkpoint})
    return parsed


def _checkpoint_dataset(path: Path) -> str | None:
    from ..models import get_spec
    from ..models.checkpoints import read_checkpoint

    blob = read_checkpoint(path)
    architecture = blob.get("architecture") if isinstance(blob, Mapping) else None
    return None if architecture is None else get_spec(architecture).dataset


def _grid(source: str, where: str, table: Mapping) -> list[dict]:
    """The product of the table's list values (a scalar is a one-value list)."""
    keys, options = [], []
    for key, value in table.items():
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ConfigError(source, f"{where}.{key}", "empty list: the grid would have no point")
        keys.append(key)
        options.append(values)
    return [dict(zip(keys, point)) for point in itertools.product(*options)]


def _accepted_hyperparameters(info: AttackInfo) -> dict[str, inspect.Parameter] | None:
    """The function's keyword hyperparameters (None when it takes ``**kwargs``)."""
    parameters = inspect.signature(info.function).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return None
    return {n: p for n, p in parameters.items() if n not in _NOT_HYPERPARAMETERS}


def _check_value_type(source: str, key: str, value, parameter: inspect.Parameter) -> None:
    """A TOML value must be of the parameter default's type (int accepted for float)."""
    if isinstance(value, (list, dict)):
        raise ConfigError(source, key, f"expected a single value, got {_type_name(value)}")
    default = parameter.default
    if default is inspect.Parameter.empty or default is None:
        kinds, what = (bool, int, float, str), "a number, string or boolean"
    elif isinstance(default, bool):
        kinds, what = (bool,), "a boolean"
    elif isinstance(default, int):
        kinds, what = (int,), "an integer"
    elif isinstance(default, float):
        kinds, what = (int, float), "a number"
    elif isinstance(default, str):
        kinds, what = (str,), "a string"
    else:
        raise ConfigError(source, key, f"cannot be set from a config (default {default!r})")
    _expect(source, key, value, kinds, what)


def _norm_text(source: str, key: str, value) -> str | float | None:
    if value is None:
        return None
    _expect(source, key, value, (int, float, str), "a norm (1, 2, 'inf', or p >= 1)")
    return value


def _target_mode(source: str, key: str, value) -> str:
    if isinstance(value, bool):
        return "random" if value else "untargeted"
    _expect(source, key, value, (str,), f"a boolean or one of {TARGET_MODES}")
    if value not in TARGET_MODES:
        raise ConfigError(source, key, f"unknown targeted mode {value!r} (one of {TARGET_MODES})")
    return value


def _attack_points(source: str, i: int, table, data: dict) -> list[dict]:
    from .runner import resolve_norm

    where = f"attacks[{i}]"
    if not isinstance(table, Mapping):
        raise ConfigError(source, where, "expected a table")
    if "name" not in table:
        raise ConfigError(source, f"{where}.name", "required")
    name = _expect(source, f"{where}.name", table["name"], (str,), "a string")
    try:
        info = get_attack(name)
    except ValueError:
        raise ConfigError(
            source,
            f"{where}.name",
            f"unknown attack {name!r} (known: {', '.join(sorted(ATTACKS))})",
        ) from None
    accepted = _accepted_hyperparameters(info)
    points = []
    for point in _grid(source, where, table):
        hyperparameters = {}
        for key, value in point.items():
            if key in RUN_KEYS:
                continue
            if accepted is not None and key not in accepted:
                raise ConfigError(
                    source,
                    f"{where}.{key}",
                    f"attack {info.name} has no hyperparameter {key!r} "
                    f"(accepted: {', '.join(accepted)})",
                )
            if accepted is not None:
                _check_value_type(source, f"{where}.{key}", value, accepted[key])
            hyperparameters[key] = value
        norm = _norm_text(source, f"{where}.norm", point.get("norm"))
        try:
            resolve_norm(info, norm)
        except (ValueError, TypeError) as error:
            raise ConfigError(source, f"{where}.norm", str(error)) from None
        _check_required(source, where, info, accepted, hyperparameters)
        run = {}
        for key in ("batch_size", "seed"):
            value = _expect(
                source, f"{where}.{key}", point.get(key, data[key]), (int,), "an integer"
            )
            run[key] = value
        if run["batch_size"] < 1:
            raise ConfigError(source, f"{where}.batch_size", "expected an integer >= 1")
        targets = _target_mode(source, f"{where}.targeted", point.get("targeted", False))
        points.append(
            {"attack": info.name, "norm": norm, "targets": targets, "hp": hyperparameters, **run}
        )
    return points


def _check_required(source, where, info: AttackInfo, accepted, hyperparameters) -> None:
    if accepted is None:
        return
    for key, parameter in accepted.items():
        if parameter.default is inspect.Parameter.empty and key not in hyperparameters:
            raise ConfigError(source, f"{where}.{key}", f"required by attack {info.name}")


def parse_config(document: Mapping, source: str = "<config>") -> SweepConfig:
    """Validate a sweep configuration (the parsed TOML) and expand it into jobs.

    Every list value of an ``[[attacks]]`` table is one axis of that attack's grid (the jobs are
    the product of the lists, times the models). Raises :class:`ConfigError` naming ``source``,
    the key and the reason for: a missing or unknown key, an unknown model, dataset or attack, a
    hyperparameter the attack does not take or of the wrong type, a norm the attack does not
    support, an empty list.

    Args:
        document: the configuration as a mapping (``tomllib.load`` output).
        source: the file name used in error messages.
    """
    for key in document:
        if key not in _TOP_LEVEL:
            raise ConfigError(
                source, key, f"unknown table (allowed: {', '.join(sorted(_TOP_LEVEL))})"
            )
    data = _parse_data(source, document.get("data"))
    execution = _parse_execution(source, document.get("execution"))
    models = _parse_models(source, document.get("models"), data["dataset"])
    attacks = document.get("attacks")
    if not isinstance(attacks, list) or not attacks:
        raise ConfigError(source, "attacks", "expected at least one [[attacks]] table")
    points = [p for i, table in enumerate(attacks) for p in _attack_points(source, i, table, data)]
    jobs, seen = [], set()
    for model in models:
        for point in points:
            job = Job(
                model=model["name"],
                checkpoint=model["checkpoint"],
                attack=point["attack"],
                norm=point["norm"],
                targets=point["targets"],
                hyperparameters=point["hp"],
                dataset=data["dataset"],
                split=data["split"],
                n=data["n"],
                batch_size=point["batch_size"],
                seed=point["seed"],
                data_dir=data["data_dir"],
                cpus=execution["cpus_per_task"],
                gpus=execution["gpus_per_task"],
            )
            key = lookup_key(expected_config(job))
            if key not in seen:
                seen.add(key)
                jobs.append(job)
    return SweepConfig(source=source, jobs=jobs, raw=dict(document))


def load_config(path: str | os.PathLike) -> SweepConfig:
    """Read and validate a TOML sweep configuration (see :func:`parse_config`).

    Args:
        path: the TOML file.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(str(path), "-", "no such file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(str(path), "-", f"not valid TOML: {error}") from None
    return parse_config(document, str(path))


# ------------------------------------------------------------------------- job identity


def expected_config(job: Job) -> dict:
    """The configuration ``run_attack`` records for ``job``, but for the targets' fingerprint
    (which the data, the target mode and the seed determine)."""
    from .runner import resolve_norm

    info = get_attack(job.attack)
    p, _ = resolve_norm(info, job.norm)
    return {
        "model": job.model,
        "attack": info.name,
        "norm": norm_name(p),
        "targeted": job.targeted,
        "minimal_norm": bool(info.minimal_norm),
        "hyperparameters": dict(job.hyperparameters),
        "data": job.data_spec(),
        "seed": job.seed,
        "batch_size": job.batch_size,
    }


def lookup_key(config: Mapping) -> str:
    """Canonical JSON of a run configuration without the fields a job cannot know in advance."""
    return config_json({k: v for k, v in config.items() if k not in _IGNORED_IN_KEY})


# ------------------------------------------------------------------------ job execution


def job_device(job: Job) -> torch.device:
    """CUDA when the job asks for GPUs and one is visible (Ray sets CUDA_VISIBLE_DEVICES per
    task), else the CPU."""
    return torch.device("cuda" if job.gpus > 0 and torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=8)
def _load_model(name: str, checkpoint: str | None, device: str = "cpu") -> nn.Module:
    from ..models import get_spec, load
    from ..models.checkpoints import read_checkpoint

    if checkpoint is None:
        return load(name, train_if_missing=False).to(device)
    blob = read_checkpoint(checkpoint)
    state = blob["state_dict"] if "state_dict" in blob else blob
    model = get_spec(blob.get("architecture", name) if "state_dict" in blob else name).build()
    model.load_state_dict(state)
    return model.float().eval().to(device)


@lru_cache(maxsize=4)
def _load_data(dataset: str, split: str, data_dir: str | None):
    from .. import data

    if dataset == "mnist-demo":
        return data.load_demo()
    return data.load_dataset(dataset, split, data_dir)


@lru_cache(maxsize=16)
def _first_correct(job_model: tuple, dataset: str, split: str, data_dir, n: int):
    from ..data import first_correct

    images, labels = _load_data(dataset, split, data_dir)
    chosen_images, chosen_labels, _ = first_correct(_load_model(*job_model), images, labels, n)
    return chosen_images, chosen_labels


class _SeededStore(ResultsStore):
    """An in-memory store that starts a run with the rows the driver already holds, so a worker
    computes only the missing samples (and the driver alone writes the real store)."""

    def __init__(self, seed_rows: Sequence[Mapping] = ()):
        super().__init__(":memory:")
        self.seed_rows = list(seed_rows)
        self.run_id: int | None = None

    def open_run(self, config: Mapping) -> tuple[int, set[int]]:
        run_id, done = super().open_run(config)
        if self.seed_rows and not done:
            self.add_samples(run_id, self.seed_rows)
            done = {int(r["sample_index"]) for r in self.seed_rows}
        self.run_id = run_id
        return run_id, done


def _rows(columns: Mapping[str, np.ndarray]) -> list[dict]:
    """Column arrays to row dicts of Python scalars."""
    count = len(columns["sample_index"])
    return [{c: columns[c][k].item() for c in SAMPLE_COLUMNS} for k in range(count)]


def execute_job(
    job: Job,
    store: ResultsStore | None = None,
    *,
    seed_rows: Sequence[Mapping] = (),
    progress: bool | Callable[..., Any] = False,
) -> dict:
    """Run one job: load its model and data, pick the first n correctly classified images and
    call :func:`advx.evaluation.run_attack` (all-target jobs attack every (image, other class)
    pair, as in Carlini & Wagner 2017, Sec. VI, and add best/average/worst to the summary).

    With ``store`` the rows go there batch by batch (the local executor); without, they go to an
    in-memory store seeded with ``seed_rows`` and the new rows come back in the result (workers).

    Args:
        job: the job.
        store: the results store to write, or None (return the rows instead).
        seed_rows: rows already stored for this job (resume on a worker).
        progress: show run_attack's progress bar over the samples (true/false), or a factory of
            bars (see :func:`advx.evaluation.runner.progress_bar`; Ray workers pass
            :func:`ray_job_progress`).

    Returns:
        ``{"config", "summary", "rows", "images", "seconds"}`` (rows/images: the new ones, only
        without ``store``).
    """
    from .runner import run_attack

    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(job.cpus)))
    try:
        model_key = (job.model, job.checkpoint, str(job_device(job)))
        model = _load_model(*model_key)
        images, labels = _first_correct(model_key, job.dataset, job.split, job.data_dir, job.n)
        targets = job.targets if job.targets in ("random", "next", "all") else None
        local = _SeededStore(seed_rows) if store is None else store
        try:
            result = run_attack(
                model,
                images,
                labels,
                job.attack,
                norm=job.norm,
                targeted=job.targeted,
                targets=targets,
                hyperparameters=job.hyperparameters,
                batch_size=job.batch_size,
                store=local,
                model_name=job.model,
                data_spec=job.data_spec(),
                seed=job.seed,
                progress=progress,
            )
            summary = dict(result.summary)
            out = {
                "config": result.config,
                "summary": summary,
                "run_id": result.run_id if store is not None else None,
                "rows": [],
                "images": [],
            }
            if store is None:
                seeded = {int(r["sample_index"]) for r in seed_rows}
                out["rows"] = [r for r in _rows(result.samples) if r["sample_index"] not in seeded]
                out["images"] = local.images(result.run_id)
        finally:
            if store is None:
                local.close()
    finally:
        torch.set_num_threads(threads)
    out["seconds"] = time.perf_counter() - start
    return out


# ---------------------------------------------------------------------------- the sweep


@dataclass
class JobOutcome:
    """What happened to one job of a sweep."""

    job: Job
    status: str  # "complete", "skipped" (already complete in the store) or "failed"
    run_id: int | None = None
    summary: dict | None = None
    error: str | None = None
    seconds: float = 0.0
    host: str | None = None  # where the job ran (this run; not stored)
    node_id: str | None = None  # the Ray node that ran it (Ray executor)

    @property
    def placement(self) -> str:
        """``host`` and the first 8 hex digits of the Ray node id, or ``"-"`` when unknown."""
        where = " ".join(x for x in (self.host, (self.node_id or "")[:8]) if x)
        return where or "-"


@dataclass
class SweepResult:
    """The outcome of :func:`run_sweep`, one entry per job, in the configuration's order."""

    outcomes: list[JobOutcome]
    db: str

    @property
    def failed(self) -> list[JobOutcome]:
        """The jobs that raised (or whose worker died) on every try."""
        return [o for o in self.outcomes if o.status == "failed"]


class _Driver:
    """Owns the store: finds each job's run, records results, keeps the outcomes."""

    def __init__(
        self, store: ResultsStore, jobs: list[Job], echo: Callable[[str], None], verbose: bool
    ):
        self.store, self.jobs, self.echo, self.verbose = store, jobs, echo, verbose
        self.outcomes: list[JobOutcome | None] = [None] * len(jobs)
        self.runs = {lookup_key(run["config"]): run for run in store.runs()}

    def stored_run(self, job: Job) -> dict | None:
        """The stored run of this job, if any."""
        return self.runs.get(lookup_key(expected_config(job)))

    def pending(self) -> list[int]:
        """Indices of the jobs still to run; finished ones are recorded as skipped."""
        todo = []
        for i, job in enumerate(self.jobs):
            run = self.stored_run(job)
            if run is not None and run["status"] == "complete":
                self.outcomes[i] = JobOutcome(job, "skipped", run["id"], run["summary"])
            else:
                todo.append(i)
        return todo

    def seed_rows(self, job: Job) -> list[dict]:
        """Rows already stored for a half-finished job."""
        run = self.stored_run(job)
        return [] if run is None else _rows(self.store.samples(run["id"]))

    def record(self, i: int, output: dict) -> None:
        """Store a worker's rows and summary (driver only)."""
        run_id, _ = self.store.open_run(output["config"])
        if output["rows"] or output["images"]:
            self.store.add_samples(run_id, output["rows"], output["images"])
        self.store.finish_run(run_id, output["summary"])
        self.complete(i, run_id, output)

    def complete(self, i: int, run_id: int, output: dict) -> None:
        """Record a finished job."""
        outcome = JobOutcome(
            self.jobs[i],
            "complete",
            run_id,
            output["summary"],
            seconds=output["seconds"],
            host=output.get("host"),
            node_id=output.get("node_id"),
        )
        self.outcomes[i] = outcome
        if self.verbose:
            where = f", {outcome.placement}" if outcome.node_id else ""
            self.echo(f"done {self.jobs[i].label()} ({output['seconds']:.1f} s{where})")

    def fail(self, i: int, error: str) -> None:
        """Record a failed job (its stored rows, if any, are kept)."""
        self.outcomes[i] = JobOutcome(self.jobs[i], "failed", error=error)
        self.echo(f"FAILED {self.jobs[i].label()}: {error.strip().splitlines()[-1]}")


def _run_local(driver: _Driver, pending: list[int], bar, progress: bool) -> None:
    """Run the jobs one after the other in this process, writing the store batch by batch."""
    for i in pending:
        job = driver.jobs[i]
        bar.set_postfix_str(job.label()[:60])
        try:
            output = execute_job(job, driver.store, progress=progress)
        except Exception as error:  # a job that raises is reported; the sweep goes on
            driver.fail(i, f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}")
        else:
            driver.store.finish_run(output["run_id"], output["summary"])
            driver.complete(i, output["run_id"], {**output, "host": socket.gethostname()})
        bar.update(1)


def ray_job_progress(job: Job) -> Callable[..., Any]:
    """A factory of per-job progress bars for a Ray worker: ``ray.experimental.tqdm_ray.tqdm``,
    whose state the worker prints as log lines that the driver (``ray.init(log_to_driver=True)``)
    draws as one bar per job, below the sweep's bar.

    Args:
        job: the job (its label is the bar's description).
    """
    from ray.experimental import tqdm_ray

    def make(*, total: int, initial: int, unit: str, desc: str):
        bar = tqdm_ray.tqdm(total=total, unit=unit, desc=job.label()[:48])
        bar.update(initial)  # tqdm_ray has no initial=; this also shows the bar at once
        return bar

    return make


def _ray_execute(job: Job, seed_rows: list[dict], progress: bool = False) -> dict:
    """The body of a Ray task: the job's output, with the host and the Ray node it ran on."""
    import ray

    bars = ray_job_progress(job) if progress else False
    output = execute_job(job, None, seed_rows=seed_rows, progress=bars)
    output["host"] = socket.gethostname()
    output["node_id"] = ray.get_runtime_context().get_node_id()
    return output


def _connect_ray(address: str | None):
    try:
        import ray
    except ImportError:
        raise ValueError("executor='ray' needs Ray: pip install 'advx[ray]'") from None
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        try:
            ray.init(address=address, log_to_driver=True, include_dashboard=False)
        except ConnectionError as error:
            raise ConnectionError(f"{error}{_authentication_hint(error)}") from error
    return ray


def _authentication_hint(error: BaseException) -> str:
    """A hint when connecting failed on Ray's token authentication (on by default for a cluster
    started where ``~/.ray/auth_token`` exists; a driver given an address never turns it on)."""
    causes, cause = [], error
    while cause is not None:
        causes.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    if "AuthToken" not in " ".join(causes) and "Authentication" not in " ".join(causes):
        return ""
    return (
        ": the cluster uses Ray's token authentication; run with RAY_AUTH_MODE=token and the "
        "cluster's token (~/.ray/auth_token or RAY_AUTH_TOKEN), or start the cluster with "
        "RAY_AUTH_MODE=disabled on a trusted network"
    )


def _ray_sweep_bar(total: int, initial: int, progress: bool):
    """The sweep's bar under Ray: a ``tqdm_ray`` bar made on the driver, so that Ray's bar
    manager places it with the workers' per-job bars (a plain tqdm bar would overlap them)."""
    if not progress:
        return tqdm(total=total, initial=initial, disable=True)
    from ray.experimental import tqdm_ray

    bar = tqdm_ray.tqdm(total=total, unit="job", desc="sweep")
    bar.update(initial)
    return bar


def _run_ray(
    driver: _Driver,
    pending: list[int],
    skipped: int,
    address: str | None,
    max_parallel: int | None,
    progress: bool,
) -> None:
    """Submit each job as a Ray task (retried once on an exception or a dead worker); the
    driver writes each returned result into the store as it arrives. With ``progress`` the
    driver shows the sweep's bar and each running task its per-job bar (``tqdm_ray``)."""
    ray = _connect_ray(address)
    bar = _ray_sweep_bar(len(driver.jobs), skipped, progress)
    try:
        _submit_and_collect(ray, driver, pending, bar, max_parallel, progress)
    finally:
        bar.close()


def _submit_and_collect(ray, driver: _Driver, pending, bar, max_parallel, progress) -> None:
    remote = ray.remote(_ray_execute)
    queue = list(pending)
    running: dict = {}
    limit = max_parallel or len(queue) or 1
    while queue or running:
        while queue and len(running) < limit:
            i = queue.pop(0)
            job = driver.jobs[i]
            task = remote.options(
                num_cpus=job.cpus, num_gpus=job.gpus, max_retries=1, retry_exceptions=True
            )
            running[task.remote(job, driver.seed_rows(job), progress)] = i
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            i = running.pop(ref)
            try:
                output = ray.get(ref)
            except Exception as error:  # RayTaskError, WorkerCrashedError, ...
                driver.fail(i, f"{type(error).__name__}: {error}")
            else:
                driver.record(i, output)
            bar.update(1)


def run_sweep(
    config: SweepConfig | Mapping | str | os.PathLike,
    executor: str = "local",
    *,
    db: str | os.PathLike | None = None,
    address: str | None = None,
    max_parallel: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> SweepResult:
    """Run a sweep: every job of the grid once, skipping those already complete in the store
    and resuming half-finished ones from their stored rows.

    ``executor="local"`` runs the jobs one after the other in this process (rows committed per
    batch). ``executor="ray"`` submits each job as a Ray task with the configured CPUs/GPUs, at
    most ``max_parallel`` at a time; a task that raises or whose worker dies is retried once;
    workers return their rows and only this process writes the store, so both executors store
    the same rows. A failed job is reported and the others go on.

    Args:
        config: a :class:`SweepConfig`, a parsed TOML mapping or the path of a TOML file.
        executor: ``"local"`` or ``"ray"``.
        db: results database (default: ``$ADVX_RESULTS`` or ``./advx-results.sqlite``).
        address: Ray cluster address (default: ``$RAY_ADDRESS``, else a new local cluster).
        max_parallel: most jobs in flight at once (Ray; the local executor runs one at a time).
        progress: show the progress bars: the sweep's and each running job's (Ray: the
            workers' bars reach the driver through Ray's log forwarding, ``tqdm_ray``).
        echo: where per-job messages go (default: ``tqdm.write``).

    Returns:
        A :class:`SweepResult`.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    if max_parallel is not None and (not isinstance(max_parallel, int) or max_parallel < 1):
        raise ValueError(f"max_parallel must be an integer >= 1, got {max_parallel!r}")
    if isinstance(config, (str, os.PathLike)):
        config = load_config(config)
    elif not isinstance(config, SweepConfig):
        config = parse_config(config)
    echo = echo or tqdm.write
    with ResultsStore(db) as store:
        driver = _Driver(store, config.jobs, echo, progress)
        pending = driver.pending()
        skipped = len(config.jobs) - len(pending)
        if skipped:
            echo(f"{skipped} of {len(config.jobs)} jobs already complete in {store.path}")
        if executor == "local":
            if max_parallel not in (None, 1):
                echo("--max-parallel applies to the Ray executor; local runs one job at a time")
            bar = tqdm(
                total=len(config.jobs),
                initial=skipped,
                unit="job",
                desc="sweep",
                disable=not progress,
            )
            try:
                _run_local(driver, pending, bar, progress)
            finally:
                bar.close()
        else:
            _run_ray(driver, pending, skipped, address, max_parallel, progress)
        return SweepResult([o for o in driver.outcomes if o is not None], str(store.path))


# ------------------------------------------------------------------------------ reports


def _cell(value, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.4g}"


def _summary_cells(summary: Mapping | None) -> list[str]:
    if not summary:
        return ["-"] * 5
    robust = summary.get("robust_accuracy") or {}
    cells = [
        str(summary.get("n", "-")),
        _cell(summary.get("success_rate"), percent=True),
        _cell((summary.get("norm_stats") or {}).get("median")),
        " ".join(f"{eps:g}:{_cell(acc, True)}" for eps, acc in list(robust.items())[:3]) or "-",
        _cell(summary.get("seconds_per_sample")),
    ]
    cases = summary.get("target_cases")
    if cases:
        cells[1] = " / ".join(
            _cell(cases[c]["success_rate"], True) for c in ("best", "average", "worst")
        )
        norm = summary.get("norm")
        cells[2] = " / ".join(_cell(cases[c].get(norm)) for c in ("best", "average", "worst"))
    return cells


def summary_table(result: SweepResult) -> str:
    """Fixed-width table of a sweep: one line per job (for all-target jobs the success and norm
    columns read best / average / worst, the norm then being the mean over successes; a Ray
    sweep adds where each job ran: host and Ray node id)."""
    header = ["job", "status", "n", "success", "median norm", "robust acc @eps", "s/sample"]
    lines = [[o.job.label(), o.status, *_summary_cells(o.summary)] for o in result.outcomes]
    if any(o.node_id for o in result.outcomes):
        header.append("ran on")
        for line, outcome in zip(lines, result.outcomes):
            line.append(outcome.placement)
    widths = [max(len(r[c]) for r in [header, *lines]) for c in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in [header, *lines]]
    return "\n".join(text)


def failure_report(result: SweepResult) -> str:
    """The failed jobs, one per line, with the error's last line."""
    return "\n".join(
        f"  {o.job.label()}: {(o.error or '').strip().splitlines()[-1] if o.error else ''}"
        for o in result.failed
    )


def _json_safe(value):
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def runs_json(runs: Iterable[Mapping]) -> str:
    """Every run (id, key, configuration, status, summary) as strict JSON (NaN -> null, inf ->
    "inf"; robust-accuracy keys as strings), for scripts and for comparing two databases.

    Args:
        runs: ``ResultsStore.runs()``.
    """
    return json.dumps([_json_safe(dict(run)) for run in runs], indent=2, allow_nan=False)


__all__ = [
    "ConfigError",
    "Job",
    "JobOutcome",
    "SweepConfig",
    "SweepResult",
    "execute_job",
    "expected_config",
    "failure_report",
    "load_config",
    "parse_config",
    "ray_job_progress",
    "run_sweep",
    "runs_json",
    "summary_table",
]
