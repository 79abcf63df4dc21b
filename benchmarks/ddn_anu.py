"""DDN vs ANU: the structure of Tables 1-2 and Figures 3-4 of the ANU paper
(../shared/papers/self-adaptive-norm-update.txt) on our models.

For each model and iteration budget: mean and median L2 of the best adversarial, success rate and
seconds per image, untargeted on the first N correctly classified test images and targeted towards
every other class on the first M. Also the curve of the mean best-so-far norm against iteration
(one DDN and one ANU run at the largest curve budget) as a PNG.

    python benchmarks/ddn_anu.py --models mnist-cnn cifar-cnn --n 1000 --targeted-n 100 \
        --budgets 50 70 100 200 500 1000 --out results/ddn_anu

Figures print as they are measured and are appended to ``<out>/results.jsonl``; a rerun skips
the rows already there (resume).
"""

from __future__ import annotations

import json
from pathlib import Path

import _harness as harness
import torch

from advx.attacks import (
    ANU_DEFAULTS,
    ANU_TARGETED_DEFAULTS,
    DDN_DEFAULTS,
    all_targets,
    anu,
    ddn,
    lp_norm,
)
from advx.models import get_spec


def _dataset(model_name: str) -> str:
    return get_spec(model_name).dataset


def _settings(method: str, dataset: str, targeted: bool) -> dict:
    if method == "ddn":
        return dict(DDN_DEFAULTS[dataset])
    table = ANU_TARGETED_DEFAULTS if targeted else ANU_DEFAULTS
    return dict(table[dataset])


def _run(model, x, y, targets, method: str, steps: int, dataset: str, batch: int):
    """One DDN or ANU run through the runner; ``targets`` None for the untargeted mode."""
    targeted = targets is not None
    kwargs = _settings(method, dataset, targeted) | {"steps": steps}
    figures = harness.measure(
        model,
        x,
        y,
        method,
        norm=2,
        hyperparameters=kwargs,
        batch=batch,
        targeted=targeted,
        targets=targets,
    )
    return {
        "success": figures["success"],
        "mean_l2": figures["mean"],
        "median_l2": figures["median"],
        "seconds_per_image": figures["seconds_per_image"],
        "gradients_per_image": figures["gradients_per_image"],
    }


def _targeted_set(x, y, num_classes: int):
    """Every (image, other class) pair, the ANU paper's targeted protocol: the images, their
    true labels and the target classes."""
    index, targets = all_targets(y, num_classes)
    return x[index], y[index], targets


def _curve(model, x, y, method: str, steps: int, dataset: str) -> list[float]:
    """Mean over images of the best adversarial L2 found up to iteration k; NaN (not plotted)
    until every image has an adversarial, so that each point averages the same images."""
    best = torch.full((x.shape[0],), float("inf"))
    history = []

    def callback(k, iterate, is_adv):
        norms = lp_norm(iterate - x, 2)
        best.copy_(torch.where(is_adv, torch.minimum(best, norms), best))
        history.append(best.clone())

    attack = ddn if method == "ddn" else anu
    attack(model, x, y, **(_settings(method, dataset, False) | {"steps": steps}), callback=callback)
    return [h.mean().item() if torch.isfinite(h).all() else float("nan") for h in history]


def _key(row: dict) -> tuple:
    return (row["model"], row["mode"], row["method"], row["steps"], row["n"])


def _plot(curves: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.5), squeeze=False)
    for ax, (model_name, per_method) in zip(axes[0], curves.items()):
        for method, values in per_method.items():
            ax.plot(range(len(values)), values, label=method.upper())
        ax.set(title=model_name, xlabel="iteration", ylabel="mean best L2 so far")
        ax.set_yscale("log")
        ax.legend()
    fig.suptitle("from the first iteration that fools every image", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "best_norm_vs_iteration.png", dpi=120)


def main() -> None:
    parser = harness.parser(
        __doc__,
        models=["mnist-cnn", "cifar-cnn"],
        n=1000,
        out="results/ddn_anu",
        batch=250,
        threads=2,
    )
    parser.add_argument("--targeted-n", type=int, default=100)
    parser.add_argument("--budgets", type=int, nargs="+", default=[50, 70, 100, 200, 500, 1000])
    parser.add_argument("--curve-steps", type=int, default=200)
    parser.add_argument("--curve-n", type=int, default=200)
    args = parser.parse_args()
    done, curves = harness.setup(args, key=_key), {}
    out = Path(args.out)
    print(
        f"{'model':<12} {'mode':<10} {'method':<5} {'steps':>5} {'success':>8} "
        f"{'mean L2':>8} {'median':>8} {'s/img':>8}"
    )
    for model_name in args.models:
        dataset = _dataset(model_name)
        wanted = max(args.n, args.targeted_n)
        model, x, y = harness.evaluation_images(model_name, wanted, args.data_dir)
        xt, yt, tt = _targeted_set(x[: args.targeted_n], y[: args.targeted_n], 10)
        x, y = x[: args.n], y[: args.n]
        for mode, (xs, ys, ts) in (("untargeted", (x, y, None)), ("targeted", (xt, yt, tt))):
            for steps in args.budgets:
                for method in ("ddn", "anu"):
                    if (model_name, mode, method, steps, xs.shape[0]) in done:
                        continue
                    row = _run(model, xs, ys, ts, method, steps, dataset, args.batch_size)
                    row |= {
                        "model": model_name,
                        "mode": mode,
                        "method": method,
                        "steps": steps,
                        "n": xs.shape[0],
                    }
                    done.record(row)
                    print(
                        f"{model_name:<12} {mode:<10} {method:<5} {steps:>5} "
                        f"{row['success']:>8.3f} {row['mean_l2']:>8.4f} "
                        f"{row['median_l2']:>8.4f} {row['seconds_per_image']:>8.4f}",
                        flush=True,
                    )
        cx, cy = x[: args.curve_n], y[: args.curve_n]
        curves[model_name] = {
            m: _curve(model, cx, cy, m, args.curve_steps, dataset) for m in ("ddn", "anu")
        }
    if curves:
        _plot(curves, out)
        (out / "curves.json").write_text(json.dumps(curves))


if __name__ == "__main__":
    main()
