"""The substitute-model black-box attack (Papernot, McDaniel, Goodfellow, Jha, Celik & Swami,
"Practical black-box attacks against machine learning", AsiaCCS 2017), the baseline of the
thesis's Table 1: a substitute is trained on oracle labels of a small hold-out set grown by
Jacobian-based dataset augmentation, and white-box attacks on it are transferred."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .query import QueryModel, as_query_model


@dataclass
class Substitute:
    """A trained substitute and what it cost.

    Attributes:
        model: the substitute (eval mode).
        images: the final synthetic training set S_rho.
        labels: the oracle's labels of ``images``.
        queries: oracle queries made (one per image of ``images``).
        seconds: wall time of the whole training (queries, training, augmentation).
        history: per round, the training-set size and (when ``test`` data were given) the
            substitute's agreement with the oracle on them.
    """

    model: nn.Module
    images: Tensor
    labels: Tensor
    queries: int
    seconds: float
    history: list[dict] = field(default_factory=list)


def jacobian_augmentation(
    substitute: nn.Module, images: Tensor, labels: Tensor, lam: float
) -> Tensor:
    """New points x + lam * sign(J_F(x)[O(x)]) for every x in ``images`` (Papernot et al. 2017,
    Algorithm 1, line 6): the sign of the gradient of the substitute's logit of the oracle's
    label ``labels``, clipped to [0, 1]. Returns only the new points (N, ...).

    Args:
        substitute: the current substitute F.
        images: the current training set S_rho.
        labels: the oracle's labels O(x) of ``images``.
        lam: the step lambda (negative values step against the gradient).
    """
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = substitute(x)
        chosen = logits.gather(1, labels[:, None].to(logits.device)).sum()
        (grad,) = torch.autograd.grad(chosen, x)
    return (images + lam * grad.sign()).clamp(0.0, 1.0).detach()


def _oracle_labels(oracle: QueryModel, images: Tensor, offset: int) -> Tensor:
    owners = torch.arange(offset, offset + images.shape[0])
    return oracle(images, owners).argmax(1)


def _fit(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> None:
    """Train ``model`` by Adam on cross-entropy for ``epochs`` passes over (images, labels)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    n = images.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(images.device)
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
    model.eval()


def _agreement(model: nn.Module, oracle_labels: Tensor, test: Tensor) -> float:
    with torch.no_grad():
        return float((model(test).argmax(1) == oracle_labels).float().mean())


def train_substitute(
    oracle: nn.Module | QueryModel | Callable[[Tensor], Tensor],
    images: Tensor,
    *,
    architecture: Callable[[], nn.Module] | nn.Module,
    rounds: int = 6,
    lam: float = 0.1,
    epochs: int = 10,
    tau: int | None = None,
    batch_size: int = 32,
    lr: float = 1e-3,
    test: tuple[Tensor, Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> Substitute:
    """Train a substitute by Jacobian-based dataset augmentation (Papernot et al. 2017,
    Algorithm 1; thesis Sec. 3.3.2: 150 hold-out images, lambda = 0.1, 5 augmentations).

    For rho = 0 .. rounds - 1: label the new points of S_rho by the oracle (through a
    :class:`QueryModel`, one query per point), train the substitute on S_rho for ``epochs``
    epochs, and (except in the last round) S_{rho+1} = S_rho U {x + lambda_rho sign(J_F(x)[O(x)])}
    with lambda_rho = lam * (-1)^floor(rho / tau) (no sign flips when ``tau`` is None). The
    substitute is trained from scratch once, continuing across rounds as in the reference.

    Args:
        oracle: the attacked model (scores only), an ``nn.Module``, callable or QueryModel
            (its counts and budget apply; point j of the training set is its sample j).
        images: the initial hold-out images S_0 (N, ...) in [0, 1].
        architecture: a substitute instance, or a callable building one.
        rounds: substitute training rounds (rounds - 1 augmentations).
        lam: the augmentation step lambda.
        epochs: training epochs per round.
        tau: the period of the sign flip of lambda (None: never).
        batch_size: training batch size.
        lr: Adam learning rate.
        test: optional (inputs, oracle labels) to record the substitute's agreement per round.
        generator: the source of the training order.

    Returns:
        A :class:`Substitute` with the model, the synthetic set, the oracle labels, the oracle
        queries and the wall time.
    """
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if tau is not None and (not isinstance(tau, int) or tau < 1):
        raise ValueError(f"tau must be None or an integer >= 1, got {tau!r}")
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.dim() < 2:
        raise TypeError("images must be a floating-point batch (N, ...)")
    start = time.perf_counter()
    query = as_query_model(oracle)
    before = query.total_queries
    model = architecture if isinstance(architecture, nn.Module) else architecture()
    if not isinstance(model, nn.Module):
        raise TypeError("architecture must be an nn.Module or build one")
    model = model.to(device=images.device, dtype=images.dtype)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    data = images.detach().clone()
    labels = _oracle_labels(query, data, 0)
    history = []
    for rho in range(rounds):
        _fit(model, data, labels, epochs, batch_size, lr, generator)
        record = {"round": rho, "size": int(data.shape[0])}
        if test is not None:
            record["agreement"] = _agreement(model, test[1], test[0])
        history.append(record)
        if rho == rounds - 1:
            break
        step = lam if tau is None else lam * (-1) ** (rho // tau)
        new = jacobian_augmentation(model, data, labels, step)
        new_labels = _oracle_labels(query, new, data.shape[0])
        data, labels = torch.cat([data, new]), torch.cat([labels, new_labels])
    seconds = time.perf_counter() - start
    return Substitute(model.eval(), data, labels, query.total_queries - before, seconds, history)
