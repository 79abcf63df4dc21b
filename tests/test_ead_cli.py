"""advx attack --minimal (minimal eps of a bounded attack) and --targeted --targets all from the CLI."""

from __future__ import annotations

import pytest

from advx import data
from advx.cli import main
from advx.evaluation import ResultsStore
from advx.models.checkpoints import BUNDLED


@pytest.fixture
def demo_data(monkeypatch):
    if not BUNDLED["mnist-cnn"].is_file():
        pytest.skip("bundled mnist-cnn checkpoint not present")
    monkeypatch.setattr(
        data, "load_dataset", lambda name, split="test", data_dir=None: data.load_demo()
    )


def test_minimal_fgm_all_targets(tmp_path, capsys, demo_data):
    db = tmp_path / "r.sqlite"
    argv = ["attack", "--model", "mnist-cnn", "--attack", "fgm", "--norm", "inf", "--minimal"]
    argv += ["--targeted", "--targets", "all", "--n", "2", "--db", str(db), "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "fgm-minimal" in out and "all 9 targets of 2 correctly classified images" in out
    assert "best" in out and "worst" in out and "EN" in out
    with ResultsStore(db) as store:
        (run,) = store.runs()
        assert run["summary"]["n"] == 18 and "target_cases" in run["summary"]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--attack", "ddn", "--minimal"], "--minimal"),
        (["--attack", "fgm", "--minimal", "--set", "eps=0.1"], "eps"),
        (["--attack", "fgm", "--minimal", "--set", "bogus=1"], "bogus"),
    ],
)
def test_minimal_bad_arguments(argv, named, capsys, tmp_path):
    assert main(["attack", "--model", "mnist-cnn", *argv, "--db", str(tmp_path / "r")]) == 2
    assert named in capsys.readouterr().err
