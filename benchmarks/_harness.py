"""What every benchmark script shares: the common command-line options, the choice of images
(the first n correctly classified of the first 1,000 test images, as the papers evaluate), and
one measured row per attack run through the evaluation runner (``run_attack``: counting model,
fresh re-check of every example, per-batch timing), kept in the scripts' one results format
(``_results.Results``: append-only jsonl keyed by the row's own fields, so a rerun resumes).
Where a paper's table is a grid (``benchmarks/configs/*.toml``), ``run_grid`` runs it as a sweep
into the SQLite results store, and the script builds its figures from the stored runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from _results import Results

from advx.data import first_correct, load_dataset
from advx.evaluation.bench import failure_report, load_config, parse_config, run_sweep
from advx.evaluation.runner import run_attack
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


def setup(args: argparse.Namespace, key: Callable[[dict], object]) -> Results:
    """Set the thread count, create the results folder and open its results file."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return Results(out / "results.jsonl", key=key)


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
    """The model (:func:`load_model`) and its first ``n`` correctly classified images among the
    first 1,000 test images, with their labels."""
    model, dataset = load_model(model_name, data_dir, weights=weights, dataset=dataset)
    images, labels = load_dataset(dataset, "test", data_dir)
    x, y, _ = first_correct(
        model, images[:EVALUATED_TEST_IMAGES], labels[:EVALUATED_TEST_IMAGES], n
    )
    return model, x, y


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


def measure(model, x, y, attack, *, norm=None, hyperparameters=None, batch=100, **run) -> dict:
    """Run ``attack`` (a registry name or a function) through ``run_attack`` (``run``: its other
    keywords, e.g. ``epsilons``) and return the figures the tables quote: clean accuracy,
    success, median and mean norm over successes, seconds, gradients and forward passes per
    image, robust accuracy ({eps: accuracy}, as in the run's summary)."""
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
    s = result.summary
    return {
        "norm": s["norm"],
        "clean_accuracy": s["clean_accuracy"],
        "success": s["success_rate"],
        "median": s["norm_stats"]["median"],
        "mean": s["norm_stats"]["mean"],
        "seconds_per_image": s["seconds_per_sample"],
        "gradients_per_image": s["backwards_per_sample"],
        "forwards_per_image": s["forwards_per_sample"],
        "robust_accuracy": s["robust_accuracy"],
        "warnings": s.get("warnings", []),
    }


def run_grid(
    config: str | Path,
    *,
    models: list[str],
    n: int,
    db: str | Path,
    data_dir: str | None = None,
    executor: str = "local",
    progress: bool = False,
):
    """Run the grid of a sweep config (``advx bench``'s TOML format) with its ``data.n`` and
    ``[[models]]`` replaced by ``n`` and ``models`` (and ``data.data_dir`` by ``data_dir`` when
    given), through ``advx.evaluation.bench.run_sweep`` into the SQLite store ``db``: a rerun
    skips the finished jobs and resumes a half-finished one. Returns the ``SweepResult`` (one
    outcome per job, each with its stored ``run_id`` and summary); exits listing the failed jobs
    if any failed (the other jobs' runs stay stored)."""
    document = load_config(config).raw
    data = dict(document["data"], n=n) | ({"data_dir": data_dir} if data_dir else {})
    document = document | {"data": data, "models": [{"name": name} for name in models]}
    result = run_sweep(
        parse_config(document, str(config)), executor=executor, db=db, progress=progress
    )
    if result.failed:
        raise SystemExit(f"{len(result.failed)} sweep jobs failed:\n{failure_report(result)}")
    return result
