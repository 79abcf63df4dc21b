"""DDN vs ANU: the structure of Tables 1-2 and Figures 3-4 of the ANU paper
(../shared/papers/self-adaptive-norm-update.txt) on our models.

For each model and iteration budget: mean and median L2 of the best adversarial, success rate and
seconds per image, untargeted on the first N correctly classified test images (Table 1) and
targeted towards every other class on the first M (Table 2: success and norms over every
(image, target) pair, the average case; the store's summary also holds best and worst). Also the
curve of the mean best-so-far norm against iteration (one DDN and one ANU run at
``--curve-steps``) as a PNG.

The table rows are the ``advx bench`` sweeps ``benchmarks/configs/ddn_anu_table1_<dataset>.toml``
and ``ddn_anu_table2_<dataset>.toml`` (hyperparameters: ``DDN_DEFAULTS``, ``ANU_DEFAULTS``,
``ANU_TARGETED_DEFAULTS``) with ``--n`` / ``--targeted-n``, ``--models``, ``--budgets``,
``--batch-size`` and ``--threads`` (per job) applied, run by ``run_sweep`` into
``<out>/sweep.sqlite`` (``--executor local|ray``; a rerun skips the finished jobs; failed jobs
are listed and end the run) and read back from the store. The script itself computes only the
curve, which needs the attacks' per-iteration callback (with the Table 1 runs'
hyperparameters; rows of ``<out>/results.jsonl``, resumed on a rerun).

    python benchmarks/ddn_anu.py --models mnist-cnn cifar-cnn --n 1000 --targeted-n 100 \
        --budgets 50 70 100 200 500 1000 --out results/ddn_anu
    python benchmarks/ddn_anu.py --models mnist-cnn --n 5 --targeted-n 2 --budgets 10 20 \
        --curve-steps 20 --curve-n 5 --threads 1 --out /tmp/ddn_anu        # smoke run
"""

from __future__ import annotations

from pathlib import Path

import _harness as harness
import torch

from advx.attacks import anu, ddn, lp_norm
from advx.models import get_spec

CONFIGS = Path(__file__).parent / "configs"
MODES = {"untargeted": "table1", "targeted": "table2"}
METHODS = ("ddn", "anu")


def _table_rows(dataset: str, models: list[str], args) -> list[dict]:
    """The Table 1 and Table 2 rows of ``models`` (all of ``dataset``), from the sweeps."""
    overrides = {} if args.budgets is None else {m: {"steps": args.budgets} for m in METHODS}
    rows = []
    for mode, table in MODES.items():
        n = args.n if mode == "untargeted" else args.targeted_n
        path = CONFIGS / f"ddn_anu_{table}_{dataset}.toml"
        entries = harness.sweep_rows(path, args, models, n=n, overrides=overrides)
        rows += [_row(entry, mode) for entry in entries]
    order = {mode: i for i, mode in enumerate(MODES)}
    return sorted(
        rows, key=lambda r: (r["model"], order[r["mode"]], r["steps"], METHODS.index(r["method"]))
    )


def _row(entry: dict, mode: str) -> dict:
    """One table row from a stored run (``harness.sweep_rows``)."""
    job, figures = entry["job"], entry["figures"]
    return {
        "model": job.model,
        "mode": mode,
        "method": job.attack,
        "steps": job.hyperparameters["steps"],
        "n": entry["summary"]["n"],
        "success": figures["success"],
        "mean_l2": figures["mean"],
        "median_l2": figures["median"],
        "seconds_per_image": figures["seconds_per_image"],
        "gradients_per_image": figures["gradients_per_image"],
        "run_id": entry["run_id"],
        "hyperparameters": job.hyperparameters,
    }


def _curve(model, x, y, method: str, settings: dict) -> list[float]:
    """Mean over images of the best adversarial L2 found up to iteration k; NaN (not plotted)
    until every image has an adversarial, so that each point averages the same images.
    Called directly, not through ``run_attack``: the runner has no per-iteration callback."""
    best = torch.full((x.shape[0],), float("inf"))
    history = []

    def callback(k, iterate, is_adv):
        norms = lp_norm(iterate - x, 2)
        best.copy_(torch.where(is_adv, torch.minimum(best, norms), best))
        history.append(best.clone())

    attack = ddn if method == "ddn" else anu
    attack(model, x, y, **settings, callback=callback)
    return [h.mean().item() if torch.isfinite(h).all() else float("nan") for h in history]


def _curves(model_name: str, table_rows: list[dict], args, done) -> dict[str, list[float]]:
    """The best-norm-vs-iteration curve of each method on ``model_name``, with the
    hyperparameters of its Table 1 runs and ``--curve-steps`` iterations (resumed from
    ``done``)."""
    model, x, y = harness.evaluation_images(model_name, args.curve_n, args.data_dir)
    curves = {}
    for method in METHODS:
        key = (model_name, "curve", method, args.curve_steps, x.shape[0])
        if key not in done:
            runs = [r for r in table_rows if r["model"] == model_name and r["mode"] == "untargeted"]
            table = next(r for r in runs if r["method"] == method)
            settings = table["hyperparameters"] | {"steps": args.curve_steps}
            done.record(
                {
                    "model": model_name,
                    "mode": "curve",
                    "method": method,
                    "steps": args.curve_steps,
                    "n": x.shape[0],
                    "values": _curve(model, x, y, method, settings),
                }
            )
        curves[method] = done[key]["values"]
    return curves


def _key(row: dict) -> tuple:
    return (row["model"], row["mode"], row["method"], row["steps"], row["n"])


def _print(row: dict) -> None:
    print(
        f"{row['model']:<12} {row['mode']:<10} {row['method']:<5} {row['steps']:>5} "
        f"{row['success']:>8.3f} {row['mean_l2']:>8.4f} "
        f"{row['median_l2']:>8.4f} {row['seconds_per_image']:>8.4f}",
        flush=True,
    )


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
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the DDN/ANU benchmark; return the table rows (as printed)."""
    parser = harness.parser(
        __doc__,
        models=["mnist-cnn", "cifar-cnn"],
        n=1000,
        out="results/ddn_anu",
        batch=250,
        threads=2,
    )
    harness.sweep_options(parser)
    parser.add_argument("--targeted-n", type=int, default=100)
    parser.add_argument(
        "--budgets", type=int, nargs="+", default=None, help="iterations (default: the configs')"
    )
    parser.add_argument("--curve-steps", type=int, default=200)
    parser.add_argument("--curve-n", type=int, default=200)
    args = parser.parse_args(argv)
    harness.require_zoo_models(parser, args)
    done, out = harness.setup(args, key=_key), Path(args.out)
    by_dataset: dict[str, list[str]] = {}
    for name in args.models:
        by_dataset.setdefault(get_spec(name).dataset, []).append(name)
    rows = [r for d, models in by_dataset.items() for r in _table_rows(d, models, args)]
    print(
        f"{'model':<12} {'mode':<10} {'method':<5} {'steps':>5} {'success':>8} "
        f"{'mean L2':>8} {'median':>8} {'s/img':>8}"
    )
    for row in rows:
        _print(row)
    curves = {name: _curves(name, rows, args, done) for name in args.models}
    if curves:
        _plot(curves, out)
    return rows


if __name__ == "__main__":
    main()
