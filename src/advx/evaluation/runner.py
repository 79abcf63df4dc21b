"""The evaluation runner: runs an attack batch by batch through a counting wrapper, times it,
re-verifies every returned example with a fresh forward pass, computes norms, stores the rows and
summarises the run."""

from __future__ import annotations

import hashlib
import inspect
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..attacks import all_targets, get_attack
from ..attacks.registry import BOUNDED, MINIMAL, AttackInfo
from ..attacks.targets import random_other_classes
from ..blackbox.query import QueryModel
from ..checks import (
    BOX_TOLERANCE,
    INF,
    as_labels,
    attack_mode,
    check_inputs,
    check_labels,
    check_model_matches,
    forward,
    parse_norm,
)
from .counting import CountingModel
from .metrics import (
    elastic_net,
    norm_name,
    perturbation_norms,
    summarize,
    target_case_norms,
    within_budget,
)
from .sanity import model_warnings
from .store import SAMPLE_COLUMNS, ResultsStore, run_key

TARGET_MODES = ("random", "next", "all")


@dataclass
class RunResult:
    """What :func:`run_attack` returns.

    ``samples``: per-sample columns (numpy, sorted by sample index; see ``store.SAMPLE_COLUMNS``),
    including rows resumed from the store. ``adversarials``: the examples computed in this call
    (the original input where ``computed`` is false, i.e. for samples resumed from the store).
    """

    key: str
    config: dict
    summary: dict
    samples: dict[str, np.ndarray]
    adversarials: Tensor
    computed: Tensor
    run_id: int | None = None
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- configuration


def resolve_attack(attack: str | AttackInfo | Callable, hyperparameters: Mapping) -> AttackInfo:
    """An :class:`AttackInfo` for a registry name, an AttackInfo, or a bare attack function (taken
    as bounded when ``eps`` is among the hyperparameters, else as minimal-norm)."""
    if isinstance(attack, AttackInfo):
        return attack
    if isinstance(attack, str):
        return get_attack(attack)
    if callable(attack):
        name = getattr(attack, "__name__", type(attack).__name__)
        kind = BOUNDED if "eps" in hyperparameters else MINIMAL
        return AttackInfo(name=name, function=attack, kind=kind, norms=(1.0, 2.0, INF), any_p=True)
    raise TypeError(f"attack must be a name, an AttackInfo or a function, got {attack!r}")


def _signature_default(function: Callable, name: str):
    try:
        parameter = inspect.signature(function).parameters.get(name)
    except (TypeError, ValueError):
        return None
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default


def resolve_norm(info: AttackInfo, norm) -> tuple[float, bool]:
    """The attack's norm as a float and whether to pass it as ``norm=`` to the function.

    An attack without a ``norm=`` keyword works in its one registered norm; one that takes it
    accepts its registered norms, and any p >= 1 when ``info.any_p``."""
    if not info.takes_norm:
        fixed = float(info.norms[0])
        if norm is not None and parse_norm(norm, None) != fixed:
            raise ValueError(f"norm: attack {info.name} works in the L{fixed:g} norm only")
        return fixed, False
    if norm is None:
        norm = _signature_default(info.function, "norm")
    if norm is None:
        return float(info.norms[0]), True
    p = parse_norm(norm, None if info.any_p else info.norms)
    return p, True


def choose_targets(labels: Tensor, num_classes: int, mode: str = "random", seed: int = 0) -> Tensor:
    """Target classes different from ``labels``: ``'random'`` (uniform over the other classes,
    from a seeded generator) or ``'next'`` ((label + 1) mod K)."""
    if mode == "next":
        return (labels + 1) % num_classes
    if mode == "all":
        raise ValueError("targets='all' pairs every sample with every other class: use run_attack")
    if mode != "random":
        raise ValueError(f"targets must be a tensor or one of {TARGET_MODES}, got {mode!r}")
    generator = torch.Generator().manual_seed(seed)
    return random_other_classes(labels.cpu(), num_classes, generator)


