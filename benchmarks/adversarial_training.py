"""Adversarial training with DDN vs ANU: the structure of Section 5.3 and Figure 5 of the ANU paper
(../shared/papers/self-adaptive-norm-update.txt) on our models.

Trains two robust copies of ``--model`` on adversarial examples only (the paper's Eq. 7), with the
perturbation limited to ``--max-norm`` (2.4 on MNIST, as in the paper): one with DDN
(``--ddn-steps``, 100 in the paper) and one with ANU (``--anu-steps``, 70), the same epochs, data
and seed. Then, for the clean baseline and both robust models: clean test accuracy, training time,
and robust accuracy against the L2 radius under a strong attack (ANU with ``--eval-steps``, 1000 in
the paper) on the first ``--eval-n`` test images, as a table and a PNG (the paper's Figure 5).

The paper trains from scratch for many GPU-hours; on 2 CPU cores the default here fine-tunes the
clean zoo model (``--init-from``, on by default) for ``--epochs`` on the first ``--max-samples``
training images. State these settings with the figures.

    python benchmarks/adversarial_training.py --model mnist-cnn --epochs 1 --max-samples 10000 \
        --eval-n 500 --eval-steps 1000 --out results/adversarial_training

Rows append to ``<out>/results.jsonl`` as they are measured and a rerun skips them (resume);
interrupted training resumes from its per-epoch checkpoint.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _results import Results

from advx.attacks import ANU_DEFAULTS, DDN_DEFAULTS, anu, lp_norm
from advx.data import load_dataset
from advx.defenses.adversarial_training import adversarial_training
from advx.models import get_spec, load
from advx.models.checkpoints import read_checkpoint


def _attack_settings(method: str, dataset: str, steps: int) -> dict:
    """The attack's Section 5.2 hyperparameters for ``dataset`` with ``steps`` iterations."""
    table = DDN_DEFAULTS if method == "ddn" else ANU_DEFAULTS
    return dict(table[dataset]) | {"steps": steps}


def _train_robust(args, method: str, steps: int, dataset: str) -> dict:
    """Train (or resume) the ``method``-trained model; return its name, accuracy and time."""
    name = f"{args.model}-adv-{method}{steps}-n{args.max_samples}-e{args.epochs}"
    start = time.perf_counter()
    _, metrics = adversarial_training(
        args.model,
        method,
        max_norm=args.max_norm,
        attack_kwargs=_attack_settings(method, dataset, steps),
        epochs=args.epochs,
        seed=args.seed,
        max_samples=args.max_samples,
        init_from=args.model if args.init_from else None,
        progress=not args.quiet,
        save_as=name,
    )
    return {
        "model": name,
        "method": method,
        "attack_steps": steps,
        "test_accuracy": metrics["test_accuracy"],
        "train_time_s": metrics["train_time_s"],
        "wall_s_this_run": time.perf_counter() - start,
    }


def _step_costs(args, dataset: str) -> dict[str, float]:
    """Median seconds of one adversarial training step (attack + update) with DDN and with ANU,
    alternating the two on the same batches so that machine load hits both alike."""
    from advx.attacks import ddn

    x, y = load_dataset(dataset, "train")
    batch = get_spec(args.model).batch_size
    times: dict[str, list[float]] = {"ddn": [], "anu": []}
    attacks = {"ddn": (ddn, args.ddn_steps), "anu": (anu, args.anu_steps)}
    models = {method: load(args.model) for method in attacks}
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


