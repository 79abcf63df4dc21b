"""Transfer attacks in the no-box setting (thesis Sec. 4.3.7; Papernot et al. 2016, Liu et al.
2017 for ensembles): adversarial examples are crafted on one source model, or on an ensemble of
sources whose logits are averaged, and judged on a target model that the attack never queries.

:func:`transfer` goes through :func:`advx.evaluation.run_attack` with the target as the judged
model: every example is re-classified on the target by a fresh forward pass, targeted runs may
use ``targets='all'`` (best / average / worst case over the other classes), and runs are stored
and resumed like any other, with the sources and the target named in the configuration. The
target's query counts of a transfer run are zero: the attack only ever sees the sources.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..attacks.registry import AttackInfo
from .runner import RunResult, resolve_attack, run_attack
from .store import ResultsStore

__all__ = ["Ensemble", "transfer", "transferred_attack"]


class Ensemble(nn.Module):
    """Models whose logits are averaged: ``z(x) = (1/m) sum_i z_i(x)`` (the ensemble source of
    Liu et al., ICLR 2017, and of the thesis's Table 10)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        models = list(models)
        if not models or not all(isinstance(m, nn.Module) for m in models):
            raise TypeError("models must be a non-empty sequence of torch.nn.Module")
        self.members = nn.ModuleList(models)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - averaged logits
        return torch.stack([member(x) for member in self.members]).mean(0)


def _source_model(sources: nn.Module | Sequence[nn.Module]) -> nn.Module:
    if isinstance(sources, nn.Module):
        return sources
    if isinstance(sources, (list, tuple)):
        if len(sources) == 1:
            return _source_model(sources[0])
        return Ensemble(sources)
    raise TypeError(f"sources must be a model or a sequence of models, got {type(sources)}")


def transferred_attack(info: AttackInfo, source: nn.Module) -> AttackInfo:
    """``info`` with its function run on ``source`` instead of the model it is handed (the
    judged target): ``attack(target, x, y, **kw) -> info.function(source, x, y, **kw)``."""

    def attack_on_source(_target: nn.Module, inputs: Tensor, labels: Tensor, **kwargs) -> Tensor:
        return info.function(source, inputs, labels, **kwargs)

    attack_on_source.__name__ = getattr(info.function, "__name__", info.name)
    try:  # the runner reads the keywords it may pass (norm=, generator=) off the signature
        attack_on_source.__signature__ = inspect.signature(info.function)
    except (TypeError, ValueError):
        pass
    fields = {f: getattr(info, f) for f in info.__dataclass_fields__}
    return AttackInfo(**(fields | {"function": attack_on_source}))


def transfer(
    sources: nn.Module | Sequence[nn.Module],
    target: nn.Module,
    attack: str | AttackInfo | Callable,
    inputs: Tensor,
    labels: Tensor,
    *,
    source_names: Sequence[str] | None = None,
    target_name: str | None = None,
    norm: float | str | None = None,
    targeted: bool = False,
    targets: Tensor | str | None = None,
    hyperparameters: Mapping | None = None,
    batch_size: int = 100,
    store: ResultsStore | None = None,
    data_spec: Mapping | None = None,
    seed: int = 0,
    progress: bool = True,
) -> RunResult:
    """Craft adversarial examples on ``sources`` (one model, or several whose logits are
    averaged) and judge them on ``target`` by a fresh forward pass (thesis Sec. 4.3.7, Table 8:
    undefended mnist-cnn to its distilled T = 100 version; Table 10: an ensemble of three to the
    Madry model).

    Args:
        sources: the source model or a sequence of source models (an :class:`Ensemble`).
        target: the judged model; never queried by the attack.
        attack: registry name, AttackInfo or attack function (as for ``run_attack``).
        inputs, labels: the images and their true labels.
        source_names, target_name: names stored in the run configuration (default: the class
            names); the run's ``model`` is the target.
        norm, targeted, targets, hyperparameters, batch_size, store, data_spec, seed, progress:
            as for :func:`advx.evaluation.run_attack`; ``targets='all'`` attacks every other
            class and ``summary['target_cases']`` holds the best, average and worst case of the
            success on the target.

    Returns:
        The :class:`RunResult` of the run on the target; ``config['transfer']`` names the
        sources and the target.
    """
    if not isinstance(target, nn.Module):
        raise TypeError(f"target must be a torch.nn.Module, got {type(target).__name__}")
    source = _source_model(sources)
    members = list(sources) if isinstance(sources, (list, tuple)) else [sources]
    if source_names is None:
        source_names = [type(m).__name__ for m in members]
    source_names = list(source_names)
    if len(source_names) != len(members):
        raise ValueError(
            f"source_names: {len(source_names)} names for {len(members)} source models"
        )
    target_name = target_name or type(target).__name__
    info = resolve_attack(attack, dict(hyperparameters or {}))
    extra = {"transfer": {"sources": source_names, "target": target_name}}
    return run_attack(
        target,
        inputs,
        labels,
        transferred_attack(info, source),
        norm=norm,
        targeted=targeted,
        targets=targets,
        hyperparameters=hyperparameters,
        batch_size=batch_size,
        store=store,
        model_name=target_name,
        data_spec=data_spec,
        seed=seed,
        progress=progress,
        config_extra=extra,
    )
