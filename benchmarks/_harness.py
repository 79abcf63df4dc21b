"""What every benchmark script shares: the common command-line options, the choice of images
(the first n correctly classified of the first 1,000 test images, as the papers evaluate), and
one measured row per attack run through the evaluation runner (``run_attack``: counting model,
fresh re-check of every example, per-batch timing), kept in the scripts' one results format
(``_results.Results``: append-only jsonl keyed by the row's own fields, so a rerun resumes).
Rows that a grid expresses run instead as an ``advx bench`` sweep of a config under
``benchmarks/configs/`` (``sweep_config``, ``sweep_rows``: resumable through the SQLite store)
and are read back from the store with the same figures (``run_figures``)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from _results import Results

from advx.data import first_correct, load_dataset
from advx.evaluation.bench import (
    EXECUTORS,
    SweepConfig,
    failure_report,
    parse_config,
    run_sweep,
)
from advx.evaluation.runner import run_attack
from advx.evaluation.store import ResultsStore

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib
from advx.models import get_spec, load

EVALUATED_TEST_IMAGES = 1000


def parser(doc: str, *, models: list[str], n: int, out: str, batch: int = 100, threads: int = 1):
    """An argument parser with the options every script takes: ``--models``, ``--n``,
    ``--batch-size``, ``--threads``, ``--data-dir`` and ``--out`` (defaults given here)."""
    p = argparse.ArgumentParser(
        description=doc.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=models, help="zoo models (trained already)")
    p.add_argument("--n", type=int, default=n, help="first N correctly classified test images")
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--threads", type=int, default=threads, help="torch threads")
    p.add_argument("--data-dir", default=None, help="data directory (else $ADVX_DATA)")
    p.add_argument("--out", default=out, help="results folder (a rerun resumes from it)")
    return p


def setup(args: argparse.Namespace, key: Callable[[dict], object]) -> Results:
    """Set the thread count, create the results folder and open its results file."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return Results(out / "results.jsonl", key=key)


def evaluation_images(model_name: str, n: int, data_dir: str | None = None):
    """The model (never trained here: ``advx train NAME`` first) and its first ``n`` correctly
    classified images among the first 1,000 test images, with their labels."""
    model = load(model_name, data_dir, train_if_missing=False)
    images, labels = load_dataset(get_spec(model_name).dataset, "test", data_dir)
    x, y, _ = first_correct(
        model, images[:EVALUATED_TEST_IMAGES], labels[:EVALUATED_TEST_IMAGES], n
    )
    return model, x, y


def measure(model, x, y, attack, *, norm=None, hyperparameters=None, batch=100, **run) -> dict:
    """Run ``attack`` (a registry name or a function) through ``run_attack`` and return the
    figures the tables quote (``run_figures``)."""
    result = run_attack(
        model,
        x,
        y,
        attack,
        norm=norm,
        hyperparameters=hyperparameters or {},
        batch_size=batch,
        progress=False,
        **run,
    )
    return run_figures(result.summary, result.samples)


# ------------------------------------------------------------------- figures of a stored run


def run_figures(summary: Mapping, samples: Mapping[str, np.ndarray]) -> dict:
    """The figures the tables quote, from a run's summary and per-sample columns (those of
    ``run_attack``'s result or of ``ResultsStore.samples``): success, median and mean norm over
    successes, seconds, gradients and forward passes per image, and the relative norm
    rho_p = ||delta||_p / ||x||_p (column ``rel_<norm>``; NaN for a norm without one) averaged,
    median and worst over the same successes (correctly classified inputs only)."""
    counted = samples["success"].astype(bool) & (samples["clean_pred"] == samples["label"])
    column = samples.get(f"rel_{summary['norm']}")
    rho = np.array([]) if column is None else column[counted]
    return {
        "norm": summary["norm"],
        "success": summary["success_rate"],
        "median": summary["norm_stats"]["median"],
        "mean": summary["norm_stats"]["mean"],
        "relative_mean": float(rho.mean()) if rho.size else math.nan,
        "relative_median": float(np.median(rho)) if rho.size else math.nan,
        "relative_worst": float(rho.max()) if rho.size else math.nan,
        "seconds_per_image": summary["seconds_per_sample"],
        "gradients_per_image": summary["backwards_per_sample"],
        "forwards_per_image": summary["forwards_per_sample"],
        "warnings": summary.get("warnings", []),
    }


# ------------------------------------------------------------- grid rows through advx bench


