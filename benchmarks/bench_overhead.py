"""Overhead of ``advx bench`` (``advx.evaluation.bench.run_sweep``).

A. Local executor vs a plain loop: the same jobs (DDN and ANU on mnist-cnn, ``--a-jobs`` of
   them, ``--a-n`` images and ``--a-steps`` steps each) run by ``run_sweep(executor="local")``
   and by a loop that loads the model and the data once, picks the first n correctly
   classified images and calls ``run_attack`` per job with the same store settings. Each repeat
   uses a fresh database and starts from cold caches in both; the two alternate in order.
   Target: the executor costs at most 3% more (median over ``--a-repeats``).
B. Ray vs local: 12 jobs of about 10 s each (``--b-n`` images, ``--b-steps`` steps) run by the
   local executor, by the Ray executor on a local cluster (``ray.init(num_cpus=2)``, one CPU per
   task, two tasks at once) and by Ray one task at a time (``--max-parallel 1``: its
   per-task cost alone), rotated in order, ``--b-repeats`` times. The cluster is started once
   (its start-up time is reported apart). Target: Ray at most 15% slower than local.

Rows go to ``<out>/bench_overhead.jsonl`` as they are measured (a rerun resumes); the Markdown
``docs/results/bench.md`` is written from them.

    python benchmarks/bench_overhead.py --out results/bench_overhead

Not on the benchmark harness's parser and selection (``_harness``): the plain loop of part A is
the baseline the executor is measured against, so it loads the model and the data and picks the
first n correct images by hand, as ``run_sweep`` does internally; and the sizes are per part
(``--a-n``, ``--b-n``) rather than one ``--n``. Its rows are the same ``_results.Results`` jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _results import Results

from advx import data, models
from advx.evaluation import ResultsStore, run_attack
from advx.evaluation import bench as bench_module
from advx.evaluation.bench import run_sweep

MODEL = "mnist-cnn"
DOC = Path(__file__).resolve().parent.parent / "docs" / "results" / "bench.md"


def sweep_config(jobs: int, n: int, steps: int) -> dict:
    """``jobs`` DDN/ANU jobs (gamma / gamma0 varied) on the first n correct MNIST test images."""
    half = jobs // 2
    gammas = [round(0.03 + 0.01 * k, 3) for k in range(jobs - half)]
    gamma0s = [round(0.2 + 0.05 * k, 3) for k in range(half)]
    return {
        "data": {"dataset": "mnist", "split": "test", "n": n, "batch_size": n},
        "models": [{"name": MODEL}],
        "attacks": [
            {"name": "ddn", "steps": steps, "gamma": gammas},
            {"name": "anu", "steps": steps, "gamma0": gamma0s},
        ],
    }


def clear_caches() -> None:
    """Forget the executor's cached models and data (a cold start, as for the plain loop)."""
    for cache in (bench_module._load_model, bench_module._load_data, bench_module._first_correct):
        cache.cache_clear()


def plain_loop(config: dict, db: Path) -> float:
    """Seconds for the jobs run by hand: load once, then run_attack per job."""
    start = time.perf_counter()
    spec = config["data"]
    model = models.load(MODEL, train_if_missing=False)
    images, labels = data.load_dataset(spec["dataset"], spec["split"])
    images, labels, _ = data.first_correct(model, images, labels, spec["n"])
    with ResultsStore(db) as store:
        for job in bench_module.parse_config(config).jobs:
            run_attack(
                model,
                images,
                labels,
                job.attack,
                hyperparameters=job.hyperparameters,
                batch_size=job.batch_size,
                store=store,
                model_name=job.model,
                data_spec=job.data_spec(),
                seed=job.seed,
                progress=False,
            )
    return time.perf_counter() - start


def through_sweep(config: dict, db: Path, executor: str, max_parallel: int | None = None) -> float:
    """Seconds for ``run_sweep`` on a fresh database."""
    start = time.perf_counter()
    result = run_sweep(
        config, executor=executor, db=db, max_parallel=max_parallel, progress=False, echo=print
    )
    seconds = time.perf_counter() - start
    if result.failed:
        raise RuntimeError(f"failed jobs: {[o.job.label() for o in result.failed]}")
    return seconds


def _loop_against_local(
    part: str, config: dict, repeats: int, tag: str, results: Results, folder: Path, digits: int
) -> None:
    """Time the plain loop and the local executor on ``config``, alternating their order from one
    repeat to the next, each on a fresh database from cold caches; rows keyed
    ``part|variant|repeat`` + ``tag``."""
    for repeat in range(repeats):
        order = ("loop", "local") if repeat % 2 == 0 else ("local", "loop")
        for variant in order:
            key = f"{part}|{variant}|{repeat}{tag}"
            if key in results:
                continue
            db = folder / f"{part.lower()}-{variant}-{repeat}.sqlite"
            clear_caches()
            seconds = (
                plain_loop(config, db) if variant == "loop" else through_sweep(config, db, "local")
            )
            results.add(
                key, {"part": part, "variant": variant, "repeat": repeat, "seconds": seconds}
            )
            print(f"{part} repeat {repeat} {variant:6s} {seconds:8.{digits}f} s", flush=True)


