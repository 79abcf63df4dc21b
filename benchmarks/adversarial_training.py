"""Adversarial training with DDN vs ANU: the structure of Section 5.3 and Figure 5 of the ANU paper
(../shared/papers/self-adaptive-norm-update.txt) on our models.

Trains two robust copies of each of ``--models`` on adversarial examples only (the paper's
Eq. 7), with the perturbation limited to ``--max-norm`` (2.4 on MNIST, as in the paper): one
with DDN (``--ddn-steps``, 100 in the paper) and one with ANU (``--anu-steps``, 70), the same
epochs, data and seed. Then, for the clean baseline and both robust models: clean test accuracy,
training time, and robust accuracy against the L2 radius under a strong attack (ANU with
``--eval-steps``, 1000 in the paper) on the first ``--n`` test images, as a table and a PNG (the
paper's Figure 5).

Each evaluation is a ``run_attack`` run (through the harness's ``measure``): the robust accuracy
at each radius is its summary's (correctly classified and no misclassified example within the
radius), on the first ``--n`` test images whether or not a model classifies them correctly
(``first_test_images``: a model's clean errors count against its robust accuracy); the median L2
is the runner's, over the successful examples on correctly classified images. The training-step
cost (attack + update) alternates DDN and ANU on the same batches and is timed here: a training
step is not an attack run.

The paper trains from scratch for many GPU-hours; on 2 CPU cores the default here fine-tunes the
clean zoo model (``--init-from``, on by default) for ``--epochs`` on the first ``--max-samples``
training images. State these settings with the figures.

    python benchmarks/adversarial_training.py --models mnist-cnn --epochs 1 --max-samples 10000 \
        --n 500 --eval-steps 1000 --out results/adversarial_training

Rows append to ``<out>/results.jsonl`` as they are measured and a rerun skips them (resume);
interrupted training resumes from its per-epoch checkpoint. The clean model must be trained
already (``advx train NAME``).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import _harness as harness
import torch

from advx.attacks import ANU_DEFAULTS, DDN_DEFAULTS, anu
from advx.data import load_dataset
from advx.defenses.adversarial_training import adversarial_training
from advx.models import get_spec, load


def _attack_settings(method: str, dataset: str, steps: int) -> dict:
    """The attack's Section 5.2 hyperparameters for ``dataset`` with ``steps`` iterations."""
    table = DDN_DEFAULTS if method == "ddn" else ANU_DEFAULTS
    return dict(table[dataset]) | {"steps": steps}


def _key(row: dict) -> str:
    return json.dumps([row.get("kind"), row.get("model"), row.get("settings")], sort_keys=True)


def _train_robust(args, base: str, method: str, steps: int, dataset: str) -> dict:
    """Train (or resume) the ``method``-trained copy of ``base``; its name, accuracy and time."""
    name = f"{base}-adv-{method}{steps}-n{args.max_samples}-e{args.epochs}"
    start = time.perf_counter()
    _, metrics = adversarial_training(
        base,
        method,
        max_norm=args.max_norm,
        attack_kwargs=_attack_settings(method, dataset, steps),
        epochs=args.epochs,
        seed=args.seed,
        data_dir=args.data_dir,
        max_samples=args.max_samples,
        init_from=base if args.init_from else None,
        progress=not args.quiet,
        save_as=name,
    )
    return {
        "trained": name,
        "test_accuracy": metrics["test_accuracy"],
        "train_time_s": metrics["train_time_s"],
        "wall_s_this_run": time.perf_counter() - start,
    }


