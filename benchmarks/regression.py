"""The regression attack of Balda, Behboodi & Mathar, "On Generation of Adversarial Examples
using Convex Programming" (Section III, Eq. 9; ../shared/papers/convex-programming-attacks.txt)
on the zoo regressor ``mnist-regress`` (LeNet-5 with one output predicting the digit's value).

For p in {1, 2, inf} and a few eps, over the first N MNIST test images: the mean output change
|f(x + eta) - f(x)| of ``regression_attack`` against random noise of the same Lp norm (drawn
before clipping to the box [0, 1], which both then undergo):

* p = inf: independent +-eps entries (the paper's Bernoulli "Random" baseline);
* p = 2:   a Gaussian direction scaled to ||eta||_2 = eps;
* p = 1:   a Laplace direction scaled to ||eta||_1 = eps (dense, like the L2 noise).

Also the mean Lp norm actually applied (after clipping), the fraction of images whose rounded
prediction (the predicted digit) changes, and the seconds per batch of the attack.

Not through ``run_attack``: the runner measures classifiers (success is a changed argmax), while
the regression attack has no labels and is judged by the output change, so the attack is timed
here batch by batch. The images are the first N test images, all of them (``first_test_images``
of the harness: a regressor has no "correctly classified" to select on). Each row draws its noise
from a generator seeded with ``--seed``, so a resumed row equals a fresh one.

    python benchmarks/regression.py --n 1000 --out results/regression

Rows print as they are measured and are appended to ``<out>/results.jsonl``; a rerun skips the
rows already there (resume). The model must be trained already (``advx train mnist-regress``);
the script never trains one.
"""

from __future__ import annotations

import json
import time

import _harness as harness
import torch

from advx.attacks._core import INF, clip_box, lp_norm, view_like
from advx.attacks.regression import regression_attack
from advx.data import load_dataset
from advx.models import get_spec
from advx.models.training import predicted_labels

GRIDS = {1.0: [0.5, 1.0, 2.0], 2.0: [0.5, 1.0, 2.0], INF: [0.01, 0.03, 0.1]}


def random_noise(inputs: torch.Tensor, eps: float, p: float, generator: torch.Generator):
    """x + noise with ||noise||_p = eps (before clipping to [0, 1]), see the module docstring."""
    shape = inputs.shape
    if p == INF:
        noise = (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(inputs.dtype) * eps
        return clip_box(inputs + noise)
    if p == 2:
        direction = torch.randn(shape, generator=generator, dtype=inputs.dtype)
    else:
        gauss = torch.randn(shape, generator=generator, dtype=inputs.dtype)
        magnitude = torch.empty(shape, dtype=inputs.dtype).exponential_(generator=generator)
        direction = gauss.sign() * magnitude
    scale = eps / lp_norm(direction, p).clamp_min(1e-12)
    return clip_box(inputs + view_like(scale, inputs) * direction)


@torch.no_grad()
def _outputs(model, x, batch):
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def _key(row: dict) -> str:
    fields = [row.get("kind"), row.get("model"), row.get("n"), row.get("p"), row.get("eps")]
    return json.dumps(fields + [row.get("seed")])


def _model_row(model, name: str, args, results) -> dict:
    """Test RMSE and rounded-digit accuracy on the whole test split."""
    row = {"kind": "model", "model": name}
    if _key(row) not in results:
        x_all, y_all = load_dataset(get_spec(name).dataset, "test", args.data_dir)
        out = _outputs(model, x_all, 1000)
        rmse = (out.reshape(-1) - y_all.float()).pow(2).mean().sqrt().item()
        accuracy = (predicted_labels(out) == y_all).float().mean().item()
        results.record(row | {"rmse": rmse, "accuracy": accuracy})
    return results[_key(row)]


def _attack_row(model, x, clean, p: float, eps: float, args) -> dict:
    """Output change, applied norm and changed-digit share of the attack and of random noise."""
    start = time.perf_counter()
    batch = args.batch_size
    adv = torch.cat(
        [
            regression_attack(model, x[i : i + batch], eps=eps, norm=p)
            for i in range(0, len(x), batch)
        ]
    )
    seconds = (time.perf_counter() - start) / -(-len(x) // batch)
    noisy = random_noise(x, eps, p, torch.Generator().manual_seed(args.seed))
    row = {"seconds_per_batch": seconds}
    for kind, points in (("attack", adv), ("random", noisy)):
        out = _outputs(model, points, batch)
        row[kind] = {
            "change": (out - clean).norm(dim=1).mean().item(),
            "norm": lp_norm(points - x, p).mean().item(),
            "digit": (predicted_labels(out) != predicted_labels(clean)).float().mean().item(),
        }
    return row


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (``argv``: the command-line arguments)."""
    parser = harness.parser(
        __doc__, models=["mnist-regress"], n=1000, out="results/regression", batch=250
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random noise")
    args = parser.parse_args(argv)
    results = harness.setup(args, key=_key)
    for name in args.models:
        model, x, _ = harness.first_test_images(name, args.n, args.data_dir)
        clean = _outputs(model, x, args.batch_size)
        figures = _model_row(model, name, args, results)
        print(
            f"{name}: test RMSE {figures['rmse']:.3f}, rounded-digit accuracy "
            f"{100 * figures['accuracy']:.2f}% (whole test split); attacking the first {len(x)} "
            f"test images, {args.threads} thread(s)"
        )
        print(
            f"{'p':>4s} {'eps':>6s} {'|df| attack':>12s} {'|df| random':>12s} {'ratio':>7s} "
            f"{'||eta|| att':>11s} {'||eta|| rnd':>11s} {'digit chg att':>13s} "
            f"{'digit chg rnd':>13s} {'s/batch':>8s}"
        )
        for p, grid in GRIDS.items():
            for eps in grid:
                row = {"kind": "attack", "model": name, "n": len(x), "p": p, "eps": eps}
                row["seed"] = args.seed
                if _key(row) not in results:
                    results.record(row | _attack_row(model, x, clean, p, eps, args))
                row = results[_key(row)]
                a, r = row["attack"], row["random"]
                ratio = a["change"] / max(r["change"], 1e-12)
                p_name = "inf" if p == INF else f"{p:g}"
                print(
                    f"{p_name:>4s} {eps:6g} {a['change']:12.4f} {r['change']:12.4f} "
                    f"{ratio:7.1f} {a['norm']:11.4f} {r['norm']:11.4f} "
                    f"{100 * a['digit']:12.1f}% {100 * r['digit']:12.1f}% "
                    f"{row['seconds_per_batch']:8.3f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
