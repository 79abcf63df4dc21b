"""Reports of stored runs: the runs table (text, and the rows the HTML and Markdown reports
use), the data behind the plots, and PNG plots.

Incomplete runs (interrupted or still running) are listed with their status, the samples stored
so far and the command that resumes them.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .metrics import robust_accuracy_from_norms, summarize, target_case_summary
from .plots import (
    CostPoint,
    Curve,
    GridRow,
    plot_image_grid,
    plot_norm_vs_time,
    plot_robust_accuracy,
)
from .store import ResultsStore

NORM_LABELS = {"l0": "L0", "l1": "L1", "l2": "L2", "linf": "Linf"}
NORM_ARGUMENTS = {"l1": "1", "l2": "2", "linf": "inf"}
_SKIP_PARAMS = ("generator",)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _percent(value) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{100 * value:.1f}%")
    )


def _number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


def params_text(hyperparameters: Mapping) -> str:
    """Compact ``key=value`` text of a run's hyperparameters."""
    parts = []
    for key, value in sorted(hyperparameters.items()):
        if key in _SKIP_PARAMS:
            continue
        parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


def run_label(run: Mapping) -> str:
    """Short label of a run: attack, norm, eps (and 'targeted')."""
    config = run["config"]
    label = f"{config['attack']} {NORM_LABELS.get(config['norm'], config['norm'])}"
    eps = config["hyperparameters"].get("eps")
    if isinstance(eps, (int, float)) and not config.get("minimal_norm"):
        label += f" eps={eps:g}"
    if config.get("targeted"):
        label += " targeted"
    return label


def data_text(config: Mapping, first: bool = True) -> str:
    """The run's data in words: 'mnist test, first 100', 'npz my.npz, first 50', ... (without
    the count when ``first`` is false)."""
    data = config.get("data") or {}
    if "source" in data:
        name = f"{data['source']} {Path(str(data.get('path', '?'))).name}"
    elif "dataset" in data:
        name = " ".join(str(data[k]) for k in ("dataset", "split") if k in data)
    else:
        name = f"{data.get('n', '?')} inputs (fingerprint {data.get('fingerprint', '?')})"
    if first and "first" in data:
        name += f", first {data['first']}"
    return name


def class_names(config: Mapping) -> Sequence[str] | None:
    """Class names of the run's data (ImageFolder folders, CIFAR-10's ten), else ``None``."""
    data = config.get("data") or {}
    if data.get("classes"):
        return list(data["classes"])
    if str(data.get("dataset", "")).lower().replace("-", "") == "cifar10":
        return list(CIFAR10_CLASSES)
    return None


def class_text(index: int, names: Sequence[str] | None) -> str:
    """A class index as its name when known, else as the number."""
    if names is not None and 0 <= index < len(names):
        return str(names[index])
    return str(index)


# ------------------------------------------------------------------------- loading runs


def _partial_summary(store: ResultsStore, run: Mapping) -> dict | None:
    """The summary of the samples stored so far for a run without one."""
    samples = store.samples(run["id"])
    if samples["sample_index"].size == 0:
        return None
    config = run["config"]
    eps = config["hyperparameters"].get("eps")
    bounded_eps = (
        float(eps)
        if isinstance(eps, (int, float))
        and not isinstance(eps, bool)
        and not config["minimal_norm"]
        else None
    )
    return summarize(
        samples, norm=config["norm"], minimal_norm=config["minimal_norm"], eps=bounded_eps
    )


def count_samples(store: ResultsStore, run_id: int) -> int:
    """How many sample rows the store holds for a run."""
    row = store.connection.execute(
        "SELECT COUNT(*) FROM samples WHERE run_id = ?", (run_id,)
    ).fetchone()
    return int(row[0])


def load_runs(store: ResultsStore, run_ids: Sequence[int] | None = None) -> list[dict]:
    """The stored runs (or those in ``run_ids``), each with ``stored`` (sample rows so far),
    ``complete`` (bool) and, for an incomplete run, the ``summary`` of its stored samples
    (``None`` if it has none)."""
    runs = []
    for run in store.runs():
        if run_ids is not None and run["id"] not in run_ids:
            continue
        run = dict(run)
        run["complete"] = run["status"] == "complete" and run.get("summary") is not None
        run["stored"] = count_samples(store, run["id"])
        if not run["complete"]:
            run["summary"] = _partial_summary(store, run)
        runs.append(run)
    return runs


