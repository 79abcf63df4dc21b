"""Classic minimal-norm baselines (issue 3): DeepFool L2 and Linf (Moosavi-Dezfooli et al. 2016),
Carlini-Wagner L2 (2017) and box-constrained L-BFGS (Szegedy et al. 2014) on the zoo models.

For each model, the first N correctly classified test images (out of the first 1,000) and each
attack: success rate, median and mean norm of the successful examples (Linf for DeepFool-Linf,
L2 otherwise), seconds per image and gradients (backward passes) per image, as measured by the
evaluation runner (``advx.evaluation.runner.run_attack``: counting model, fresh re-check of every
example, per-batch timing).

    python benchmarks/baselines.py --models mnist-cnn cifar-cnn --n 1000 \
        --cw-search 9 --cw-steps 1000 --out results/baselines

Rows print as they are measured and are appended to ``<out>/results.jsonl``; a rerun skips the
rows already there (same model, attack, n and hyperparameters), so an interrupted run resumes.
The models must be trained already (``advx train NAME``); the script never trains one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from _results import Results

from advx.data import first_correct, load_dataset
from advx.evaluation.runner import run_attack
from advx.models import get_spec, load


def _attacks(args: argparse.Namespace) -> dict[str, tuple[str, float, dict]]:
    """label -> (registry name, norm, hyperparameters)."""
    table = {
        "deepfool-l2": ("deepfool", 2.0, {"steps": 50, "overshoot": 0.02, "candidates": 10}),
        "deepfool-linf": (
            "deepfool",
            float("inf"),
            {"steps": 50, "overshoot": 0.02, "candidates": 10},
        ),
        "cw-l2": (
            "cw-l2",
            2.0,
            {"binary_search_steps": args.cw_search, "steps": args.cw_steps},
        ),
        "lbfgs": ("lbfgs", 2.0, {}),
    }
    return {label: table[label] for label in args.attacks}


def _key(row: dict) -> str:
    return json.dumps(
        [row["model"], row["attack"], row["n"], row["hyperparameters"]], sort_keys=True
    )


def _measure(model, x, y, name: str, norm: float, hyper: dict, batch: int) -> dict:
    result = run_attack(
        model, x, y, name, norm=norm, hyperparameters=hyper, batch_size=batch, progress=False
    )
    s = result.summary
    return {
        "norm": s["norm"],
        "success": s["success_rate"],
        "median": s["norm_stats"]["median"],
        "mean": s["norm_stats"]["mean"],
        "seconds_per_image": s["seconds_per_sample"],
        "gradients_per_image": s["backwards_per_sample"],
        "forwards_per_image": s["forwards_per_sample"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mnist-cnn", "cifar-cnn"])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument(
        "--attacks",
        nargs="+",
        default=["deepfool-l2", "deepfool-linf", "cw-l2", "lbfgs"],
        choices=["deepfool-l2", "deepfool-linf", "cw-l2", "lbfgs"],
    )
    parser.add_argument("--cw-steps", type=int, default=1000)
    parser.add_argument("--cw-search", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="results/baselines")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = Results(out / "results.jsonl", key=_key)
    print(
        f"{'model':<12} {'attack':<14} {'n':>5} {'success':>8} {'norm':>5} {'median':>8} "
        f"{'mean':>8} {'s/img':>8} {'grads/img':>10}"
    )
    for model_name in args.models:
        model = load(model_name, args.data_dir, train_if_missing=False)  # never train here
        images, labels = load_dataset(get_spec(model_name).dataset, "test", args.data_dir)
        x, y, _ = first_correct(model, images[:1000], labels[:1000], args.n)
        for label, (name, norm, hyper) in _attacks(args).items():
            row = {"model": model_name, "attack": label, "n": x.shape[0], "hyperparameters": hyper}
            if _key(row) in done:
                continue
            row = done.record(row | _measure(model, x, y, name, norm, hyper, args.batch_size))
            print(
                f"{model_name:<12} {label:<14} {row['n']:>5} {row['success']:>8.3f} "
                f"{row['norm']:>5} {row['median']:>8.4f} {row['mean']:>8.4f} "
                f"{row['seconds_per_image']:>8.4f} {row['gradients_per_image']:>10.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