def fingerprint(*tensors: Tensor) -> str:
    """Short SHA-256 of the tensors' values (identifies the evaluation data in a run key)."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------- batches


def check_adversarials(adversarials, inputs: Tensor) -> None:
    """Raise ``ValueError`` unless the attack returned a finite tensor of the inputs' shape
    inside the box [0, 1] (tolerance 1e-6)."""
    if not isinstance(adversarials, Tensor):
        raise ValueError(f"attack returned {type(adversarials).__name__}, expected a Tensor")
    if adversarials.shape != inputs.shape:
        raise ValueError(
            f"attack returned shape {tuple(adversarials.shape)}, expected {tuple(inputs.shape)}"
        )
    if not torch.isfinite(adversarials).all():
        raise ValueError("attack returned NaN or inf values")
    low, high = adversarials.min().item(), adversarials.max().item()
    if low < -BOX_TOLERANCE or high > 1 + BOX_TOLERANCE:
        raise ValueError(f"attack returned values outside [0, 1]: range [{low:.6g}, {high:.6g}]")


def _predict(model: nn.Module, x: Tensor) -> Tensor:
    """Fresh eval-mode prediction, whatever mode an attack left the model in."""
    model.eval()
    with torch.no_grad():
        return model(x).argmax(1)


def _batch_rows(
    indices: range,
    labels: Tensor,
    targets: Tensor | None,
    clean_pred: Tensor,
    adv_pred: Tensor,
    success: Tensor,
    norms: dict[str, Tensor],
    cost: dict[str, float | list[float]],
) -> list[dict]:
    n = len(indices)
    columns = {
        "label": labels.tolist(),
        "target": targets.tolist() if targets is not None else [-1] * n,
        "clean_pred": clean_pred.tolist(),
        "adv_pred": adv_pred.tolist(),
        "success": [int(s) for s in success.tolist()],
        **{name: values.tolist() for name, values in norms.items()},
    }
    rows = []
    for k, index in enumerate(indices):
        row = {name: values[k] for name, values in columns.items()}
        row.update(
            sample_index=index, **{c: v[k] if isinstance(v, list) else v for c, v in cost.items()}
        )
        rows.append(row)
    return rows


@dataclass
class _Plan:
    info: AttackInfo
    kwargs: dict
    p: float
    eps: float | None
    seed: int
    detector: nn.Module | None = None

    @property
    def norm(self) -> str:
        return norm_name(self.p)


def _attack_batch(
    plan: _Plan,
    model: nn.Module,
    counter: CountingModel,
    x: Tensor,
    y: Tensor,
    t: Tensor | None,
    batch_index: int,
) -> tuple[Tensor, dict[str, float], Tensor, Tensor, Tensor, dict[str, Tensor]]:
    """Attack one batch; return the examples, per-sample cost, predictions, success, norms."""
    clean_pred = _predict(model, x)
    torch.manual_seed(plan.seed + batch_index)
    counter.reset()
    # black-box attacks get query access, counted per sample (one query = one image evaluated)
    access = QueryModel(counter) if plan.info.black_box else counter
    start = time.perf_counter()
    adversarials = plan.info.function(access, x, t if t is not None else y, **plan.kwargs)
    seconds = time.perf_counter() - start
    check_adversarials(adversarials, x)
    adversarials = adversarials.detach()
    adv_pred = _predict(model, adversarials)
    success = adv_pred == t if t is not None else adv_pred != y
    norms = perturbation_norms(x, adversarials, p=plan.p)
    if plan.eps is not None and not plan.info.minimal_norm:
        inside = torch.from_numpy(within_budget(norms["lp"], plan.eps))
        success = success.cpu() & inside
    if plan.detector is not None:
        success = success.cpu() & ~plan.detector.detect(adversarials).cpu()
    n = x.shape[0]
    cost = {
        "seconds": seconds / n,
        "forwards": counter.forward_samples / n,
        "backwards": counter.backward_samples / n,
        "queries": _queries(access, n) if plan.info.black_box else counter.forward_samples / n,
    }
    return adversarials, cost, clean_pred.cpu(), adv_pred.cpu(), success.cpu(), norms


def _queries(access: QueryModel, n: int) -> list[float]:
    """Per-sample query counts of a batch of n samples."""
    counts = torch.zeros(n, dtype=torch.float64)
    counts[: min(n, access.queries.numel())] = access.queries[:n].to(torch.float64)
    return counts.tolist()


def _columns(rows: Iterable[Mapping]) -> dict[str, np.ndarray]:
    rows = sorted(rows, key=lambda r: r["sample_index"])
    ints = {"sample_index", "label", "target", "clean_pred", "adv_pred", "success"}
    return {
        c: np.array([r[c] for r in rows], dtype=np.int64 if c in ints else np.float64)
        for c in SAMPLE_COLUMNS
    }


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    if not isinstance(model, nn.Module):
        return fallback
    for parameter in model.parameters():
        return parameter.device
    return fallback


def _resolve_targets(
    targeted: bool, targets: Tensor | str | None, labels: Tensor, num_classes: int, seed: int
) -> Tensor | None:
    if not targeted:
        return None
    if targets is None or isinstance(targets, str):
        targets = choose_targets(labels, num_classes, targets or "random", seed)
    check_labels(targets, labels.shape[0], num_classes, "targets")
    return targets


def _config(
    plan: _Plan,
    model: nn.Module,
    model_name: str | None,
    images: Tensor,
    labels: Tensor,
    targets: Tensor | None,
    data_spec: Mapping | None,
    batch_size: int,
    extra: Mapping | None = None,
) -> dict:
    """The run configuration whose hash is the run key."""
    data = (
        dict(data_spec)
        if data_spec is not None
        else {
            "n": int(images.shape[0]),
            "fingerprint": fingerprint(images, labels),
        }
    )
    config = {
        "model": model_name or type(model).__name__,
        "attack": plan.info.name,
        "norm": plan.norm,
        "targeted": bool(plan.kwargs["targeted"]),
        "minimal_norm": bool(plan.info.minimal_norm),
        "hyperparameters": {k: v for k, v in plan.kwargs.items() if k not in ("targeted", "norm")},
        "data": data,
        "targets": fingerprint(targets) if targets is not None else None,
        "seed": plan.seed,
        "batch_size": batch_size,
    }
    if plan.detector is not None:
        config["detector"] = plan.detector.describe()
    return config | dict(extra or {})


@dataclass
class _Job:
    plan: _Plan
    model: nn.Module
    images: Tensor
    labels: Tensor
    targets: Tensor | None
    batch_size: int
    device: torch.device
    store: ResultsStore | None
    run_id: int | None
    done: set[int]


def _run_batches(job: _Job, keep_images: int, bar) -> tuple[list[dict], Tensor, Tensor]:
    """Attack every batch with a sample not yet stored; return the new rows, the examples and
    the mask of samples computed."""
    rows: list[dict] = []
    adversarials = job.images.clone()
    computed = torch.zeros(job.images.shape[0], dtype=torch.bool)
    counter = CountingModel(job.model)
    n = job.images.shape[0]
    with attack_mode(job.model):
        for batch_index, start in enumerate(range(0, n, job.batch_size)):
            indices = range(start, min(start + job.batch_size, n))
            if all(i in job.done for i in indices):
                continue
            batch = slice(start, indices.stop)
            x, y = job.images[batch].to(job.device), job.labels[batch].to(job.device)
            t = job.targets[batch].to(job.device) if job.targets is not None else None
            adv, cost, clean_pred, adv_pred, success, norms = _attack_batch(
                job.plan, job.model, counter, x, y, t, batch_index
            )
            target_cpu = None if t is None else t.cpu()
            batch_rows = _batch_rows(
                indices, y.cpu(), target_cpu, clean_pred, adv_pred, success, norms, cost
            )
            adversarials[batch] = adv.to(adversarials.device)
            computed[batch] = True
            if job.store is not None:
                kept = [
                    (i, x[k].cpu().numpy(), adv[k].cpu().numpy())
                    for k, i in enumerate(indices)
                    if i < keep_images
                ]
                job.store.add_samples(job.run_id, batch_rows, kept)
            rows.extend(batch_rows)
            bar.update(len(indices))
    return rows, adversarials, computed


# ---------------------------------------------------------------------------------- run


def progress_bar(
    progress: bool | Callable[..., Any], *, total: int, initial: int, unit: str, desc: str
):
    """The progress bar of a run: ``tqdm`` (hidden when ``progress`` is false), or the bar that
    ``progress(total=, initial=, unit=, desc=)`` makes when ``progress`` is a callable (any object
    with ``update(n)`` and ``close()``).

    Args:
        progress: true/false (a tqdm bar, shown or not), or a factory of progress bars.
        total: the number of samples.
        initial: the samples already done (resumed from the store).
        unit: the unit of ``total``.
        desc: the bar's description.
    """
    if callable(progress):
        return progress(total=total, initial=initial, unit=unit, desc=desc)
    return tqdm(total=total, initial=initial, unit=unit, desc=desc, disable=not progress)


def target_cases(samples: Mapping[str, np.ndarray], targets_per_sample: int, by: str) -> dict:
    """Best / average / worst case over the targets of a ``targets='all'`` run (L1, L2, Linf and
    the elastic-net distance of the chosen target; the target chosen by the norm ``by``), over
    the correctly classified samples (Chen et al., AAAI 2018, Sec. 4.3.2)."""
    correct = (samples["clean_pred"] == samples["label"]).reshape(-1, targets_per_sample).all(1)
    keep = np.repeat(correct, targets_per_sample)
    norms = {name: samples[name][keep] for name in ("l1", "l2", "linf")}
    norms["en"] = elastic_net(norms["l1"], norms["l2"])
    if by not in norms:  # a run in another p: its own column
        norms[by] = samples["lp"][keep]
    cases = target_case_norms(norms, samples["success"][keep], targets_per_sample, by)
    return cases | {"samples": int(correct.sum()), "targets_per_sample": targets_per_sample}


def run_attack(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    attack: str | AttackInfo | Callable,
    *,
    norm: float | str | None = None,
    targeted: bool = False,
    targets: Tensor | str | None = None,
    hyperparameters: Mapping | None = None,
    batch_size: int = 100,
    store: ResultsStore | None = None,
    model_name: str | None = None,
    data_spec: Mapping | None = None,
    epsilons: Iterable[float] | None = None,
    seed: int = 0,
    keep_images: int = 8,
    progress: bool | Callable[..., Any] = True,
    detector: nn.Module | None = None,
    config_extra: Mapping | None = None,
) -> RunResult:
    """Run ``attack`` on ``images`` batch by batch and measure it honestly.

    The model is wrapped in a :class:`CountingModel`; each batch is timed with
    ``time.perf_counter``, ``torch.manual_seed(seed + batch_index)`` is set before it (so a
    resumed run gives the same numbers), and every returned example is checked (shape, finite,
    inside [0, 1], else ``ValueError``) and re-classified with a fresh forward pass: success is
    never taken from the attack. For bounded attacks an example outside the ``eps`` budget does
    not count as a success. With a ``store``, rows are committed per batch and a run with the same
    configuration (model name, attack, norm, targeted, hyperparameters, data, seed, batch size)
    skips the samples already stored. ``targets``: a tensor of target classes, or ``'random'``
    (default when targeted) / ``'next'``, or ``'all'``: every sample is attacked towards each of
    the K - 1 other classes (``advx.attacks.all_targets``; the sample rows are then the pairs)
    and ``summary['target_cases']`` holds the best, average and worst case
    (:func:`target_cases`). ``data_spec`` identifies the data in the run key
    (default: a fingerprint of images, labels and targets). ``epsilons``: where to read robust
    accuracy for minimal-norm attacks. The first ``keep_images`` examples are stored as images.
    ``detector``: an object with ``detect(x) -> bool tensor`` and ``describe() -> dict`` (e.g.
    ``advx.defenses.FeatureSqueezing``); an example then succeeds only if it is adversarial and
    not detected (thesis Sec. 4.3.7.3), and the detector is part of the run key.
    ``config_extra``: more entries of the run configuration (e.g. a transfer run's sources).
    ``progress``: show a tqdm bar over the samples, or a callable that makes the bar (see
    :func:`progress_bar`; e.g. a Ray worker's ``ray.experimental.tqdm_ray.tqdm``).
    """
    hyperparameters = dict(hyperparameters or {})
    info = resolve_attack(attack, hyperparameters)
    p, pass_norm = resolve_norm(info, norm)
    check_inputs(images, "images")
    labels = as_labels(labels, images.shape[0])
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    device = _model_device(model, images.device)
    check_model_matches(model, images[:1].to(device), "images")
    with attack_mode(model), torch.no_grad():
        num_classes = forward(model, images[:1].to(device), "images").shape[1]
    check_labels(labels, images.shape[0], num_classes)
    every_target = targeted and isinstance(targets, str) and targets == "all"
    if every_target:
        index, targets = all_targets(labels.cpu(), num_classes)
        images, labels = images[index.to(images.device)], labels[index.to(labels.device)]
    targets = _resolve_targets(targeted, targets, labels, num_classes, seed)
    kwargs = {**hyperparameters, "targeted": targeted}
    if pass_norm:
        kwargs["norm"] = p
    eps = kwargs.get("eps")
    eps = float(eps) if isinstance(eps, (int, float)) and not isinstance(eps, bool) else None
    plan = _Plan(info, kwargs, p, eps, seed, detector)
    config = _config(
        plan, model, model_name, images, labels, targets, data_spec, batch_size, config_extra
    )
    run_id, done = store.open_run(config) if store is not None else (None, set())
    job = _Job(plan, model, images, labels, targets, batch_size, device, store, run_id, done)
    bar = progress_bar(
        progress, total=len(images), initial=len(done), unit="sample", desc=info.name
    )
    try:
        rows, adversarials, computed = _run_batches(job, keep_images, bar)
    except BaseException:
        if store is not None:
            store.set_status(run_id, "interrupted")
        raise
    finally:
        bar.close()
    samples = store.samples(run_id) if store is not None else _columns(rows)
    summary = summarize(
        samples, norm=plan.norm, minimal_norm=info.minimal_norm, eps=eps, epsilons=epsilons
    )
    summary["attack"], summary["model"] = info.name, config["model"]
    if every_target:
        summary["target_cases"] = target_cases(samples, num_classes - 1, plan.norm)
    summary["warnings"] = model_warnings(model, images, labels, device)
    if store is not None:
        store.finish_run(run_id, summary)
    return RunResult(run_key(config), config, summary, samples, adversarials, computed, run_id)