def sweep_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of scripts whose grid rows run as an ``advx bench`` sweep
    (``sweep_rows``): ``--executor local|ray``, ``--address`` and ``--max-parallel``."""
    p.add_argument("--executor", choices=EXECUTORS, default="local", help="sweep executor")
    p.add_argument("--address", default=None, help="Ray cluster address (else $RAY_ADDRESS)")
    p.add_argument("--max-parallel", type=int, default=None, help="most Ray jobs at once")
    return p


def sweep_config(
    path: str | Path,
    args: argparse.Namespace,
    *,
    n: int | None = None,
    models: Sequence[str] | None = None,
    overrides: Mapping[str, Mapping] | None = None,
    drop: Iterable[str] = (),
) -> SweepConfig:
    """The sweep of the TOML file ``path`` with the script's options applied: ``data.n`` =
    ``n`` (default ``args.n``), ``data.batch_size`` = ``args.batch_size``, ``data.data_dir`` =
    ``args.data_dir`` when given, the CPUs per job = ``args.threads``, the ``[[models]]`` =
    ``models`` when given; ``overrides`` maps an attack name to values that replace, in each of
    its ``[[attacks]]`` tables, the keys the table already sets (a list value is a grid axis);
    the attacks named in ``drop`` are removed.

    Args:
        path: the configuration file (e.g. ``benchmarks/configs/...toml``).
        args: the parsed options of ``parser()`` (``n``, ``batch_size``, ``threads``,
            ``data_dir``).
        n: the number of images, if not ``args.n``.
        models: the zoo models, if not the file's.
        overrides: ``{attack name: {key: value}}``, e.g. smaller budgets for a smoke run.
        drop: attack names left out.
    """
    with Path(path).open("rb") as handle:
        document = tomllib.load(handle)
    document["data"] = {**document.get("data", {}), "n": args.n if n is None else n}
    document["data"]["batch_size"] = args.batch_size
    if args.data_dir is not None:
        document["data"]["data_dir"] = args.data_dir
    document["execution"] = {**document.get("execution", {}), "cpus_per_task": args.threads}
    if models is not None:
        document["models"] = [{"name": name} for name in models]
    attacks = [dict(t) for t in document.get("attacks", []) if t.get("name") not in set(drop)]
    for table in attacks:
        changes = (overrides or {}).get(table.get("name"), {})
        table.update({key: value for key, value in changes.items() if key in table})
    document["attacks"] = attacks
    return parse_config(document, str(path))


def sweep_rows(config: SweepConfig, args: argparse.Namespace, db: str | Path | None = None):
    """Run ``config`` with ``advx.evaluation.bench.run_sweep`` (executor ``args.executor``;
    the database ``<args.out>/sweep.sqlite`` unless ``db``: finished jobs are skipped, a
    half-finished one resumes from its stored rows) and return one entry per job, in the
    configuration's order: ``{"job", "status", "run_id", "summary", "samples", "figures"}``,
    the summary and per-sample columns read back from the store and ``figures`` =
    ``run_figures`` of them (``run_id``, ``summary``, ``samples`` and ``figures`` None for a
    failed job, whose error is printed).

    Args:
        config: the sweep (``sweep_config``).
        args: the parsed options (``out``, and ``executor``, ``address``, ``max_parallel`` from
            ``sweep_options``, local when absent).
        db: the results database, if not ``<args.out>/sweep.sqlite``.
    """
    db = Path(args.out) / "sweep.sqlite" if db is None else Path(db)
    result = run_sweep(
        config,
        executor=getattr(args, "executor", "local"),
        db=db,
        address=getattr(args, "address", None),
        max_parallel=getattr(args, "max_parallel", None),
        progress=getattr(args, "progress", True),
    )
    if result.failed:
        print(f"{len(result.failed)} job(s) of {config.source} failed:\n{failure_report(result)}")
    rows = []
    with ResultsStore(result.db) as store:
        runs = {run["id"]: run for run in store.runs()}
        for outcome in result.outcomes:
            run = runs.get(outcome.run_id) if outcome.status != "failed" else None
            samples = None if run is None else store.samples(run["id"])
            rows.append(
                {
                    "job": outcome.job,
                    "status": outcome.status,
                    "run_id": None if run is None else run["id"],
                    "summary": None if run is None else run["summary"],
                    "samples": samples,
                    "figures": None if run is None else run_figures(run["summary"], samples),
                }
            )
    return rows
