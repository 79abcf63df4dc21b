"""Overhead of the evaluation runner over calling an attack directly.

PGD-Linf (eps 0.3, 40 steps) on 1000 MNIST test images with mnist-cnn (cached, else the bundled
model), batch size 100: the attack called over the batches directly against ``run_attack`` with a
fresh SQLite store, interleaved in alternating order, ``--repeats`` times each. Prints the medians and their ratio;
target: the runner costs at most 5% more.

    python benchmarks/runner_overhead.py [--n 1000] [--repeats 3] [--data-dir DIR]

Not on the benchmark harness (``_harness``): it times the runner itself against direct calls,
so it keeps its own timing loop and parser. The harness's options would not fit (one fixed
model and attack; nothing is stored, so no ``--out``), and its images are the first n test
images, correct or not, with a fallback to the bundled demo model and images when the data or
the cached model is missing, which the harness's loaders refuse.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from advx import data, models
from advx.attacks import pgd
from advx.evaluation import ResultsStore, run_attack

EPS, STEPS = 0.3, 40


def load_model() -> torch.nn.Module:
    """mnist-cnn from the cache, else the bundled demo model."""
    try:
        return models.load("mnist-cnn", train_if_missing=False)
    except FileNotFoundError:
        return models.load_demo_model()


def load_images(n: int, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first n MNIST test images, or the bundled demo images repeated when data is missing."""
    try:
        images, labels = data.load_dataset("mnist", "test", data_dir)
        return images[:n], labels[:n], "MNIST test"
    except (FileNotFoundError, OSError, RuntimeError):
        images, labels = data.load_demo()
        repeats = -(-n // images.shape[0])
        return images.repeat(repeats, 1, 1, 1)[:n], labels.repeat(repeats)[:n], "demo (repeated)"


def direct(model, images, labels, batch_size: int) -> float:
    """Seconds to run PGD over the batches without the runner."""
    start = time.perf_counter()
    for index, begin in enumerate(range(0, images.shape[0], batch_size)):
        torch.manual_seed(index)
        end = begin + batch_size
        pgd(model, images[begin:end], labels[begin:end], eps=EPS, steps=STEPS)
    return time.perf_counter() - start


def through_runner(model, images, labels, batch_size: int, folder: Path, repeat: int) -> float:
    """Seconds for ``run_attack`` with a new store (nothing to resume)."""
    start = time.perf_counter()
    with ResultsStore(folder / f"bench-{repeat}.sqlite") as store:
        run_attack(
            model,
            images,
            labels,
            "pgd",
            norm="inf",
            hyperparameters={"eps": EPS, "steps": STEPS},
            batch_size=batch_size,
            store=store,
            model_name="mnist-cnn",
            progress=False,
        )
    return time.perf_counter() - start


def main() -> None:
    """Time both ways, interleaved, and print medians and the overhead ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = load_model()
    images, labels, source = load_images(args.n, args.data_dir)
    print(
        f"PGD-Linf eps={EPS} steps={STEPS}, {images.shape[0]} images ({source}), "
        f"batch {args.batch_size}, {torch.get_num_threads()} threads"
    )
    direct(model, images[: args.batch_size], labels[: args.batch_size], args.batch_size)  # warm
    times: dict[str, list[float]] = {"direct": [], "runner": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            runs = {
                "direct": lambda: direct(model, images, labels, args.batch_size),
                "runner": lambda r=repeat: through_runner(
                    model, images, labels, args.batch_size, Path(tmp), r
                ),
            }
            order = ("direct", "runner") if repeat % 2 == 0 else ("runner", "direct")
            for name in order:  # alternate which goes first, so drift does not favour one
                times[name].append(runs[name]())
            print(
                f"repeat {repeat + 1}: direct {times['direct'][-1]:.2f} s, "
                f"runner {times['runner'][-1]:.2f} s"
            )
    direct_median = statistics.median(times["direct"])
    runner_median = statistics.median(times["runner"])
    ratio = runner_median / direct_median
    print(
        f"median direct {direct_median:.2f} s, median runner {runner_median:.2f} s, "
        f"overhead {100 * (ratio - 1):+.1f}% (ratio {ratio:.3f}; target <= 1.05)"
    )


if __name__ == "__main__":
    main()
