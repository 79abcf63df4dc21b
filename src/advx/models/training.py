"""Training zoo models with a fixed seed, per-epoch checkpoints and resume.

Reproducibility: the weights are initialised after ``torch.manual_seed(seed)``; epoch ``e``
draws its data order, augmentation and dropout from seeds derived from ``(seed, e)``. A run
interrupted after epoch ``e`` and resumed from its checkpoint therefore ends with the same
weights as an uninterrupted run. The caller's global RNG state is left untouched.

Hooks for later training schemes (adversarial training, distillation):

- ``batch_transform(model, x, y) -> (x, y)`` is called on every training batch after
  augmentation and before the forward pass (the model is in train mode; the hook may switch
  modes but must restore train mode), e.g. to replace ``x`` by adversarial examples.
- ``loss_fn(logits, y) -> scalar`` replaces the default loss (cross-entropy, or the mean
  squared error of ``regression_loss`` for ``task="regression"`` models; ``y`` may then be soft
  labels, as returned by ``batch_transform``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data import load_dataset
from .checkpoints import atomic_save, model_path, read_checkpoint, resolve_cache_dir, save_model
from .registry import ModelSpec, get_spec

__all__ = [
    "BatchTransform",
    "LossFn",
    "augment_crop_flip",
    "default_loss",
    "evaluate",
    "predicted_labels",
    "regression_loss",
    "train",
]

BatchTransform = Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, Tensor]]
LossFn = Callable[[Tensor, Tensor], Tensor]


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 12345) % (2**62)


def regression_loss(outputs: Tensor, labels: Tensor) -> Tensor:
    """Mean squared error between a single-output model's (N, 1) or (N,) outputs and the
    labels' values (the loss of ``task="regression"`` zoo models)."""
    return F.mse_loss(outputs.reshape(-1), labels.to(outputs.dtype).reshape(-1))


def predicted_labels(outputs: Tensor) -> Tensor:
    """Classes predicted from model outputs: argmax of (N, K) logits, or, for a single output
    ((N,) or (N, 1), a regression of the label's value), that value rounded to an integer."""
    if outputs.dim() == 1 or outputs.shape[1] == 1:
        return outputs.reshape(-1).round().long()
    return outputs.argmax(1)


def default_loss(spec: ModelSpec) -> LossFn:
    """Cross-entropy for classifiers, ``regression_loss`` for ``task="regression"`` models."""
    return regression_loss if spec.task == "regression" else F.cross_entropy


def augment_crop_flip(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random crop with ``pad`` pixels of zero padding plus random horizontal flip, batched."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = dy[:, None] + torch.arange(h)
    cols = dx[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def _optimizer(spec: ModelSpec, model: nn.Module) -> torch.optim.Optimizer:
    if spec.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=spec.lr,
            momentum=spec.momentum,
            nesterov=True,
            weight_decay=spec.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)


def one_cycle_factor(total_steps: int, pct_start: float = 0.25) -> Callable[[int], float]:
    """LR multiplier: linear warm-up from 0.04 to 1 over ``pct_start`` of the steps, then
    cosine annealing to 0 (a one-cycle schedule that also works for a handful of steps)."""
    warm = max(1, int(total_steps * pct_start))
    rest = max(1, total_steps - warm)

    def factor(step: int) -> float:
        if step < warm:
            return 0.04 + 0.96 * step / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / rest)))

    return factor


