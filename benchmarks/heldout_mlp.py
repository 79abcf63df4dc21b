"""A held-out model for the trust-region check of issue 13: a 2-hidden-layer MNIST MLP
(784-300-100-10, ReLU; LeCun et al.'s LeNet-300-100) that is not in the zoo, so that the
trust-region defaults, tuned on zoo models, are also judged on a network they were not tuned on.

    python benchmarks/heldout_mlp.py --out results/heldout-mlp.pt      # trains it (about 1 min)
    python benchmarks/peers.py --models benchmarks/heldout_mlp.py:mlp \\
        --weights results/heldout-mlp.pt --n 200 --attacks tr --out results/peers

Training: Adam (lr 1e-3), batch 128, 5 epochs, seed 0, on the 60,000 MNIST training images.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from advx.data import load_dataset


def mlp() -> nn.Module:
    """The held-out MNIST MLP 784-300-100-10 (ReLU), untrained."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def train_mlp(epochs: int, data_dir: str | None, seed: int = 0) -> tuple[nn.Module, float]:
    """Train :func:`mlp` with Adam and return it (eval mode) with its test accuracy."""
    torch.manual_seed(seed)
    model = mlp()
    x, y = load_dataset("mnist", "train", data_dir)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=order)
        for batch in perm.split(128):
            opt.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
        print(f"epoch {epoch + 1}/{epochs} done")
    model.eval()
    xt, yt = load_dataset("mnist", "test", data_dir)
    with torch.no_grad():
        accuracy = (model(xt).argmax(1) == yt).float().mean().item()
    return model, accuracy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="results/heldout-mlp.pt", help="state-dict file written")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, accuracy = train_mlp(args.epochs, args.data_dir)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(
        f"saved {args.out}: test accuracy {accuracy:.4f}, "
        f"{time.perf_counter() - start:.0f} s to train"
    )


if __name__ == "__main__":
    main()