def expected_samples(run: Mapping) -> int | None:
    """How many samples the run attacks, when its data specification records it."""
    data = run["config"].get("data") or {}
    for key in ("first", "n"):
        if isinstance(data.get(key), int):
            return data[key]
    return None


def status_text(run: Mapping) -> str:
    """'complete', or e.g. 'interrupted (40/100 stored)'."""
    if run.get("complete", run.get("status") == "complete"):
        return "complete"
    total = expected_samples(run)
    stored = run.get("stored", 0)
    return f"{run['status']} ({stored}/{total if total is not None else '?'} stored)"


def resume_command(run: Mapping) -> str | None:
    """The ``advx attack`` command that resumes an incomplete run (same configuration, so the
    stored batches are skipped); ``None`` where the data cannot be named on the command line."""
    config = run["config"]
    data = config.get("data") or {}
    argv = ["advx", "attack", "--model", str(data.get("model_argument", config["model"]))]
    if data.get("weights"):
        argv += ["--weights", str(data["weights"])]
    for key in ("mean", "std"):
        if data.get(key):
            argv += [f"--{key}", ",".join(f"{v:g}" for v in data[key])]
    if "source" in data:
        argv += ["--data", f"{data['source']}:{data['path']}"]
        if data.get("size"):
            argv += ["--size", str(data["size"])]
    elif data.get("dataset") in ("mnist", "cifar10"):
        if data.get("split", "test") != "test":
            argv += ["--split", str(data["split"])]
    else:
        return None
    argv += ["--attack", str(config["attack"])]
    if config["norm"] in NORM_ARGUMENTS:
        argv += ["--norm", NORM_ARGUMENTS[config["norm"]]]
    if config.get("targeted"):
        argv.append("--targeted")
        if data.get("targets"):
            argv += ["--targets", str(data["targets"])]
    for key, value in sorted(config["hyperparameters"].items()):
        if key not in _SKIP_PARAMS:
            argv += ["--set", f"{key}={value}"]
    if "first" in data:
        argv += ["--n", str(data["first"])]
    argv += ["--batch-size", str(config["batch_size"]), "--seed", str(config["seed"])]
    return shlex.join(argv)


def incomplete_notes(runs: Sequence[Mapping], db: str | os.PathLike | None = None) -> list[str]:
    """One line per incomplete run: its status and how to resume it."""
    lines = []
    for run in runs:
        if run.get("complete"):
            continue
        command = resume_command(run)
        where = f" --db {shlex.quote(str(db))}" if db is not None and command else ""
        how = (
            f"resume with: {command}{where}"
            if command
            else "resume by calling run_attack with the same arguments and store"
        )
        lines.append(f"run {run['id']} is {status_text(run)}; {how}")
    return lines


# ------------------------------------------------------------------------------ columns


def attack_access(attack: str) -> str:
    """'black-box' or 'white-box' for a registered attack name ('white-box' when unknown)."""
    from ..attacks import ATTACKS

    info = ATTACKS.get(attack)
    return info.access if info is not None else "white-box"


def cost_text(run: Mapping) -> str:
    """Gradients per sample for white-box attacks, queries (forward passes) for black-box."""
    summary = run.get("summary") or {}
    if attack_access(run["config"]["attack"]) == "black-box":
        value = summary.get("queries_per_sample", summary.get("forwards_per_sample"))
        unit = "quer"
        return f"{_number(value)} {unit}{'y' if value == 1 else 'ies'}"
    value = summary.get("backwards_per_sample")
    return f"{_number(value)} gradient{'' if value == 1 else 's'}"


def provenance_of(runs: Sequence[Mapping]) -> tuple[list[str], list[str]]:
    """The distinct commands (with their dates) and machines recorded with the runs by the
    CLI; for a run without them, the ``advx attack`` command rebuilt from its configuration
    (runs on tensors given through the Python API have neither)."""
    from .provenance import machine_text

    commands, machines = [], []
    for run in runs:
        found = (run.get("summary") or {}).get("provenance")
        if not found:
            rebuilt = resume_command(run)
            if rebuilt is not None and f"{rebuilt}  (rebuilt from the run)" not in commands:
                commands.append(f"{rebuilt}  (rebuilt from the run)")
            continue
        command = f"{found.get('command', '?')}  ({found.get('date', '?')})"
        machine = machine_text(found.get("machine") or {})
        if not any(c.split("  (")[0] == command.split("  (")[0] for c in commands):
            commands.append(command)
        if machine not in machines:
            machines.append(machine)
    return commands, machines


