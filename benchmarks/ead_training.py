"""Adversarial training with C&W and EAD examples (issue 14): thesis Table 7 (Sec. 4.3.5) on
mnist-cnn, and the Markdown page docs/results/ead-training.md.

The thesis takes 1000 training images, makes C&W (L2) and EAD (L1 rule) examples for all 9
wrong classes of each (9000 examples per method), augments the training set with them (EAD,
C&W, or both), retrains, and attacks every model with both attacks (targeted, all 9 classes,
average case over the first test images). Three steps here, each resumable:

1. ``craft``: the first ``--train-images`` correctly classified training images of mnist-cnn,
   attacked in chunks of ``--chunk`` images x 9 targets through ``run_attack``; each chunk's
   successful examples (labelled with the image's true class) go to
   ``<out>/craft/<method>-<k>.pt`` as they are made.
2. ``train``: the mnist-cnn recipe from scratch (same seed, same epochs) with the examples of
   the augmentation mixed into every batch (``augmenting``: each batch of b clean images gains
   round(b x examples / training images) examples, drawn without replacement, so one epoch sees
   the whole augmented set once), cached as ``mnist-cnn-t7-<ead|cw|ead-cw>`` with per-epoch
   checkpoints.
3. ``attack``: C&W and EAD (L1 rule) on every model, the first ``--n`` correctly classified test
   images x 9 targets; rows appended to ``<out>/results.jsonl`` (a rerun skips them).

    python benchmarks/ead_training.py --n 100 --train-images 1000 --out results/ead-training \
        [--search 4 --steps 150]
    python benchmarks/ead_training.py --report --out results/ead-training \
        --doc docs/results/ead-training.md

Budget (2 shared cores): C&W and EAD with ``--search`` binary-search steps (4) x ``--steps``
iterations (150), c_0 = 1, lr 0.01 (C&W 0.1), as the defense benchmarks; the thesis: 9 x 1000,
c_0 = 1e-3, lr 0.01. The crafting chunks and the retrained models are tied to their budget and
image count only by ``--out`` and the models' recipes: a new budget needs a new ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import _harness as harness
import torch
from torch import Tensor, nn

from advx.data import load_dataset
from advx.evaluation import run_attack
from advx.models import load, train

SOURCE = "mnist-cnn"
BUDGET = {"binary_search_steps": 4, "steps": 150, "c_init": 1.0, "lr": 0.01}


def attacks(budget: dict) -> dict[str, tuple]:
    """label -> (attack, norm, hyperparameters) of the two attacks at ``budget``."""
    return {
        "C&W (L2)": ("cw-l2", 2.0, budget | {"lr": 0.1}),
        "EAD (L1 rule)": ("ead", 1.0, budget | {"beta": 1e-3, "decision_rule": "l1"}),
    }


CRAFT_METHODS = {"C&W": "C&W (L2)", "EAD": "EAD (L1 rule)"}
AUGMENTATIONS = {"EAD": ("EAD",), "C&W": ("C&W",), "EAD + C&W": ("EAD", "C&W")}
THESIS_TABLE7 = {  # (attack, adversarial training) -> average case (ASR %, L1, L2, Linf)
    ("C&W (L2)", "None"): (100, 22.46, 1.972, 0.514),
    ("C&W (L2)", "EAD"): (100, 26.11, 2.468, 0.643),
    ("C&W (L2)", "C&W"): (100, 24.97, 2.47, 0.684),
    ("C&W (L2)", "EAD + C&W"): (100, 27.32, 2.513, 0.653),
    ("EAD (L1 rule)", "None"): (100, 14.11, 2.211, 0.768),
    ("EAD (L1 rule)", "EAD"): (100, 17.04, 2.653, 0.86),
    ("EAD (L1 rule)", "C&W"): (100, 15.49, 2.628, 0.892),
    ("EAD (L1 rule)", "EAD + C&W"): (100, 16.83, 2.66, 0.87),
}


def model_name(augmentation: str) -> str:
    """Cache name of the model retrained with ``augmentation`` ('EAD', 'C&W', 'EAD + C&W')."""
    slug = "-".join(m.replace("&", "").lower() for m in AUGMENTATIONS[augmentation])
    return f"{SOURCE}-t7-{slug}"


# ----------------------------------------------------------------------------------- craft


def training_images(model: nn.Module, n: int, data_dir) -> tuple[Tensor, Tensor]:
    """The first ``n`` training images that ``model`` classifies correctly, with their labels."""
    x, y = load_dataset("mnist", "train", data_dir)
    x, y = x[: 2 * n], y[: 2 * n]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    return x[correct][:n], y[correct][:n]


def craft(args, method: str) -> tuple[Tensor, Tensor]:
    """The successful examples of ``method`` ('C&W' or 'EAD') for all 9 targets of the first
    ``args.train_images`` training images, labelled with their images' true classes; chunks
    already on disk are read, the others made and written as they finish."""
    model = load(SOURCE, args.data_dir, train_if_missing=False)
    x, y = training_images(model, args.train_images, args.data_dir)
    attack, norm, hyper = attacks(args.budget)[CRAFT_METHODS[method]]
    folder = Path(args.out) / "craft"
    folder.mkdir(parents=True, exist_ok=True)
    pieces = []
    for k, start in enumerate(range(0, len(y), args.chunk)):
        path = folder / f"{method.replace('&', '').lower()}-{k}.pt"
        if not path.is_file():
            began = time.perf_counter()
            chunk = slice(start, start + args.chunk)
            result = run_attack(
                model, x[chunk], y[chunk], attack, norm=norm, targeted=True, targets="all",
                hyperparameters=hyper, batch_size=args.batch_size, progress=False,
            )  # fmt: skip
            success = torch.as_tensor(result.samples["success"]).bool()
            labels = torch.as_tensor(result.samples["label"])
            piece = {"x": result.adversarials[success], "y": labels[success]}
            piece |= {"pairs": len(success), "seconds": time.perf_counter() - began}
            torch.save(piece, path)
            print(f"craft {method} chunk {k}: {int(success.sum())}/{len(success)} successful, "
                  f"{piece['seconds']:.0f} s", flush=True)  # fmt: skip
        pieces.append(torch.load(path, weights_only=True))
    return torch.cat([p["x"] for p in pieces]), torch.cat([p["y"] for p in pieces])


# ----------------------------------------------------------------------------------- train


def augmenting(extra_x: Tensor, extra_y: Tensor, n_train: int, seed: int = 0):
    """A ``batch_transform`` that appends examples of (``extra_x``, ``extra_y``) to every
    training batch: round(b * len(extra) / n_train) to a batch of b, drawn in a random order
    without replacement (a new order once all were used), so an epoch over ``n_train`` images
    sees the augmented set (thesis Sec. 4.3.5: the training set plus the examples) once."""
    if len(extra_x) != len(extra_y) or len(extra_y) == 0:
        raise ValueError(f"extra_x and extra_y must be equal and non-empty, got "
                         f"{len(extra_x)} and {len(extra_y)}")  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    state = {"order": torch.randperm(len(extra_y), generator=generator), "next": 0}

    def take(count: int) -> Tensor:
        chosen = []
        while count > 0:
            if state["next"] == len(state["order"]):
                state["order"] = torch.randperm(len(extra_y), generator=generator)
                state["next"] = 0
            part = state["order"][state["next"] : state["next"] + count]
            state["next"] += len(part)
            count -= len(part)
            chosen.append(part)
        return torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long)

    def transform(_model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        index = take(round(len(y) * len(extra_y) / n_train))
        extra = extra_x[index].to(x.device, x.dtype)
        return torch.cat([x, extra]), torch.cat([y, extra_y[index].to(y.device)])

    return transform


def retrain(args, augmentation: str, examples: dict[str, tuple[Tensor, Tensor]]) -> None:
    """The mnist-cnn recipe with ``augmentation``'s examples mixed into every batch (cached,
    resumable per epoch; skipped when the model exists)."""
    name = model_name(augmentation)
    extra_x = torch.cat([examples[m][0] for m in AUGMENTATIONS[augmentation]])
    extra_y = torch.cat([examples[m][1] for m in AUGMENTATIONS[augmentation]])
    n_train = len(load_dataset("mnist", "train", args.data_dir)[1])
    recipe = {"table7": augmentation, "examples": len(extra_y), "images": args.train_images}
    recipe["budget"] = args.budget
    _model, metrics = train(
        SOURCE, args.data_dir, save_as=name, recipe_extra=recipe, progress=False,
        batch_transform=augmenting(extra_x, extra_y, n_train),
    )  # fmt: skip
    print(f"trained {name}: {len(extra_y)} examples, test accuracy "
          f"{metrics['test_accuracy']:.4f}", flush=True)  # fmt: skip


# ---------------------------------------------------------------------------------- attack


def evaluate(args, results, training: str, name: str) -> None:
    """Both attacks on model ``name`` (adversarial training ``training``), targeted at all 9
    classes of its first ``args.n`` correctly classified test images; average case stored."""
    model = load(name, args.data_dir, train_if_missing=False)
    x, y, _ = harness.correct_test_images(model, "mnist", args.n, args.data_dir)
    with torch.no_grad():  # once per model, on the whole test split
        test_x, test_y = load_dataset("mnist", "test", args.data_dir)
        accuracy = (model(test_x).argmax(1) == test_y).double().mean().item()
    for label, (attack, norm, hyper) in attacks(args.budget).items():
        key = f"table7/{training}/{label}/{len(y)}/{json.dumps(hyper)}"
        if key in results:
            continue
        result = harness.run(
            model, x, y, attack, norm=norm, hyperparameters=hyper, batch=args.batch_size,
            targeted=True, targets="all",
        )  # fmt: skip
        s = result.summary
        row = {"training": training, "model": name, "attack": label, "n": len(y)}
        row |= {"pairs": int(s["n"]), "average": s["target_cases"]["average"]}
        row["hyperparameters"] = hyper
        row |= {"seconds_per_pair": s["seconds_per_sample"], "torch": torch.__version__}
        row |= {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        row["test_accuracy"] = accuracy
        results.add(key, row)
        print(json.dumps(row), flush=True)


def run(args) -> None:
    results = harness.setup(args)
    examples = {m: craft(args, m) for m in CRAFT_METHODS}
    for augmentation in AUGMENTATIONS:
        retrain(args, augmentation, examples)
    evaluate(args, results, "None", SOURCE)
    for augmentation in AUGMENTATIONS:
        evaluate(args, results, augmentation, model_name(augmentation))


# ---------------------------------------------------------------------------------- report


def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _table7_lines(rows: list[dict]) -> list[str]:
    headers = ["attack", "adversarial training", "model", "test acc. %", "pairs", "ASR %"]
    headers += ["L1", "L2", "Linf", "thesis ASR / L1 / L2 / Linf"]
    body = []
    for (attack, training), thesis in THESIS_TABLE7.items():
        measured = [r for r in rows if (r["attack"], r["training"]) == (attack, training)]
        if not measured:
            continue
        row = max(measured, key=lambda r: r["n"])  # the most images measured
        a = row["average"]
        body.append([
            attack, training, row["model"], _fmt(100 * row["test_accuracy"], 2),
            str(row["pairs"]), _fmt(100 * a["success_rate"], 1), _fmt(a["l1"], 2),
            _fmt(a["l2"], 3), _fmt(a["linf"], 3), " / ".join(f"{v:g}" for v in thesis),
        ])  # fmt: skip
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def _craft_lines(out: Path) -> list[str]:
    lines = []
    for method in CRAFT_METHODS:
        pieces = [torch.load(p, weights_only=True) for p in sorted(
            (out / "craft").glob(f"{method.replace('&', '').lower()}-*.pt"))]  # fmt: skip
        if pieces:
            made = sum(len(p["y"]) for p in pieces)
            pairs = sum(p["pairs"] for p in pieces)
            seconds = sum(p["seconds"] for p in pieces)
            lines.append(f"- {method} examples: {made} of {pairs} pairs successful, "
                         f"{seconds:.0f} s to make")  # fmt: skip
    return lines


def _budget_text(rows: list[dict]) -> str:
    by_attack = {}
    for r in rows:
        h = r["hyperparameters"]
        by_attack.setdefault(r["attack"], set()).add(
            f"{h['binary_search_steps']} binary-search steps x {h['steps']} iterations, "
            f"c_0 = {h['c_init']:g}, lr {h['lr']:g}"
        )
    return "; ".join(f"{a}: {' / '.join(sorted(t))}" for a, t in sorted(by_attack.items()))


def _run_command(args, rows: list[dict]) -> str:
    budget = rows[0]["hyperparameters"] if rows else BUDGET
    return (
        f"python benchmarks/ead_training.py --n {args.n} --train-images {args.train_images} "
        f"--search {budget['binary_search_steps']} --steps {budget['steps']} --out {args.out}"
    )


def write_report(args) -> None:
    out = Path(args.out)
    rows = list(harness.setup(args).values())
    dates = sorted(r["date"] for r in rows)
    lines = [
        "# Adversarial training with C&W and EAD examples (thesis Table 7)",
        "",
        f"Generated by `python benchmarks/ead_training.py --report --n {args.n} --train-images "
        f"{args.train_images} --out {args.out} --doc {args.doc}` from the stored rows; made by "
        f"`{_run_command(args, rows)}`. Machine: "
        f"{platform.machine()}, 2 shared cores, one thread; torch "
        f"{', '.join(sorted({r['torch'] for r in rows})) or '?'}; measured "
        f"{dates[0] if dates else '?'} to {dates[-1] if dates else '?'}.",
        "",
        "Average case over all 9 targets of the first correctly classified MNIST test images of "
        f"each model. Budgets: {_budget_text(rows)}; the thesis: 9 binary-search steps x 1000 "
        "iterations, c_0 = 1e-3, lr 0.01, its own MNIST CNN, 1000 training images.",
        "",
        *_table7_lines(rows),
        "",
        *_craft_lines(out),
        "",
    ]
    if args.notes and Path(args.notes).is_file():
        lines += [Path(args.notes).read_text().strip(), ""]
    doc = Path(args.doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines))
    print(f"wrote {doc}")


def build_parser() -> argparse.ArgumentParser:
    """The harness's common options (``--n``: test images x 9 targets per row) and this
    script's own."""
    parser = harness.parser(__doc__, models=[SOURCE], n=100, out="results/ead-training", batch=450)
    parser.add_argument("--train-images", type=int, default=1000, help="images attacked (x 9)")
    parser.add_argument("--chunk", type=int, default=100, help="images per stored craft chunk")
    parser.add_argument("--search", type=int, default=4, help="binary-search steps (C&W, EAD)")
    parser.add_argument("--steps", type=int, default=150, help="iterations per search step")
    parser.add_argument("--report", action="store_true", help="write the Markdown page only")
    parser.add_argument("--doc", default="docs/results/ead-training.md")
    parser.add_argument("--notes", default="benchmarks/ead_training_notes.md")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Craft, retrain and attack, or (``--report``) write the page (``argv``: the arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.models != [SOURCE]:
        parser.error(f"--models: Table 7 retrains {SOURCE} only")
    for option in ("n", "train_images", "chunk", "batch_size", "search", "steps"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')}: expected an integer >= 1")
    args.budget = BUDGET | {"binary_search_steps": args.search, "steps": args.steps}
    if args.report:
        write_report(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
