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

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _results import Results

from advx.attacks import ANU_DEFAULTS, ANU_TARGETED_DEFAULTS, DDN_DEFAULTS, anu, ddn, lp_norm
from advx.data import first_correct, load_dataset
from advx.models import get_spec, load


def _dataset(model_name: str) -> str:
    return get_spec(model_name).dataset


def _settings(method: str, dataset: str, targeted: bool) -> dict:
    if method == "ddn":
        return dict(DDN_DEFAULTS[dataset])
    table = ANU_TARGETED_DEFAULTS if targeted else ANU_DEFAULTS
    return dict(table[dataset])


def _run(model, x, y, method: str, steps: int, targeted: bool, dataset: str, batch: int):
    attack = ddn if method == "ddn" else anu
    kwargs = _settings(method, dataset, targeted) | {"steps": steps, "targeted": targeted}
    advs, start = [], time.perf_counter()
    for i in range(0, x.shape[0], batch):
        advs.append(attack(model, x[i : i + batch], y[i : i + batch], **kwargs))
    seconds = time.perf_counter() - start
    adv = torch.cat(advs)
    with torch.no_grad():
        pred = torch.cat([model(adv[i : i + 500]).argmax(1) for i in range(0, len(adv), 500)])
    success = pred == y if targeted else pred != y
    norms = lp_norm(adv - x, 2)[success].tolist()
    return {
        "success": success.float().mean().item(),
        "mean_l2": statistics.fmean(norms) if norms else float("nan"),
        "median_l2": statistics.median(norms) if norms else float("nan"),
        "seconds_per_image": seconds / x.shape[0],
    }


def _targeted_set(x, y, num_classes: int):
    """Every (image, other class) pair: the ANU paper's targeted protocol."""
    offsets = torch.arange(1, num_classes)
    targets = (y[:, None] + offsets[None, :]) % num_classes
    return x.repeat_interleave(num_classes - 1, 0), targets.reshape(-1)


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mnist-cnn", "cifar-cnn"])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--targeted-n", type=int, default=100)
    parser.add_argument("--budgets", type=int, nargs="+", default=[50, 70, 100, 200, 500, 1000])
    parser.add_argument("--curve-steps", type=int, default=200)
    parser.add_argument("--curve-n", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="results/ddn_anu")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done, curves = Results(out / "results.jsonl", key=_key), {}
    print(
        f"{'model':<12} {'mode':<10} {'method':<5} {'steps':>5} {'success':>8} "
        f"{'mean L2':>8} {'median':>8} {'s/img':>8}"
    )
    for model_name in args.models:
        dataset = _dataset(model_name)
        model = load(model_name, args.data_dir)
        images, labels = load_dataset(dataset, "test", args.data_dir)
        wanted = max(args.n, args.targeted_n)
        x, y, _ = first_correct(model, images[:1000], labels[:1000], wanted)
        xt, yt = _targeted_set(x[: args.targeted_n], y[: args.targeted_n], 10)
        x, y = x[: args.n], y[: args.n]
        for mode, (xs, ys) in (("untargeted", (x, y)), ("targeted", (xt, yt))):
            for steps in args.budgets:
                for method in ("ddn", "anu"):
                    if (model_name, mode, method, steps, xs.shape[0]) in done:
                        continue
                    row = _run(
                        model, xs, ys, method, steps, mode == "targeted", dataset, args.batch_size
                    )
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