def _minimal_norms(model, x, y, dataset: str, steps: int, batch: int) -> torch.Tensor:
    """Per-image L2 norm of the strongest attack's adversarial: 0 where the image is already
    misclassified, inf where the attack failed."""
    settings = _attack_settings("anu", dataset, steps)
    norms = []
    for i in range(0, x.shape[0], batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        adv = anu(model, xb, yb, **settings)
        with torch.no_grad():
            wrong_clean = model(xb).argmax(1) != yb
            fooled = model(adv).argmax(1) != yb
        n = lp_norm(adv - xb, 2)
        n = torch.where(fooled, n, torch.full_like(n, float("inf")))
        norms.append(torch.where(wrong_clean, torch.zeros_like(n), n))
    return torch.cat(norms)


def _evaluate(name: str, x, y, dataset: str, args) -> dict:
    """Robust-accuracy row of model ``name`` under ANU with ``args.eval_steps`` iterations."""
    model = load(name)
    start = time.perf_counter()
    norms = _minimal_norms(model, x, y, dataset, args.eval_steps, args.batch)
    return {
        "model": name,
        "clean_accuracy_eval": float((norms > 0).float().mean()),
        "median_l2": float(norms.median()),
        "radii": args.radii,
        "robust_accuracy": _robust_curve(norms, args.radii),
        "attack_seconds": time.perf_counter() - start,
    }


def _robust_curve(norms: torch.Tensor, radii: list[float]) -> list[float]:
    """Robust accuracy at each L2 radius: the share of images with minimal norm above it."""
    return [float((norms > r).float().mean()) for r in radii]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-cnn")
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
    parser.add_argument("--eval-n", type=int, default=500)
    parser.add_argument("--eval-steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--radii", type=float, nargs="+", default=[i / 10 for i in range(31)])
    parser.add_argument("--step-reps", type=int, default=10, help="batches timed per attack")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--out", default="results/adversarial_training")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = Results(out / "results.jsonl")
    dataset = get_spec(args.model).dataset
    print(
        f"{args.model}: adversarial training (Eq. 7), max L2 norm {args.max_norm}, "
        f"{args.epochs} epoch(s) on {args.max_samples} images, "
        f"{'fine-tuning the clean model' if args.init_from else 'from scratch'}, seed {args.seed}"
    )

    models = [{"model": args.model, "method": "none", "label": f"{args.model} (baseline)"}]
    for method, steps in (("ddn", args.ddn_steps), ("anu", args.anu_steps)):
        key = f"train:{args.model}:{method}{steps}:{args.max_norm}:{args.epochs}:{args.max_samples}"
        key += f":{args.seed}:{args.init_from}"
        row = results.get(key) or results.add(key, _train_robust(args, method, steps, dataset))
        print(
            f"  trained {row['model']}: clean accuracy {row['test_accuracy']:.4f}, "
            f"training time {row['train_time_s']:.0f} s"
        )
        models.append(row | {"label": f"{method.upper()}-{steps} trained"})

    key = f"steps:{args.model}:{args.ddn_steps}:{args.anu_steps}:{args.step_reps}"
    costs = results.get(key) or results.add(key, _step_costs(args, dataset))
    print(
        f"  one training step (batch {get_spec(args.model).batch_size}), median of "
        f"{args.step_reps}, alternating: DDN-{args.ddn_steps} {costs['ddn']:.3f} s, "
        f"ANU-{args.anu_steps} {costs['anu']:.3f} s, ratio ANU/DDN {costs['anu'] / costs['ddn']:.3f}"
    )

    x, y = load_dataset(dataset, "test")
    x, y = x[: args.eval_n], y[: args.eval_n]
    curves = []
    for entry in models:
        key = f"eval:{entry['model']}:{args.eval_n}:{args.eval_steps}"
        row = results.get(key) or results.add(key, _evaluate(entry["model"], x, y, dataset, args))
        curves.append(row | {"label": entry["label"]})

    _print_table(models, curves, args)
    _plot(curves, args.radii, out / f"robust_accuracy_{args.model}.png")
    print(f"plot: {out / f'robust_accuracy_{args.model}.png'}")


def _print_table(models: list[dict], curves: list[dict], args) -> None:
    shown = [r for r in (0.5, 1.0, 1.5, 2.0, 2.5) if r in args.radii]
    header = "| model | clean acc (test) | train time s | median L2 | "
    header += " | ".join(f"acc@{r}" for r in shown) + " |"
    print(f"\nrobust accuracy under ANU-{args.eval_steps} on the first {args.eval_n} test images")
    print(header)
    print("|" + "---|" * (4 + len(shown)))
    for entry, curve in zip(models, curves, strict=True):
        accuracy = entry.get("test_accuracy")
        if accuracy is None:
            accuracy = read_checkpoint_accuracy(entry["model"])
        train_time = entry.get("train_time_s")
        cells = [
            curve["label"],
            "-" if accuracy is None else f"{accuracy:.4f}",
            "-" if train_time is None else f"{train_time:.0f}",
            f"{curve['median_l2']:.3f}",
        ]
        cells += [f"{curve['robust_accuracy'][args.radii.index(r)]:.3f}" for r in shown]
        print("| " + " | ".join(cells) + " |")


def read_checkpoint_accuracy(name: str) -> float | None:
    """The test accuracy stored with a cached or bundled model, if any."""
    from advx.models import model_path
    from advx.models.checkpoints import BUNDLED

    for path in (model_path(name), BUNDLED.get(name)):
        if path is not None and Path(path).is_file():
            metrics = read_checkpoint(path).get("metrics") or {}
            if "test_accuracy" in metrics:
                return float(metrics["test_accuracy"])
    return None


if __name__ == "__main__":
    main()
