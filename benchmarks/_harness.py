"""What every benchmark script shares: the common command-line options, the choice of images
(the first n correctly classified test images, as the papers evaluate and as ``advx bench``
selects them, so a script's own rows and its sweep rows attack the same images), and
one measured row per attack run through the evaluation runner (``run_attack``: counting model,
fresh re-check of every example, per-batch timing), kept in the scripts' one results format
(``_results.Results``: append-only jsonl keyed by the row's own fields, so a rerun resumes).
Where a paper's table is a grid (``benchmarks/configs/*.toml``), ``run_grid`` runs it as a sweep
into the SQLite results store (with the script's options: ``grid_config``; ``sweep_rows`` also
reads each run back), and the script builds its figures from the stored runs, the same figures
as ``measure`` gives (``run_figures``)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from _results import Results

from advx.data import first_correct, load_dataset
from advx.evaluation.bench import (
    EXECUTORS,
    SweepConfig,
    SweepResult,
    failure_report,
    load_config,
    parse_config,
    run_sweep,
)
from advx.evaluation.runner import run_attack
from advx.evaluation.store import ResultsStore
from advx.models import get_spec, load, model_path
from advx.models.checkpoints import BUNDLED, read_checkpoint
from advx.sources import is_user_model, load_user_model

EVALUATED_TEST_IMAGES = 1000


def parser(doc: str, *, models: list[str], n: int, out: str, batch: int = 100, threads: int = 1):
    """An argument parser with the options every script takes: ``--models``, ``--n``,
    ``--batch-size``, ``--threads``, ``--data-dir`` and ``--out`` (defaults given here)."""
    p = argparse.ArgumentParser(
        description=doc.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=models,
        help="zoo models (trained already), or file.py:factory for a model outside the zoo",
    )
    p.add_argument("--weights", default=None, help="state dict of a file.py:factory model")
    p.add_argument(
        "--dataset",
        default="mnist",
        choices=("mnist", "cifar10"),
        help="the data of a model outside the zoo (zoo models know theirs)",
    )
    p.add_argument("--n", type=int, default=n, help="first N correctly classified test images")
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--threads", type=int, default=threads, help="torch threads")
    p.add_argument("--data-dir", default=None, help="data directory (else $ADVX_DATA)")
    p.add_argument("--out", default=out, help="results folder (a rerun resumes from it)")
    return p


def setup(args: argparse.Namespace, key: Callable[[dict], object] | None = None) -> Results:
    """Set the thread count, create the results folder and open its results file
    (``<out>/results.jsonl``; ``--out`` naming a ``.jsonl`` file is that file itself, the layout
    of older runs). ``key``: as in ``Results`` (none: rows stored with ``add`` under their key)."""
    torch.set_num_threads(args.threads)
    path = results_path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Results(path, key=key)


def results_path(out: str | Path) -> Path:
    """The rows file of ``--out``: ``<out>/results.jsonl``, or ``out`` itself when it names a
    ``.jsonl`` file (stored rows kept in the repository under docs/results/runs/)."""
    out = Path(out)
    return out if out.suffix == ".jsonl" else out / "results.jsonl"


def load_model(
    model_name: str, data_dir: str | None = None, *, weights=None, dataset: str = "mnist"
) -> tuple[torch.nn.Module, str]:
    """A zoo model (never trained here: ``advx train NAME`` first), or a model outside the zoo
    given as ``file.py:factory`` with its ``weights`` (``advx.sources``), with its dataset."""
    if is_user_model(model_name):
        return load_user_model(model_name, weights).model, dataset
    return load(model_name, data_dir, train_if_missing=False), get_spec(model_name).dataset


def evaluation_images(
    model_name: str, n: int, data_dir: str | None = None, *, weights=None, dataset="mnist"
):
    """The model (:func:`load_model`) and its first ``n`` correctly classified test images, with
    their labels: the images an ``advx bench`` sweep with ``data.n = n`` attacks."""
    model, dataset = load_model(model_name, data_dir, weights=weights, dataset=dataset)
    x, y, _ = correct_test_images(model, dataset, n, data_dir)
    return model, x, y


def correct_test_images(model, dataset: str, n: int, data_dir: str | None = None):
    """The first ``n`` test images of ``dataset`` that ``model`` (already loaded: e.g. one outside
    the zoo's cache) classifies correctly, with their labels and their indices in the test split:
    the selection of :func:`evaluation_images`."""
    images, labels = load_dataset(dataset, "test", data_dir)
    return first_correct(model, images, labels, n)


def first_test_images(model_name: str, n: int, data_dir: str | None = None):
    """The model (never trained here) and its first ``n`` test images with their labels,
    correctly classified or not: for measures that count clean errors (robust accuracy of
    several models on the same images) or models without classes (a regressor)."""
    model = load(model_name, data_dir, train_if_missing=False)
    images, labels = load_dataset(get_spec(model_name).dataset, "test", data_dir)
    return model, images[:n], labels[:n]


def recorded_test_accuracy(model_name: str) -> float | None:
    """The test accuracy stored with a cached or bundled model (measured on the whole test
    split when it was trained), if any."""
    for path in (model_path(model_name), BUNDLED.get(model_name)):
        if path is not None and Path(path).is_file():
            metrics = read_checkpoint(path).get("metrics") or {}
            if "test_accuracy" in metrics:
                return float(metrics["test_accuracy"])
    return None


def run(model, x, y, attack, *, norm=None, hyperparameters=None, batch=100, **keywords):
    """Run ``attack`` (a registry name or a function) through ``run_attack`` without a progress
    bar (``keywords``: its other keywords, e.g. ``targeted``, ``targets``, ``epsilons``) and return
    its ``RunResult`` (summary, per-sample columns, examples), for scripts that read more than
    ``measure``'s figures (per-image rows, ``target_cases``)."""
    return run_attack(
        model,
        x,
        y,
        attack,
        norm=norm,
        hyperparameters=hyperparameters or {},
        batch_size=batch,
        progress=False,
        **keywords,
    )


def measure(model, x, y, attack, *, norm=None, hyperparameters=None, batch=100, **keywords) -> dict:
    """Run ``attack`` through ``run_attack`` (:func:`run`) and return the figures the tables
    quote (``run_figures``)."""
    result = run(
        model, x, y, attack, norm=norm, hyperparameters=hyperparameters, batch=batch, **keywords
    )
    return run_figures(result.summary, result.samples)


def run_grid(
    config: str | Path,
    *,
    models: list[str],
    n: int,
    db: str | Path,
    data_dir: str | None = None,
    executor: str = "local",
    progress: bool = False,
    address: str | None = None,
    max_parallel: int | None = None,
    **changes,
) -> SweepResult:
    """Run the grid of a sweep config (``advx bench``'s TOML format) with its ``data.n`` and
    ``[[models]]`` replaced by ``n`` and ``models`` (and ``data.data_dir`` by ``data_dir`` when
    given; ``changes``: the other keywords of ``grid_config``), through
    ``advx.evaluation.bench.run_sweep`` (``executor``, ``address``, ``max_parallel``) into the
    SQLite store ``db``: a rerun skips the finished jobs and resumes a half-finished one. Returns
    the ``SweepResult`` (one outcome per job, each with its stored ``run_id`` and summary); exits
    listing the failed jobs if any failed (the other jobs' runs stay stored)."""
    sweep = grid_config(config, models=models, n=n, data_dir=data_dir, **changes)
    result = run_sweep(
        sweep,
        executor=executor,
        db=db,
        address=address,
        max_parallel=max_parallel,
        progress=progress,
    )
    if result.failed:
        raise SystemExit(f"{len(result.failed)} sweep jobs failed:\n{failure_report(result)}")
    return result


# ------------------------------------------------------------------- figures of a stored run


def run_figures(summary: Mapping, samples: Mapping[str, np.ndarray]) -> dict:
    """The figures the tables quote, from a run's summary and per-sample columns (those of
    ``run_attack``'s result or of ``ResultsStore.samples``): clean accuracy, success, median and
    mean norm over successes, seconds, gradients and forward passes per image, robust accuracy
    ({eps: accuracy}, as in the summary), and the relative norm rho_p = ||delta||_p / ||x||_p
    (column ``rel_<norm>``; NaN for a norm without one) averaged, median and worst over the
    same successes (correctly classified inputs only)."""
    counted = samples["success"].astype(bool) & (samples["clean_pred"] == samples["label"])
    column = samples.get(f"rel_{summary['norm']}")
    rho = np.array([]) if column is None else column[counted]
    return {
        "norm": summary["norm"],
        "clean_accuracy": summary["clean_accuracy"],
        "success": summary["success_rate"],
        "median": summary["norm_stats"]["median"],
        "mean": summary["norm_stats"]["mean"],
        "relative_mean": float(rho.mean()) if rho.size else math.nan,
        "relative_median": float(np.median(rho)) if rho.size else math.nan,
        "relative_worst": float(rho.max()) if rho.size else math.nan,
        "seconds_per_image": summary["seconds_per_sample"],
        "gradients_per_image": summary["backwards_per_sample"],
        "forwards_per_image": summary["forwards_per_sample"],
        "robust_accuracy": summary["robust_accuracy"],
        "warnings": summary.get("warnings", []),
    }


# ------------------------------------------------------------ grid rows with the script's options


def sweep_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of scripts whose grid rows run as an ``advx bench`` sweep
    (``sweep_rows``): ``--executor local|ray``, ``--address`` and ``--max-parallel``."""
    p.add_argument("--executor", choices=EXECUTORS, default="local", help="sweep executor")
    p.add_argument("--address", default=None, help="Ray cluster address (else $RAY_ADDRESS)")
    p.add_argument("--max-parallel", type=int, default=None, help="most Ray jobs at once")
    return p


def grid_config(
    config: str | Path,
    *,
    models: Sequence[str],
    n: int,
    data_dir: str | None = None,
    batch_size: int | None = None,
    cpus: float | None = None,
    overrides: Mapping[str, Mapping] | None = None,
    drop: Iterable[str] = (),
) -> SweepConfig:
    """The sweep of the TOML file ``config`` with ``data.n`` = ``n``, the ``[[models]]`` =
    ``models``, and, when given, ``data.data_dir``, ``data.batch_size`` and the CPUs per job
    (``execution.cpus_per_task``); ``overrides`` maps an attack name to values that replace, in
    each of its ``[[attacks]]`` tables, the keys the table already sets (a list value is a grid
    axis); the attacks named in ``drop`` are removed.

    Args:
        config: the configuration file (e.g. ``benchmarks/configs/...toml``).
        models: the zoo models.
        n: the number of images (the first n correctly classified).
        data_dir: the data directory, if not the file's.
        batch_size: the batch size, if not the file's.
        cpus: torch threads per job (a Ray task's CPUs), if not the file's.
        overrides: ``{attack name: {key: value}}``, e.g. smaller budgets for a smoke run.
        drop: attack names left out.
    """
    document = load_config(config).raw
    data = dict(document["data"], n=n) | ({"data_dir": data_dir} if data_dir else {})
    data |= {} if batch_size is None else {"batch_size": batch_size}
    execution = dict(document.get("execution", {}))
    execution |= {} if cpus is None else {"cpus_per_task": cpus}
    attacks = [dict(t) for t in document["attacks"] if t["name"] not in set(drop)]
    for table in attacks:
        changes = (overrides or {}).get(table["name"], {})
        table.update({key: value for key, value in changes.items() if key in table})
    document = document | {
        "data": data,
        "execution": execution,
        "models": [{"name": name} for name in models],
        "attacks": attacks,
    }
    return parse_config(document, str(config))


def sweep_rows(
    config: str | Path,
    args: argparse.Namespace,
    models: Sequence[str],
    *,
    n: int | None = None,
    overrides: Mapping[str, Mapping] | None = None,
    drop: Iterable[str] = (),
) -> list[dict]:
    """Run the grid of ``config`` for ``models`` with the script's options (``run_grid``: ``n``
    or ``args.n`` images, ``args.batch_size``, ``args.threads`` per job, ``args.data_dir``, and
    ``overrides`` / ``drop`` as in ``grid_config``) into ``<args.out>/sweep.sqlite`` (executor
    ``args.executor``, from ``sweep_options``; local when absent) and return one entry per job,
    in the configuration's order: ``{"job", "status", "run_id", "summary", "samples",
    "figures"}``, the summary and per-sample columns read back from the store and ``figures`` =
    ``run_figures`` of them.

    Args:
        config: the configuration file.
        args: the parsed options of ``parser()`` (and ``sweep_options``).
        models: the zoo models (all of the config's dataset).
        n: the number of images, if not ``args.n``.
        overrides: ``{attack name: {key: value}}`` (``grid_config``).
        drop: attack names left out.
    """
    result = run_grid(
        config,
        models=list(models),
        n=args.n if n is None else n,
        db=Path(args.out) / "sweep.sqlite",
        data_dir=args.data_dir,
        executor=getattr(args, "executor", "local"),
        progress=True,
        address=getattr(args, "address", None),
        max_parallel=getattr(args, "max_parallel", None),
        batch_size=args.batch_size,
        cpus=args.threads,
        overrides=overrides,
        drop=drop,
    )
    rows = []
    with ResultsStore(result.db) as store:
        runs = {run["id"]: run for run in store.runs()}
        for outcome in result.outcomes:
            run = runs[outcome.run_id]
            samples = store.samples(run["id"])
            rows.append(
                {
                    "job": outcome.job,
                    "status": outcome.status,
                    "run_id": run["id"],
                    "summary": run["summary"],
                    "samples": samples,
                    "figures": run_figures(run["summary"], samples),
                }
            )
    return rows


def require_zoo_models(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Stop with a usage error when ``--models`` names a model outside the zoo
    (``file.py:factory``): the grid rows of ``sweep_rows`` run as ``advx bench`` jobs, which
    load zoo models by name.

    Args:
        p: the script's parser (for the error).
        args: its parsed options.
    """
    outside = [name for name in args.models if is_user_model(name)]
    if outside:
        p.error(f"--models {' '.join(outside)}: this script takes zoo models only")
