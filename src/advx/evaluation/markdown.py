"""Markdown reports of stored runs, for the versioned results under ``docs/results/``: the
command that made them, the date, the machine, and the runs table."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .provenance import command_text, machine_text, utc_now
from .report import WIDE_COLUMNS, incomplete_notes, load_runs, table_rows, targeted_cases
from .store import ResultsStore


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table ('|' in cells escaped)."""
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |"]
    lines.append("|" + "|".join(" --- " for _ in headers) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _case(value: float, percent: bool) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.4g}"


def render_markdown(
    store: ResultsStore,
    run_ids: Sequence[int] | None = None,
    *,
    title: str = "advx results",
    command: str | None = None,
) -> str:
    """The runs of ``store`` (or those in ``run_ids``) as a Markdown page: title, the command
    that made it, the date, the machine (cores, torch version), the runs table, incomplete runs
    with how to resume them, and the best/average/worst case of targeted runs.

    Args:
        store: the results database.
        run_ids: the runs to include (default: all).
        title: the page's heading.
        command: the command line to record (default: this process's).
    """
    runs = load_runs(store, run_ids)
    lines = [
        f"# {title}",
        "",
        f"- Command: `{command or command_text()}`",
        f"- Date: {utc_now()}",
        f"- Machine: {machine_text()}",
        f"- Database: `{store.path.name}` ({len(runs)} runs; databases are not versioned)",
        "",
        "## Runs",
        "",
    ]
    lines.append(markdown_table(*table_rows(runs, WIDE_COLUMNS)) if runs else "No runs stored.")
    notes = incomplete_notes(runs)
    if notes:
        lines += ["", "## Incomplete runs", ""] + [f"- `{note}`" for note in notes]
    cases = targeted_cases(store, runs)
    if cases:
        headers = ["model", "attack", "targets", "n"]
        headers += [f"{c}: {m}" for c in ("best", "average", "worst") for m in ("success", "norm")]
        rows = [
            [case["model"], case["label"], str(case["targets"]), str(case["n"])]
            + [
                _case(case[c][key], key == "success_rate")
                for c in ("best", "average", "worst")
                for key in ("success_rate", "mean_norm")
            ]
            for case in cases
        ]
        lines += ["", "## Targeted runs: best, average and worst case", ""]
        lines.append(markdown_table(headers, rows))
    return "\n".join(lines) + "\n"
