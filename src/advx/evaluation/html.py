"""A self-contained HTML report of stored runs (Jinja2 template shipped with the package;
matplotlib plots embedded as base64 PNG, no scripts, no network): the runs table, incomplete runs
with how to resume them, robust accuracy against eps per model (one colour per attack), norm
against time, an image grid per run and the best / average / worst case of targeted runs."""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path

from .plots import plot_image_grid, plot_norm_vs_time, plot_robust_accuracy
from .provenance import command_text, machine_text, utc_now
from .report import (
    WIDE_COLUMNS,
    by_model,
    cost_points,
    data_text,
    figure_title,
    grid_for_run,
    incomplete_notes,
    load_runs,
    provenance_of,
    robust_accuracy_curves,
    run_label,
    table_rows,
    targeted_cases,
)
from .store import ResultsStore

TEMPLATE = "report.html.j2"


def _environment():
    try:
        import jinja2
    except ImportError:  # pragma: no cover - jinja2 is a dependency
        raise RuntimeError("the HTML report needs Jinja2: pip install jinja2") from None
    return jinja2.Environment(
        loader=jinja2.PackageLoader("advx.evaluation", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def png_data_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI (embedded in the page, nothing fetched)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure(title: str, png: bytes, caption: str = "") -> dict:
    return {"title": title, "src": png_data_uri(png), "caption": caption}


def _model_sections(store: ResultsStore, runs: Sequence[dict]) -> list[dict]:
    sections = []
    for model, group in by_model(runs).items():
        figures = []
        curves = robust_accuracy_curves(store, group)
        if curves:
            title = figure_title("Robust accuracy", group)
            figures.append(
                _figure(
                    title,
                    plot_robust_accuracy(curves, None, title),
                    "Minimal-norm attacks: the share of samples still classified correctly at "
                    "each eps, read off their per-sample norms (step curves). Bounded attacks: "
                    "the measured robust accuracy at the eps they ran with (points only).",
                )
            )
        points = cost_points(group)
        if points:
            title = figure_title("Mean norm vs time", group)
            figures.append(
                _figure(
                    title,
                    plot_norm_vs_time(points, None, title),
                    "Mean perturbation norm of the successful examples against the seconds per "
                    "sample, one point per run (lower left is better).",
                )
            )
        grids = []
        for run in group:
            grid = grid_for_run(store, run)
            if grid is None:
                continue
            title = f"run {run['id']}: {run_label(run)} on {model}, {data_text(run['config'])}"
            png = plot_image_grid(
                grid["originals"], [grid["row"]], None, grid["true_classes"], title
            )
            grids.append(_figure(title, png))
        sections.append({"model": model, "figures": figures, "grids": grids})
    return sections


def render_html(
    store: ResultsStore,
    run_ids: Sequence[int] | None = None,
    *,
    db_label: str | None = None,
    command: str | None = None,
) -> str:
    """The report page as one HTML string (plots embedded).

    Args:
        store: the results database.
        run_ids: the runs to show (default: all).
        db_label: how to name the database on the page (default: its path).
        command: the command that made the report (default: this process's).
    """
    runs = load_runs(store, run_ids)
    headers, rows = table_rows(runs, WIDE_COLUMNS)
    db = db_label or str(store.path)
    context = {
        "title": "advx report",
        "db": db,
        "date": utc_now(),
        "machine": "; ".join(provenance_of(runs)[1]) or f"{machine_text()} (of this report)",
        "made_by": provenance_of(runs)[0],
        "command": command or command_text(),
        "headers": headers,
        "rows": [
            {"cells": cells, "complete": run.get("complete", False)}
            for run, cells in zip(runs, rows)
        ],
        "incomplete": incomplete_notes(runs, db),
        "sections": _model_sections(store, runs),
        "targeted": targeted_cases(store, runs),
    }
    return _environment().get_template(TEMPLATE).render(**context)


def write_html(
    store: ResultsStore,
    out_dir: str | os.PathLike,
    run_ids: Sequence[int] | None = None,
    *,
    command: str | None = None,
) -> Path:
    """Write the report page to ``out_dir/index.html`` and return its path (see
    :func:`render_html`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    path.write_text(render_html(store, run_ids, command=command), encoding="utf-8")
    return path
