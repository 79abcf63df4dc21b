"""Plots that read at a glance, the Markdown and HTML reports, and the discoverable CLI
(`advx attacks`, `advx models`, `--version`, the long-run warning)."""

from __future__ import annotations

import itertools
import json

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

from advx import attacks
from advx.cli import LONG_RUN_SECONDS, main, warn_if_long
from advx.evaluation import ResultsStore, run_attack
from advx.evaluation.html import render_html
from advx.evaluation.markdown import render_markdown
from advx.evaluation.plots import (
    ATTACK_COLOURS,
    CostPoint,
    Curve,
    attack_colour,
    log_seconds_axis,
    plot_norm_vs_time,
    plot_robust_accuracy,
)
from advx.evaluation.report import load_runs, robust_accuracy_curves

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    images = torch.rand(12, 1, 4, 4)
    with torch.no_grad():
        labels = model(images).argmax(1)
    return model, images, labels


@pytest.fixture
def store(tmp_path):
    """Three bounded PGD runs (two eps of one setting), one DeepFool run, on a tiny model."""
    model, images, labels = _tiny()
    with ResultsStore(tmp_path / "r.sqlite") as store:
        for eps in (0.05, 0.2):
            run_attack(
                model,
                images,
                labels,
                "pgd",
                norm="inf",
                hyperparameters={"eps": eps, "steps": 3},
                store=store,
                model_name="tiny",
                progress=False,
            )
        run_attack(
            model,
            images,
            labels,
            "deepfool",
            norm=2,
            hyperparameters={"steps": 5},
            store=store,
            model_name="tiny",
            progress=False,
        )
        yield store


def test_bounded_runs_are_their_measured_points_only(store):
    curves = robust_accuracy_curves(store, load_runs(store))
    (pgd,) = [c for c in curves if c.attack == "pgd"]
    assert pgd.epsilons.tolist() == [0.05, 0.2] and not pgd.steps  # no invented eps = 0 point
    (deepfool,) = [c for c in curves if c.attack == "deepfool"]
    assert deepfool.steps and deepfool.accuracy[0] == 1.0
    png = plot_robust_accuracy(curves, None, "t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_colour_per_attack_in_every_figure():
    assert attack_colour("pgd") == ATTACK_COLOURS["pgd"] == attack_colour("PGD")
    assert len(set(ATTACK_COLOURS.values())) == len(ATTACK_COLOURS)
    assert attack_colour("someone-new") == attack_colour("someone-new")
    curves = [
        Curve("pgd Linf", "linf", np.array([0.1]), np.array([0.5]), attack="pgd"),
        Curve("fgm Linf", "linf", np.array([0.1]), np.array([0.7]), attack="fgm"),
    ]
    points = [
        CostPoint("fgm Linf", "linf", 0.001, 0.1, attack="fgm"),
        CostPoint("pgd Linf", "linf", 0.01, 0.1, attack="pgd"),
    ]
    colours = {}
    for figure in (plot_robust_accuracy(curves, None), plot_norm_vs_time(points, None)):
        assert isinstance(figure, bytes)
    fig = plt.figure()
    ax = fig.add_subplot()
    for p in points:
        handle = ax.scatter([p.seconds], [p.mean_norm], color=attack_colour(p.attack))
        colours[p.attack] = tuple(handle.get_facecolor()[0])
    plt.close(fig)
    assert colours["pgd"] == matplotlib.colors.to_rgba(ATTACK_COLOURS["pgd"])


@pytest.mark.parametrize(("low", "high"), [(0.002, 0.07), (1e-4, 30.0), (0.01, 0.012)])
def test_log_time_labels_do_not_overlap(low, high):
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.scatter([low * 2.5, high / 2.5], [1, 2])
    log_seconds_axis(ax, low, high)
    low, high = ax.get_xlim()
    assert high / low >= 10 - 1e-9
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [
        t
        for t in ax.xaxis.get_majorticklabels() + ax.xaxis.get_minorticklabels()
        if t.get_text() and t.get_visible() and low <= t.get_position()[0] <= high
    ]
    assert len(labels) >= 2, [t.get_text() for t in labels]
    boxes = [t.get_window_extent(renderer) for t in labels]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b)
    assert all(t.get_text().endswith(("s", "ms", "µs")) for t in labels)
    plt.close(fig)


def test_markdown_records_command_date_machine(store):
    text = render_markdown(store, title="Tiny", command="advx report --markdown")
    assert text.startswith("# Tiny\n")
    assert "- Command: `advx report --markdown`" in text
    assert "cores, torch " + torch.__version__ in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + 3  # the header, its rule and one row per run
    assert "| id | status | model | attack |" in table[0]


def test_html_is_self_contained(store):
    page = render_html(store, command="advx report --html out")
    assert page.count('<img src="data:image/png;base64,') >= 5  # 2 plots + a grid per run
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert 'id="runs-table"' in page and page.count("<tr class=") == 3


def test_incomplete_run_in_markdown(store):
    store.set_status(1, "interrupted")
    text = render_markdown(store, command="x")
    assert "## Incomplete runs" in text and "interrupted" in text
    assert "resume by calling run_attack" in text  # its data was given as tensors


def test_report_markdown_to_stdout(store, capsys):
    store.close()
    assert main(["report", "--db", str(store.path), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# advx results") and "Command: `advx report --db" in out


def test_attacks_listing(capsys):
    assert main(["attacks"]) == 0
    out = capsys.readouterr().out
    for name, info in attacks.ATTACKS.items():
        assert name in out
        assert info.kind in out
    assert "cw-l2: " in out and "steps=1000" in out and "binary_search_steps=9" in out
    assert main(["attacks", "pgd", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["kind"] == "bounded" and row["hyperparameters"]["eps"] == "required"


def test_models_listing(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["mnist-cnn"]["dataset"] == "mnist" and rows["mnist-cnn"]["cached"] != "no"
    assert "architecture" in rows["cifar-cnn"]
    assert main(["models"]) == 0
    assert "cached" in capsys.readouterr().out


def test_version(capsys):
    from advx import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"advx {__version__}"


def test_long_run_warning(capsys):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 10))
    images = torch.rand(16, 1, 28, 28)
    cw = attacks.get_attack("cw-l2")
    estimate = warn_if_long("attack", cw, {}, model, images, 1000, torch.device("cpu"))
    assert estimate > LONG_RUN_SECONDS  # 9 x 1000 gradient passes per image, 1000 images
    err = capsys.readouterr().err
    assert "cw-l2 with these settings may take up to" in err and "9000 gradient passes" in err
    fgm = attacks.get_attack("fgm")
    warn_if_long("attack", fgm, {"eps": 0.1}, model, images, 100, torch.device("cpu"))
    assert capsys.readouterr().err == ""