def warnings_text(run: Mapping) -> str:
    """The runner's warnings stored with the run, joined; '' when none."""
    summary = run.get("summary") or {}
    found = summary.get("warnings") or run.get("warnings") or []
    if isinstance(found, str):
        return found
    return "; ".join(str(w) for w in found)


def _robust_text(summary: Mapping | None) -> str:
    robust = (summary or {}).get("robust_accuracy") or {}
    if not robust:
        return "-"
    items = list(robust.items())
    if len(items) > 3:
        items = items[:: max(1, len(items) // 3)][:3]
    return ", ".join(f"{_percent(acc)} at {eps:g}" for eps, acc in items)


def _stat(key: str) -> Callable[[Mapping], str]:
    return lambda r: _number(((r.get("summary") or {}).get("norm_stats") or {}).get(key))


def _summary_value(key: str, fmt: Callable) -> Callable[[Mapping], str]:
    return lambda r: fmt((r.get("summary") or {}).get(key))


def _n_text(run: Mapping) -> str:
    summary = run.get("summary")
    return str(summary["n"]) if summary else str(run.get("stored", 0))


COLUMNS: list[tuple[str, Callable[[Mapping], str]]] = [
    ("id", lambda r: str(r["id"])),
    ("status", status_text),
    ("model", lambda r: r["config"]["model"]),
    (
        "attack",
        lambda r: r["config"]["attack"] + (" (targeted)" if r["config"].get("targeted") else ""),
    ),
    ("norm", lambda r: NORM_LABELS.get(r["config"]["norm"], r["config"]["norm"])),
    ("parameters", lambda r: params_text(r["config"]["hyperparameters"])),
    ("n", _n_text),
    ("clean acc", _summary_value("clean_accuracy", _percent)),
    ("success", _summary_value("success_rate", _percent)),
    ("fooling ratio", _summary_value("fooling_ratio", _percent)),
    ("mean norm", _stat("mean")),
    ("median norm", _stat("median")),
    ("max norm", _stat("max")),
    ("robust acc @eps", lambda r: _robust_text(r.get("summary"))),
    ("s/sample", _summary_value("seconds_per_sample", _number)),
    ("forward passes/sample", _summary_value("forwards_per_sample", _number)),
    ("backward passes/sample", _summary_value("backwards_per_sample", _number)),
    ("queries/sample", _summary_value("queries_per_sample", _number)),
]

# The HTML/Markdown runs table: the text table's columns with the cost as gradients or queries
# and the runner's warnings.
WIDE_COLUMNS: list[tuple[str, Callable[[Mapping], str]]] = [
    *(
        c
        for c in COLUMNS
        if c[0] not in ("forward passes/sample", "backward passes/sample", "queries/sample")
    ),
    ("gradients or queries/sample", cost_text),
    ("warnings", warnings_text),
]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Fixed-width text table: columns padded to their widest cell, a rule under the header."""
    widths = [
        max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
        for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def table_rows(
    runs: Sequence[Mapping], columns: Sequence[tuple[str, Callable]] = COLUMNS
) -> tuple[list[str], list[list[str]]]:
    """Headers and cell texts of the runs table."""
    return [h for h, _ in columns], [[f(r) for _, f in columns] for r in runs]


def runs_table(runs: Sequence[Mapping]) -> str:
    """Text table of runs (from :func:`load_runs`, or ``ResultsStore.runs()``), incomplete runs
    included with their status."""
    if not runs:
        return "(no runs stored)"
    runs = [r if "complete" in r else {**r, "complete": r["status"] == "complete"} for r in runs]
    return format_table(*table_rows(runs))


# ------------------------------------------------------------------------------- groups


def _group_key(run: Mapping) -> str:
    config = run["config"]
    params = {k: v for k, v in config["hyperparameters"].items() if k != "eps"}
    return repr(
        (
            config["model"],
            config["attack"],
            config["norm"],
            config.get("targeted"),
            sorted(params.items()),
            config["data"],
        )
    )


def by_model(runs: Sequence[Mapping]) -> dict[str, list[Mapping]]:
    """Runs with a summary grouped by model name, in order of first appearance."""
    groups: dict[str, list[Mapping]] = {}
    for run in runs:
        if run.get("summary"):
            groups.setdefault(run["config"]["model"], []).append(run)
    return groups


def figure_title(kind: str, runs: Sequence[Mapping]) -> str:
    """'<kind>: model M on <data>, n = N' (n ranges when the runs differ)."""
    models = sorted({r["config"]["model"] for r in runs})
    datasets = sorted({data_text(r["config"], first=False) for r in runs})
    counts = sorted({r["summary"]["n"] for r in runs if r.get("summary")})
    n = str(counts[0]) if len(counts) == 1 else (f"{counts[0]}-{counts[-1]}" if counts else "0")
    model = models[0] if len(models) == 1 else f"{len(models)} models"
    data = datasets[0] if len(datasets) == 1 else f"{len(datasets)} data sets"
    return f"{kind}: {model} on {data}, n = {n}"


def robust_accuracy_curves(store: ResultsStore, runs: Sequence[Mapping]) -> list[Curve]:
    """Curves of robust accuracy against eps: a step curve per minimal-norm run (from its
    per-sample norms) and, per group of bounded runs that differ only in eps, the measured
    points (one per eps)."""
    curves: list[Curve] = []
    bounded: dict[str, list[Mapping]] = {}
    for run in runs:
        if not run.get("summary"):
            continue
        if run["config"].get("minimal_norm"):
            curves.append(_minimal_curve(store, run))
        elif run["summary"].get("robust_accuracy"):
            bounded.setdefault(_group_key(run), []).append(run)
    for group in bounded.values():
        points = sorted(
            (eps, acc) for r in group for eps, acc in r["summary"]["robust_accuracy"].items()
        )
        label = run_label(group[0]).split(" eps=")[0]
        curves.append(
            Curve(
                label,
                group[0]["config"]["norm"],
                np.array([e for e, _ in points]),
                np.array([a for _, a in points]),
                attack=group[0]["config"]["attack"],
            )
        )
    return curves


def _minimal_curve(store: ResultsStore, run: Mapping) -> Curve:
    norm = run["config"]["norm"]
    samples = store.samples(run["id"])
    correct = samples["clean_pred"] == samples["label"]
    success = samples["success"].astype(bool)
    norms = samples[norm]
    finite = norms[success & correct]
    top = float(finite.max()) * 1.05 if finite.size else 1.0
    grid = np.linspace(0.0, top, 200)
    accuracy = robust_accuracy_from_norms(correct, success, norms, grid)
    return Curve(
        run_label(run),
        norm,
        grid,
        np.array(list(accuracy.values())),
        steps=True,
        attack=run["config"]["attack"],
    )


def cost_points(runs: Sequence[Mapping]) -> list[CostPoint]:
    """Mean norm against seconds per sample for every run with successes."""
    points = []
    for run in runs:
        summary = run.get("summary")
        if not summary or math.isnan(summary["norm_stats"]["mean"]):
            continue
        points.append(
            CostPoint(
                run_label(run),
                run["config"]["norm"],
                summary["seconds_per_sample"],
                summary["norm_stats"]["mean"],
                attack=run["config"]["attack"],
            )
        )
    return points


def grid_for_run(store: ResultsStore, run: Mapping, max_images: int = 8) -> dict | None:
    """What :func:`plot_image_grid` needs for one run (originals, true classes, a
    :class:`GridRow`), from its stored images; ``None`` when it has none."""
    images = store.images(run["id"])[:max_images]
    if not images:
        return None
    samples = store.samples(run["id"])
    position = {int(i): k for k, i in enumerate(samples["sample_index"])}
    names = class_names(run["config"])
    truths, predictions, success = [], [], []
    for index, _, _ in images:
        k = position.get(int(index))
        truths.append(class_text(int(samples["label"][k]), names) if k is not None else "?")
        predictions.append(class_text(int(samples["adv_pred"][k]), names) if k is not None else "?")
        success.append(bool(samples["success"][k]) if k is not None else False)
    label = run_label(run)
    if run["config"].get("targeted"):
        targets = [
            int(samples["target"][position[int(i)]]) for i, _, _ in images if int(i) in position
        ]
        label += "\n(targets " + " ".join(class_text(t, names) for t in targets) + ")"
    return {
        "originals": [o for _, o, _ in images],
        "true_classes": truths,
        "row": GridRow(label, [a for _, _, a in images], predictions, success),
    }


def image_grid(
    store: ResultsStore,
    runs: Sequence[Mapping],
    path: str | os.PathLike | None,
    max_runs: int = 6,
    max_images: int = 8,
):
    """Grid of originals, perturbations and adversarials for the runs with stored images that
    share the first such run's inputs; ``None`` when no run has images."""
    chosen, first = [], None
    for run in runs:
        grid = grid_for_run(store, run, max_images) if run.get("summary") else None
        if grid is None:
            continue
        if first is None:
            first = grid
        if len(grid["originals"]) != len(first["originals"]) or any(
            o.shape != r.shape or not np.array_equal(o, r)
            for r, o in zip(first["originals"], grid["originals"])
        ):
            continue
        chosen.append(grid["row"])
        if len(chosen) == max_runs:
            break
    if not chosen:
        return None
    title = figure_title("Adversarial examples", [r for r in runs if r.get("summary")])
    return plot_image_grid(first["originals"], chosen, path, first["true_classes"], title)


def _all_target_case(run: Mapping) -> dict:
    """The best/average/worst entry of one ``targets='all'`` run, from its summary."""
    cases = run["summary"]["target_cases"]
    norm = run["config"]["norm"]
    return {
        "label": run_label(run),
        "model": run["config"]["model"],
        "norm": NORM_LABELS.get(norm, norm),
        "targets": cases["targets_per_sample"],
        "n": cases["samples"],
        **{
            case: {"success_rate": cases[case]["success_rate"], "mean_norm": cases[case][norm]}
            for case in ("best", "average", "worst")
        },
    }


def targeted_cases(store: ResultsStore, runs: Sequence[Mapping]) -> list[dict]:
    """Best, average and worst case over target classes (Carlini & Wagner 2017, Sec. VI) for
    each group of targeted runs that differ only in their targets: the (sample, target) norm
    matrix over the samples every run of the group attacked (inf where the attack failed).

    A run made with ``targets='all'`` (every sample towards every other class in one run) is a
    group of its own, read from its summary.

    Returns one dict per group: ``label``, ``model``, ``norm``, ``targets`` (runs in the
    group, or targets per sample), ``n`` and the ``best``/``average``/``worst`` cases of
    :func:`advx.evaluation.metrics.target_case_summary`.
    """
    groups: dict[str, list[Mapping]] = {}
    cases = []
    for run in runs:
        if run.get("summary") and run["summary"].get("target_cases"):
            cases.append(_all_target_case(run))
        elif run.get("summary") and run["config"].get("targeted"):
            config = run["config"]
            key = repr(
                (
                    config["model"],
                    config["attack"],
                    config["norm"],
                    sorted(config["hyperparameters"].items()),
                    config["data"],
                )
            )
            groups.setdefault(key, []).append(run)
    for group in groups.values():
        norm = group[0]["config"]["norm"]
        columns = []
        for run in group:
            samples = store.samples(run["id"])
            correct = samples["clean_pred"] == samples["label"]
            values = np.where(samples["success"].astype(bool), samples[norm], np.inf)
            columns.append(dict(zip(samples["sample_index"][correct].tolist(), values[correct])))
        shared = sorted(set.intersection(*(set(c) for c in columns)))
        if not shared:
            continue
        matrix = np.array([[c[i] for c in columns] for i in shared])
        cases.append(
            {
                "label": run_label(group[0]),
                "model": group[0]["config"]["model"],
                "norm": NORM_LABELS.get(norm, norm),
                "targets": len(group),
                "n": len(shared),
                **target_case_summary(matrix),
            }
        )
    return cases


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "model"


def write_report(
    store: ResultsStore, out_dir: str | os.PathLike, run_ids: Sequence[int] | None = None
) -> list[Path]:
    """Write PNG plots of the stored runs (or those in ``run_ids``) into ``out_dir``:
    ``robust_accuracy.png``, ``norm_vs_time.png`` and ``adversarial_grid.png`` for the first
    model, the same names suffixed ``-<model>`` for the others. Return the paths written."""
    runs = load_runs(store, run_ids)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k, (model, group) in enumerate(by_model(runs).items()):
        suffix = "" if k == 0 else f"-{_slug(model)}"
        curves = robust_accuracy_curves(store, group)
        if curves:
            title = figure_title("Robust accuracy", group)
            path = out / f"robust_accuracy{suffix}.png"
            written.append(plot_robust_accuracy(curves, path, title))
        points = cost_points(group)
        if points:
            title = figure_title("Mean norm vs time", group)
            written.append(plot_norm_vs_time(points, out / f"norm_vs_time{suffix}.png", title))
        grid = image_grid(store, group, out / f"adversarial_grid{suffix}.png")
        if grid is not None:
            written.append(grid)
    return written