def _scheduler(spec: ModelSpec, opt: torch.optim.Optimizer, total_steps: int):
    if spec.schedule == "onecycle":
        return torch.optim.lr_scheduler.LambdaLR(opt, one_cycle_factor(total_steps))
    if spec.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _to_format(x: Tensor, channels_last: bool) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int = 1000,
    channels_last: bool = False,
) -> float:
    """Accuracy of ``model`` (eval mode, restored afterwards) on ``images``/``labels``; the
    predicted class is ``predicted_labels`` of the outputs (rounded value for regressors)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        x = _to_format(images[start : start + batch_size].to(device), channels_last)
        y = labels[start : start + batch_size].to(device)
        correct += int((predicted_labels(model(x)) == y).sum())
    model.train(was_training)
    return correct / max(1, images.shape[0])


def _run_epoch(
    spec: ModelSpec,
    model: nn.Module,
    opt,
    sched,
    data: tuple[Tensor, Tensor],
    epoch: int,
    seed: int,
    loss_fn: LossFn,
    batch_transform: BatchTransform | None,
    progress: bool,
    device: torch.device,
) -> dict:
    images, labels = data
    gen = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
    torch.manual_seed(_epoch_seed(seed, epoch) + 1)  # dropout and any hook randomness
    order = torch.randperm(images.shape[0], generator=gen)
    batches = order.split(spec.batch_size)
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(batches, desc=f"{spec.name} epoch {epoch + 1}", disable=not progress, leave=False)
    for idx in bar:
        x, y = images[idx], labels[idx]
        if spec.augment:
            x = augment_crop_flip(x, gen)
        x, y = x.to(device), y.to(device)
        if batch_transform is not None:
            x, y = batch_transform(model, x, y)
        logits = model(_to_format(x, spec.channels_last))
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total_loss += float(loss.detach()) * x.shape[0]
        seen += x.shape[0]
        if y.dim() == 1:
            correct += int((predicted_labels(logits) == y).sum())
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", refresh=False)
    return {"train_loss": total_loss / max(1, seen), "train_accuracy": correct / max(1, seen)}


def _recipe(spec: ModelSpec, epochs: int, seed: int, max_samples: int | None) -> dict:
    return {
        "name": spec.name,
        "epochs": epochs,
        "seed": seed,
        "max_samples": max_samples,
        "batch_size": spec.batch_size,
        "optimizer": spec.optimizer,
        "lr": spec.lr,
        "weight_decay": spec.weight_decay,
        "momentum": spec.momentum,
        "schedule": spec.schedule,
        "augment": spec.augment,
    }


def _initial_weights(init_from: str, spec: ModelSpec, data_dir, cache_dir) -> dict:
    """The state dict of trained zoo model ``init_from``; ``ValueError`` unless its architecture
    matches ``spec``'s."""
    from .checkpoints import load  # local: checkpoints trains through this module

    source = load(init_from, data_dir=data_dir, cache_dir=cache_dir)
    state = source.state_dict()
    expected = spec.build().state_dict()
    shapes = {k: v.shape for k, v in state.items()}
    if shapes != {k: v.shape for k, v in expected.items()}:
        raise ValueError(
            f"init_from: model {init_from!r} does not have the architecture of {spec.name!r}"
        )
    return state


def _try_resume(
    path: Path, recipe: dict, model: nn.Module, opt, sched
) -> tuple[int, list, dict | None]:
    """Restore a matching checkpoint; return (epochs done, history, best epoch so far or None:
    ``{"epoch", "score", "model"}`` of ``train``'s ``select``)."""
    if not path.is_file():
        return 0, [], None
    ckpt = read_checkpoint(path)
    if ckpt.get("recipe") != recipe:
        warnings.warn(
            f"ignoring checkpoint {path}: it was written for a different recipe", stacklevel=3
        )
        return 0, [], None
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    return int(ckpt["epoch"]), list(ckpt["history"]), ckpt.get("best")


def _select_epoch(model: nn.Module, select, stats: dict, best: dict | None) -> dict | None:
    """Score the epoch just trained (``select`` on the model in eval mode, train mode restored)
    into ``stats["selection_score"]``; return the best epoch so far, this one if it scores
    higher than ``best`` (ties keep the earlier epoch)."""
    model.eval()
    with torch.random.fork_rng(devices=[]):
        score = float(select(model))
    model.train()
    stats["selection_score"] = score
    if best is not None and score <= best["score"]:
        return best
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"epoch": stats["epoch"], "score": score, "model": state}