def _step_costs(args, base: str, dataset: str) -> dict[str, float]:
    """Median seconds of one adversarial training step (attack + update) with DDN and with ANU,
    alternating the two on the same batches so that machine load hits both alike."""
    from advx.attacks import ddn

    x, y = load_dataset(dataset, "train", args.data_dir)
    batch = get_spec(base).batch_size
    times: dict[str, list[float]] = {"ddn": [], "anu": []}
    attacks = {"ddn": (ddn, args.ddn_steps), "anu": (anu, args.anu_steps)}
    models = {method: load(base, args.data_dir, train_if_missing=False) for method in attacks}
    optimizers = {m: torch.optim.Adam(models[m].parameters(), lr=1e-4) for m in attacks}
    for rep in range(args.step_reps):
        xb, yb = x[rep * batch : (rep + 1) * batch], y[rep * batch : (rep + 1) * batch]
        for method in ("ddn", "anu") if rep % 2 == 0 else ("anu", "ddn"):
            function, steps = attacks[method]
            model, optimizer = models[method], optimizers[method]
            settings = _attack_settings(method, dataset, steps) | {"max_norm": args.max_norm}
            start = time.perf_counter()
            adv = function(model.eval(), xb, yb, **settings)
            model.train()
            loss = torch.nn.functional.cross_entropy(model(adv), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times[method].append(time.perf_counter() - start)
    return {m: statistics.median(t) for m, t in times.items()}


def _evaluate(name: str, x, y, dataset: str, args) -> dict:
    """Robust accuracy of model ``name`` at each radius under ANU with ``args.eval_steps``
    iterations, one ``run_attack`` run."""
    model = load(name, args.data_dir, train_if_missing=False)
    figures = harness.measure(
        model,
        x,
        y,
        "anu",
        norm=2,
        hyperparameters=_attack_settings("anu", dataset, args.eval_steps),
        batch=args.batch_size,
        epsilons=args.radii,
    )
    robust = figures["robust_accuracy"]
    return {
        "clean_accuracy_eval": figures["clean_accuracy"],
        "median_l2": figures["median"],
        "robust_accuracy": [robust[float(r)] for r in args.radii],
        "seconds_per_image": figures["seconds_per_image"],
    }


def _plot(rows: list[dict], radii: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for row in rows:
        ax.plot(radii, row["robust_accuracy"], marker=".", label=row["label"])
    ax.set_xlabel("maximum L2 norm of the perturbation")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_model(base: str, args, results) -> None:
    """Train the DDN and ANU copies of ``base``, time their training steps, evaluate all three."""
    dataset = get_spec(base).dataset
    print(
        f"{base}: adversarial training (Eq. 7), max L2 norm {args.max_norm}, "
        f"{args.epochs} epoch(s) on {args.max_samples} images, "
        f"{'fine-tuning the clean model' if args.init_from else 'from scratch'}, seed {args.seed}"
    )
    models = [{"model": base, "label": f"{base} (baseline)"}]
    for method, steps in (("ddn", args.ddn_steps), ("anu", args.anu_steps)):
        settings = {"method": method, "steps": steps, "max_norm": args.max_norm}
        settings |= {"epochs": args.epochs, "max_samples": args.max_samples, "seed": args.seed}
        row = {"kind": "train", "model": base, "settings": settings | {"init": args.init_from}}
        if _key(row) not in results:
            results.record(row | _train_robust(args, base, method, steps, dataset))
        row = results[_key(row)]
        print(
            f"  trained {row['trained']}: clean accuracy {row['test_accuracy']:.4f}, "
            f"training time {row['train_time_s']:.0f} s"
        )
        models.append(row | {"model": row["trained"], "label": f"{method.upper()}-{steps} trained"})

    settings = {"ddn": args.ddn_steps, "anu": args.anu_steps, "reps": args.step_reps}
    row = {"kind": "steps", "model": base, "settings": settings}
    if _key(row) not in results:
        results.record(row | _step_costs(args, base, dataset))
    costs = results[_key(row)]
    print(
        f"  one training step (batch {get_spec(base).batch_size}), median of "
        f"{args.step_reps}, alternating: DDN-{args.ddn_steps} {costs['ddn']:.3f} s, "
        f"ANU-{args.anu_steps} {costs['anu']:.3f} s, ratio ANU/DDN {costs['anu'] / costs['ddn']:.3f}"
    )

    _, x, y = harness.first_test_images(base, args.n, args.data_dir)
    curves = []
    for entry in models:
        settings = {"n": len(x), "steps": args.eval_steps, "radii": args.radii}
        row = {"kind": "eval", "model": entry["model"], "settings": settings}
        if _key(row) not in results:
            results.record(row | _evaluate(entry["model"], x, y, dataset, args))
        curves.append(results[_key(row)] | {"label": entry["label"]})

    _print_table(models, curves, args, len(x))
    path = Path(args.out) / f"robust_accuracy_{base}.png"
    _plot(curves, args.radii, path)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (``argv``: the command-line arguments)."""
    parser = harness.parser(
        __doc__,
        models=["mnist-cnn"],
        n=500,
        out="results/adversarial_training",
        batch=250,
        threads=2,
    )
    parser.add_argument("--max-norm", type=float, default=2.4)
    parser.add_argument("--ddn-steps", type=int, default=100)
    parser.add_argument("--anu-steps", type=int, default=70)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-samples", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--from-scratch",
        dest="init_from",
        action="store_false",
        help="train from a random initialisation instead of fine-tuning the clean model",
    )
    parser.add_argument("--eval-steps", type=int, default=1000)
    parser.add_argument("--radii", type=float, nargs="+", default=[i / 10 for i in range(31)])
    parser.add_argument("--step-reps", type=int, default=10, help="batches timed per attack")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    results = harness.setup(args, key=_key)
    for base in args.models:
        run_model(base, args, results)


def _print_table(models: list[dict], curves: list[dict], args, n: int) -> None:
    shown = [r for r in (0.5, 1.0, 1.5, 2.0, 2.5) if r in args.radii]
    header = "| model | clean acc (test) | train time s | median L2 | "
    header += " | ".join(f"acc@{r}" for r in shown) + " |"
    print(f"\nrobust accuracy under ANU-{args.eval_steps} on the first {n} test images")
    print(header)
    print("|" + "---|" * (4 + len(shown)))
    for entry, curve in zip(models, curves, strict=True):
        accuracy = entry.get("test_accuracy")
        if accuracy is None:
            accuracy = harness.recorded_test_accuracy(entry["model"])
        train_time = entry.get("train_time_s")
        cells = [
            curve["label"],
            "-" if accuracy is None else f"{accuracy:.4f}",
            "-" if train_time is None else f"{train_time:.0f}",
            f"{curve['median_l2']:.3f}",
        ]
        cells += [f"{curve['robust_accuracy'][args.radii.index(r)]:.3f}" for r in shown]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
