"""Counter-based random numbers, one stream per sample, drawn for a whole batch at once.

A black-box attack must give the same result for a sample whether it is attacked alone or in a
batch (with the same ``torch.Generator``). Drawing from one shared generator cannot do that: the
numbers a sample gets would depend on its position. Here each sample's stream is keyed by one
draw from the generator mixed with a hash of the sample's own bytes and label, and every number
is ``splitmix64(key, counter, index)``, computed in int64 tensor arithmetic (wrapping
multiplication), so a batch of streams costs a few vectorised integer operations.
"""

from __future__ import annotations

import torch
from torch import Tensor

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB
_SEED_RANGE = 2**62


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical (unsigned) right shift of int64 values."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: Tensor) -> Tensor:
    """The splitmix64 finaliser (Steele, Lea & Flood 2014) on int64 tensors, elementwise."""
    z = x + _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def content_hash(inputs: Tensor, labels: Tensor) -> Tensor:
    """(N,) int64 hash of each sample's bytes and label (order-free wrapping sums of mixed
    (position, byte) pairs, so it does not depend on the batch the sample is in)."""
    n = inputs.shape[0]
    data = inputs.detach().cpu().contiguous().reshape(n, -1).view(torch.uint8).to(torch.int64)
    position = torch.arange(data.shape[1], dtype=torch.int64) * 256
    mixed = splitmix64(position + data).sum(1)
    return splitmix64(mixed ^ splitmix64(labels.detach().cpu().to(torch.int64) + 12345))


def sample_seeds(inputs: Tensor, labels: Tensor, generator: torch.Generator | None) -> Tensor:
    """(N,) int64 stream keys: one draw from ``generator`` (the global generator when None)
    mixed with each sample's content hash."""
    device = generator.device if generator is not None else torch.device("cpu")
    base = torch.randint(0, _SEED_RANGE, (1,), generator=generator, device=device).cpu()
    return splitmix64(content_hash(inputs, labels) ^ base)


def uniform(seeds: Tensor, counter: int, count: int, device=None) -> Tensor:
    """(len(seeds), count) float64 uniforms in (0, 1): number j of draw ``counter`` of each
    sample's stream."""
    device = seeds.device if device is None else device
    key = splitmix64(
        seeds.to(device) ^ splitmix64(torch.tensor(counter, dtype=torch.int64)).to(device)
    )
    index = torch.arange(count, dtype=torch.int64, device=device) * _GOLDEN
    bits = _shift_right(splitmix64(key[:, None] + index[None, :]), 11)
    return (bits.to(torch.float64) + 0.5) * 2.0**-53