def train(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    epochs: int | None = None,
    seed: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    loss_fn: LossFn | None = None,
    batch_transform: BatchTransform | None = None,
    max_samples: int | None = None,
    device: str | torch.device = "cpu",
    save_as: str | None = None,
    recipe_extra: dict | None = None,
    init_from: str | None = None,
    select: Callable[[nn.Module], float] | None = None,
) -> tuple[nn.Module, dict]:
    """Train zoo model ``name`` with its recipe; return ``(model in eval mode, metrics)``.

    ``select(model) -> score`` (early stopping, e.g. Wong et al. 2020, Sec. 5.3: the PGD
    accuracy of a few training images after every epoch) is called on the model in eval mode
    after every epoch; the epoch with the highest score is kept (in the checkpoint too, so a
    resumed run remembers it) and saved as the final model instead of the last epoch. Its
    settings must be in ``recipe_extra`` so that a checkpoint of other settings is not resumed.

    ``init_from`` starts from the weights of another trained model of the same architecture
    (a zoo name, loaded with ``advx.models.load``: cached checkpoint, bundled weights, or trained
    first) instead of a random initialisation: fine-tuning, e.g. adversarial training of a
    pretrained classifier.

    ``save_as`` names the checkpoint files instead of ``name`` (adversarially trained variants);
    ``recipe_extra`` adds settings that a checkpoint must match to be resumed from.

    ``epochs``/``seed`` override the recipe; ``max_samples`` trains on the first samples only.
    After every epoch a checkpoint (model, optimizer, scheduler, epoch, metrics) is written to
    ``<cache>/<name>.ckpt``; a later call with the same recipe resumes from it. The final model
    goes to ``<cache>/<name>.pt``. Metrics: ``test_accuracy`` (on all available test images),
    ``train_time_s`` (summed over resumed runs), ``epochs``, ``history`` (one dict per epoch).
    See the module docstring for ``loss_fn`` and ``batch_transform``.
    """
    spec = get_spec(name)
    architecture = spec.name
    if save_as is not None:
        spec = dataclasses.replace(spec, name=save_as)
    epochs = spec.epochs if epochs is None else int(epochs)
    seed = spec.seed if seed is None else int(seed)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        return _train(
            spec,
            data_dir,
            epochs,
            seed,
            cache_dir,
            progress,
            loss_fn or default_loss(spec),
            batch_transform,
            max_samples,
            device,
            recipe_extra,
            init_from,
            architecture,
            select,
        )


def _train(
    spec,
    data_dir,
    epochs,
    seed,
    cache_dir,
    progress,
    loss_fn,
    batch_transform,
    max_samples,
    device,
    recipe_extra=None,
    init_from=None,
    architecture=None,
    select=None,
) -> tuple[nn.Module, dict]:
    x_train, y_train = load_dataset(spec.dataset, "train", data_dir, limit=max_samples)
    x_test, y_test = load_dataset(spec.dataset, "test", data_dir)
    torch.manual_seed(seed)
    model = spec.build().to(device)
    if init_from is not None:
        model.load_state_dict(_initial_weights(init_from, spec, data_dir, cache_dir))
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = _optimizer(spec, model)
    steps = -(-x_train.shape[0] // spec.batch_size)
    sched = _scheduler(spec, opt, epochs * steps)
    recipe = _recipe(spec, epochs, seed, max_samples)
    if recipe_extra:
        recipe["extra"] = recipe_extra
    if init_from is not None:
        recipe["init_from"] = init_from
    ckpt_path = resolve_cache_dir(cache_dir) / f"{spec.name}.ckpt"
    start, history, best = _try_resume(ckpt_path, recipe, model, opt, sched)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        stats = _run_epoch(
            spec,
            model,
            opt,
            sched,
            (x_train, y_train),
            epoch,
            seed,
            loss_fn,
            batch_transform,
            progress,
            device,
        )
        stats["epoch_time_s"] = time.perf_counter() - t0
        stats["test_accuracy"] = evaluate(model, x_test, y_test, channels_last=spec.channels_last)
        stats["epoch"] = epoch + 1
        if select is not None:
            best = _select_epoch(model, select, stats, best)
        history.append(stats)
        if progress:
            tqdm.write(
                f"{spec.name} epoch {epoch + 1}/{epochs}: loss {stats['train_loss']:.4f} "
                f"test acc {stats['test_accuracy']:.4f} ({stats['epoch_time_s']:.1f} s)"
            )
        atomic_save(
            {
                "recipe": recipe,
                "epoch": epoch + 1,
                "history": history,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "best": best,
            },
            ckpt_path,
        )
    chosen = history[-1]
    if best is not None:
        model.load_state_dict(best["model"])
        chosen = history[best["epoch"] - 1]
    metrics = {
        "test_accuracy": chosen["test_accuracy"],
        "n_test": int(x_test.shape[0]),
        "train_time_s": sum(h["epoch_time_s"] for h in history),
        "epochs": epochs,
        "seed": seed,
        "history": history,
    }
    if best is not None:
        metrics["selected_epoch"] = best["epoch"]
        metrics["selection_score"] = best["score"]
    model = model.to(memory_format=torch.contiguous_format).eval()
    save_model(model, spec.name, model_path(spec.name, cache_dir), metrics, architecture)
    return model, metrics