def part_a(args, results: Results, folder: Path) -> None:
    config = sweep_config(args.a_jobs, args.a_n, args.a_steps)
    tag = f"|{args.a_jobs}|{args.a_n}|{args.a_steps}"
    _loop_against_local("A", config, args.a_repeats, tag, results, folder, digits=2)


def part_c(args, results: Results, folder: Path) -> None:
    """The executor's bookkeeping alone: many near-empty jobs (FGM on 2 images), so the
    difference to the plain loop is per-job cost, not attack time (less exposed to noise)."""
    config = {
        "data": {"dataset": "mnist", "split": "test", "n": 2},
        "models": [{"name": MODEL}],
        "attacks": [
            {"name": "fgm", "norm": "inf", "eps": [round(0.01 * k, 2) for k in range(1, 25)]}
        ],
    }
    _loop_against_local("C", config, args.c_repeats, "", results, folder, digits=3)


B_VARIANTS = {"local": ("local", None), "ray": ("ray", None), "ray serial": ("ray", 1)}


def part_b(args, results: Results, folder: Path) -> None:
    import ray

    start = time.perf_counter()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - start
    print(f"B Ray local cluster started in {startup:.2f} s", flush=True)
    results.add(f"B|startup|{time.time()}", {"part": "B", "variant": "startup", "seconds": startup})
    start = time.perf_counter()
    through_sweep(sweep_config(2, 2, 2), folder / "warm-up.sqlite", "ray")
    warmup = time.perf_counter() - start
    print(f"B Ray worker warm-up (2 tiny jobs on fresh workers) {warmup:.2f} s", flush=True)
    results.add(f"B|warm-up|{time.time()}", {"part": "B", "variant": "warm-up", "seconds": warmup})
    config = sweep_config(12, args.b_n, args.b_steps)
    names = list(B_VARIANTS)
    for repeat in range(args.b_repeats):
        order = names[repeat % 3 :] + names[: repeat % 3]
        for variant in order:
            key = f"B|{variant}|{repeat}|{args.b_n}|{args.b_steps}"
            if key in results:
                continue
            executor, parallel = B_VARIANTS[variant]
            db = folder / f"b-{variant.replace(' ', '-')}-{repeat}.sqlite"
            seconds = through_sweep(config, db, executor, parallel)
            results.add(
                key, {"part": "B", "variant": variant, "repeat": repeat, "seconds": seconds}
            )
            print(f"B repeat {repeat} {variant:10s} {seconds:8.2f} s", flush=True)
    ray.shutdown()


def _median(results: Results, part: str, variant: str) -> tuple[float, list[float]]:
    values = [
        r["seconds"] for r in results.values() if r["part"] == part and r["variant"] == variant
    ]
    return (statistics.median(values) if values else float("nan")), values


def _paired(results: Results, part: str, variant: str, baseline: str) -> list[float]:
    """Per-repeat ratios variant / baseline (the two measured next to each other)."""
    runs = {
        (r["variant"], r.get("repeat")): r["seconds"] for r in results.values() if r["part"] == part
    }
    repeats = sorted({k[1] for k in runs if k[0] == variant and (baseline, k[1]) in runs})
    return [runs[(variant, k)] / runs[(baseline, k)] for k in repeats]


def _ratio_line(results: Results, part: str, variant: str, baseline: str) -> str:
    ratios = _paired(results, part, variant, baseline)
    if not ratios:
        return ""
    return (
        f"Per-repeat ratios {variant} / {baseline}: {', '.join(f'{r:.3f}' for r in ratios)} "
        f"(median {statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f})."
    )


