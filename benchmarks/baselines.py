"""Classic minimal-norm baselines (issue 3): DeepFool L2 and Linf (Moosavi-Dezfooli et al. 2016),
Carlini-Wagner L2 (2017) and box-constrained L-BFGS (Szegedy et al. 2014) on the zoo models.

For each model, the first N correctly classified test images and each
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

import _harness as harness


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


def main() -> None:
    parser = harness.parser(
        __doc__, models=["mnist-cnn", "cifar-cnn"], n=1000, out="results/baselines"
    )
    parser.add_argument(
        "--attacks",
        nargs="+",
        default=["deepfool-l2", "deepfool-linf", "cw-l2", "lbfgs"],
        choices=["deepfool-l2", "deepfool-linf", "cw-l2", "lbfgs"],
    )
    parser.add_argument("--cw-steps", type=int, default=1000)
    parser.add_argument("--cw-search", type=int, default=9)
    args = parser.parse_args()
    done = harness.setup(args, key=_key)
    print(
        f"{'model':<12} {'attack':<14} {'n':>5} {'success':>8} {'norm':>5} {'median':>8} "
        f"{'mean':>8} {'s/img':>8} {'grads/img':>10}"
    )
    for model_name in args.models:
        model, x, y = harness.evaluation_images(model_name, args.n, args.data_dir)
        for label, (name, norm, hyper) in _attacks(args).items():
            row = {"model": model_name, "attack": label, "n": x.shape[0], "hyperparameters": hyper}
            if _key(row) in done:
                continue
            figures = harness.measure(
                model, x, y, name, norm=norm, hyperparameters=hyper, batch=args.batch_size
            )
            row = done.record(row | figures)
            print(
                f"{model_name:<12} {label:<14} {row['n']:>5} {row['success']:>8.3f} "
                f"{row['norm']:>5} {row['median']:>8.4f} {row['mean']:>8.4f} "
                f"{row['seconds_per_image']:>8.4f} {row['gradients_per_image']:>10.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
