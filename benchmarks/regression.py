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

    python benchmarks/regression.py --n 1000 [--train]
"""

from __future__ import annotations

import argparse
import time

import torch

from advx.attacks._core import INF, clip_box, lp_norm, view_like
from advx.attacks.regression import regression_attack
from advx.data import load_dataset
from advx.models import load, model_path
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mnist-regress")
    parser.add_argument("--n", type=int, default=1000, help="first N test images")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train", action="store_true", help="train the model if not cached")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not model_path(args.model).is_file() and not args.train:
        raise SystemExit(f"no checkpoint at {model_path(args.model)}: use --train")
    model = load(args.model, args.data_dir, train_if_missing=args.train).eval()
    x_all, y_all = load_dataset("mnist", "test", args.data_dir)
    x = x_all[: args.n]
    clean = _outputs(model, x, args.batch)
    all_out = _outputs(model, x_all, 1000)
    rmse = (all_out.reshape(-1) - y_all.float()).pow(2).mean().sqrt().item()
    accuracy = (predicted_labels(all_out) == y_all).float().mean().item()
    print(
        f"{args.model}: test RMSE {rmse:.3f}, rounded-digit accuracy {100 * accuracy:.2f}% "
        f"(whole test split); attacking the first {len(x)} test images, {args.threads} thread(s)"
    )
    header = (
        f"{'p':>4s} {'eps':>6s} {'|df| attack':>12s} {'|df| random':>12s} {'ratio':>7s} "
        f"{'||eta|| att':>11s} {'||eta|| rnd':>11s} {'digit chg att':>13s} "
        f"{'digit chg rnd':>13s} {'s/batch':>8s}"
    )
    print(header)
    generator = torch.Generator().manual_seed(args.seed)
    for p, grid in GRIDS.items():
        for eps in grid:
            start = time.perf_counter()
            adv = torch.cat(
                [
                    regression_attack(model, x[i : i + args.batch], eps=eps, norm=p)
                    for i in range(0, len(x), args.batch)
                ]
            )
            seconds = (time.perf_counter() - start) / -(-len(x) // args.batch)
            noisy = random_noise(x, eps, p, generator)
            rows = {}
            for kind, points in (("attack", adv), ("random", noisy)):
                out = _outputs(model, points, args.batch)
                rows[kind] = {
                    "change": (out - clean).norm(dim=1).mean().item(),
                    "norm": lp_norm(points - x, p).mean().item(),
                    "digit": (predicted_labels(out) != predicted_labels(clean)).float().mean(),
                }
            a, r = rows["attack"], rows["random"]
            ratio = a["change"] / max(r["change"], 1e-12)
            p_name = "inf" if p == INF else f"{p:g}"
            print(
                f"{p_name:>4s} {eps:6g} {a['change']:12.4f} {r['change']:12.4f} {ratio:7.1f} "
                f"{a['norm']:11.4f} {r['norm']:11.4f} {100 * a['digit']:12.1f}% "
                f"{100 * r['digit']:12.1f}% {seconds:8.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