def write_markdown(args, results: Results) -> str:
    """The figures as Markdown (also printed)."""
    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = "not installed"
    lines = [
        "# `advx bench` overhead",
        "",
        "Command: `python benchmarks/bench_overhead.py "
        + " ".join(a for a in sys.argv[1:] if a != "--report-only")
        + "` (this file is rewritten from the stored rows by adding `--report-only`).",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
        f"Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), shared "
        f"with other jobs (load average at the end: {os.getloadavg()[0]:.1f}); torch "
        f"{torch.__version__}, Ray {ray_version}, Python {platform.python_version()}, one thread "
        "per job.",
        "",
        f"## A. Local executor vs a plain loop ({args.a_jobs} DDN/ANU jobs, mnist-cnn, "
        f"{args.a_n} images, {args.a_steps} steps)",
        "",
        "| variant | median s | runs (s) |",
        "|---|---|---|",
    ]
    loop, loop_runs = _median(results, "A", "loop")
    local, local_runs = _median(results, "A", "local")
    for name, median, runs in (
        ("plain loop", loop, loop_runs),
        ("run_sweep local", local, local_runs),
    ):
        lines.append(f"| {name} | {median:.2f} | {', '.join(f'{v:.2f}' for v in runs)} |")
    ratio_a = local / loop
    lines += [
        "",
        f"Local executor / plain loop (medians): **{ratio_a:.3f}** "
        f"({100 * (ratio_a - 1):+.1f}%; target <= +3%: {'met' if ratio_a <= 1.03 else 'NOT met'}).",
        _ratio_line(results, "A", "local", "loop"),
        "On this shared machine the run-to-run spread is larger than the 3% to resolve: the "
        "figure says the executor's cost is below the noise, not that it is known to 1%.",
        "",
        "## A'. The local executor's bookkeeping per job (24 FGM jobs on 2 images each)",
        "",
        "| variant | median s | runs (s) |",
        "|---|---|---|",
    ]
    c_loop, c_loop_runs = _median(results, "C", "loop")
    c_local, c_local_runs = _median(results, "C", "local")
    for name, median, runs in (
        ("plain loop", c_loop, c_loop_runs),
        ("run_sweep local", c_local, c_local_runs),
    ):
        lines.append(f"| {name} | {median:.3f} | {', '.join(f'{v:.3f}' for v in runs)} |")
    per_job_ms = 1000 * (c_local - c_loop) / 24
    a_job = loop / args.a_jobs
    lines += [
        "",
        f"Extra cost per job (difference of the medians / 24): {per_job_ms:.1f} ms, i.e. "
        f"{100 * per_job_ms / 1000 / a_job:.2f}% of a job of part A ({a_job:.1f} s).",
        _ratio_line(results, "C", "local", "loop"),
        "",
        f"## B. Ray vs local (12 DDN/ANU jobs, {args.b_n} images, {args.b_steps} steps)",
        "",
        "| variant | median s | runs (s) |",
        "|---|---|---|",
    ]
    medians = {}
    for variant in B_VARIANTS:
        median, runs = _median(results, "B", variant)
        medians[variant] = median
        lines.append(f"| {variant} | {median:.2f} | {', '.join(f'{v:.2f}' for v in runs)} |")
    startup, _ = _median(results, "B", "startup")
    warmup, _ = _median(results, "B", "warm-up")
    per_job = medians["local"] / 12
    lines += [
        "",
        f"Mean job length (local): {per_job:.1f} s. Not in the figures above: Ray cluster "
        f"start-up {startup:.1f} s, and the first sweep on fresh workers (2 tiny jobs: worker "
        f"processes import torch and advx) {warmup:.1f} s.",
        f"Ray (2 tasks at once) / local: **{medians['ray'] / medians['local']:.3f}**; "
        f"Ray one task at a time / local: **{medians['ray serial'] / medians['local']:.3f}** "
        f"(target <= 1.15: {'met' if medians['ray'] / medians['local'] <= 1.15 else 'NOT met'}).",
        _ratio_line(results, "B", "ray", "local"),
        _ratio_line(results, "B", "ray serial", "local"),
        "Ray runs its workers at nice 15 (its default), so on a machine shared with other jobs "
        "they get less CPU than the local executor at nice 0.",
        "",
    ]
    text = "\n".join(lines)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    return text


def main() -> None:
    """Measure the executor overheads and write docs/results/bench.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a-jobs", type=int, default=8)
    parser.add_argument("--a-n", type=int, default=20)
    parser.add_argument("--a-steps", type=int, default=50)
    parser.add_argument("--a-repeats", type=int, default=5)
    parser.add_argument("--c-repeats", type=int, default=9)
    parser.add_argument("--b-n", type=int, default=40)
    parser.add_argument("--b-steps", type=int, default=100)
    parser.add_argument("--b-repeats", type=int, default=3)
    parser.add_argument("--parts", nargs="+", default=["A", "C", "B"], choices=["A", "B", "C"])
    parser.add_argument("--out", default="results/bench_overhead")
    parser.add_argument(
        "--report-only", action="store_true", help="write the Markdown from stored rows only"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = Results(out / "bench_overhead.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        if args.report_only:
            args.parts = []
        if "A" in args.parts:
            part_a(args, results, Path(tmp))
        if "C" in args.parts:
            part_c(args, results, Path(tmp))
        if "B" in args.parts:
            part_b(args, results, Path(tmp))
    print(write_markdown(args, results))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
