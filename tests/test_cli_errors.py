"""The CLI is as strict as the attacks (issue 13): every error ends in one line naming the file
or argument and what to do, a traceback only with --debug; --n beyond the split warns; an
uncached zoo model says it is training and Ctrl-C says so; incomplete runs are reported with
how to resume them."""

from __future__ import annotations

import functools
import shlex
import sqlite3

import pytest
import torch

from advx import attacks, data, models
from advx.attacks.registry import AttackInfo
from advx.cli import main
from advx.evaluation import ResultsStore
from advx.models.checkpoints import BUNDLED


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def demo_data(monkeypatch):
    """Serve the bundled demo images (500) as the MNIST test set (offline, fast)."""
    if not BUNDLED["mnist-cnn"].is_file():
        pytest.skip("bundled mnist-cnn checkpoint not present")
    monkeypatch.setattr(
        data, "load_dataset", lambda name, split="test", data_dir=None: data.load_demo()
    )


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty model cache."""
    directory = tmp_path / "cache"
    directory.mkdir()
    monkeypatch.setenv("ADVX_CACHE", str(directory))
    return directory


def _attack(db, model="mnist-cnn", *extra):
    return ["attack", "--model", model, "--attack", "fgm", "--set", "eps=0.1", "--n", "8"] + [
        "--db",
        str(db),
        "--quiet",
        *extra,
    ]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_corrupted_or_empty_checkpoint(cache, tmp_path, demo_data, capsys, content):
    (cache / "mnist-cnn.pt").write_bytes(content)
    assert main(_attack(tmp_path / "r.sqlite")) == 1
    line = _one_error_line(capsys)
    assert str(cache / "mnist-cnn.pt") in line
    assert "delete it or run `advx train mnist-cnn` again" in line
    assert "weights_only" not in line


def test_checkpoint_with_wrong_keys(cache, tmp_path, demo_data, capsys):
    blob = {"state_dict": {"foo": torch.zeros(2)}, "architecture": "mnist-cnn"}
    torch.save(blob, cache / "mnist-cnn.pt")
    assert main(_attack(tmp_path / "r.sqlite")) == 1
    line = _one_error_line(capsys)
    assert "mnist-cnn.pt" in line and "not for this architecture" in line


def test_debug_shows_the_traceback(cache, tmp_path, demo_data):
    (cache / "mnist-cnn.pt").write_bytes(b"")
    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises, it is not swallowed
        main([*_attack(tmp_path / "r.sqlite"), "--debug"])


def test_db_that_is_not_sqlite(tmp_path, capsys):
    db = tmp_path / "notes.sqlite"
    db.write_text("these are my notes, not a database\n" * 20)
    assert main(["report", "--db", str(db)]) == 1
    line = _one_error_line(capsys)
    assert "--db" in line and str(db) in line and "pass another --db or move the file away" in line


def test_malformed_db(tmp_path, capsys):
    db = tmp_path / "bad.sqlite"
    connection = sqlite3.connect(db)
    connection.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, key TEXT)")
    connection.execute("INSERT INTO runs VALUES (1, 'x')")
    connection.commit()
    connection.close()
    assert main(["report", "--db", str(db)]) == 1
    line = _one_error_line(capsys)
    assert "--db" in line and "not a usable advx results database" in line


def test_db_with_garbage_config(tmp_path, capsys):
    db = tmp_path / "garbage.sqlite"
    with ResultsStore(db) as store:
        store.connection.execute(
            "INSERT INTO runs (key, config, created, status) VALUES ('k', '{oops', 0, 'running')"
        )
        store.connection.commit()
    assert main(["report", "--db", str(db)]) == 1
    assert "not a usable advx results database" in _one_error_line(capsys)


@pytest.mark.parametrize("where", ["directory", "under a file"])
def test_db_that_cannot_be_opened(tmp_path, demo_data, capsys, where):
    if where == "directory":
        db = tmp_path / "somedir"
        db.mkdir()
    else:
        (tmp_path / "plain").write_text("x")
        db = tmp_path / "plain" / "r.sqlite"
    assert main(_attack(db)) == 1
    line = _one_error_line(capsys)
    assert "--db" in line and str(db) in line


def test_n_beyond_the_split_warns(tmp_path, demo_data, capsys, monkeypatch):
    images, labels = data.load_demo()
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: (images[:30], labels[:30]))
    argv = _attack(tmp_path / "r.sqlite")
    argv[argv.index("--n") + 1] = "40"
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "--n 40 is more than the 30 images" in err and "attacking all 30" in err
    with ResultsStore(tmp_path / "r.sqlite") as store:
        (run,) = store.runs()
    assert run["summary"]["n"] == 30


def test_uncached_model_says_it_trains_and_ctrl_c_says_so(cache, tmp_path, monkeypatch, capsys):
    def interrupted_training(name, data_dir=None, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "load", interrupted_training)
    assert main(_attack(tmp_path / "r.sqlite", "mnist-mlp")) == 130
    err = capsys.readouterr().err
    assert "model mnist-mlp is not cached" in err and "training it now" in err
    assert "interrupted while training mnist-mlp" in err
    assert f"{cache / 'mnist-mlp.ckpt'}" in err and "`advx train mnist-mlp`" in err
    assert "batches" not in err


def test_interrupted_run_is_reported_and_resumes(tmp_path, demo_data, monkeypatch, capsys):
    real = attacks.get_attack("fgm")
    calls = {"n": 0}

    @functools.wraps(real.function)
    def stops_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real.function(*args, **kwargs)

    patched = AttackInfo(
        name="fgm", function=stops_on_second_batch, kind=real.kind, norms=real.norms
    )
    monkeypatch.setitem(attacks.ATTACKS, "fgm", patched)
    db = tmp_path / "r.sqlite"
    argv = _attack(db)
    argv[argv.index("--n") + 1] = "20"
    assert main([*argv, "--batch-size", "10"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "run the same command again to resume" in err
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "png")]) == 0
    out = capsys.readouterr().out
    assert "interrupted (10/20 stored)" in out
    (resume,) = [line for line in out.splitlines() if "resume with:" in line]
    command = shlex.split(resume.split("resume with: ")[1])
    assert command[:2] == ["advx", "attack"]
    assert main(command[1:] + ["--quiet"]) == 0  # the same run, completed
    with ResultsStore(db) as store:
        (run,) = store.runs()
    assert run["status"] == "complete" and run["summary"]["n"] == 20
    assert calls["n"] == 3  # the stored batch was not attacked again


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (
            [
                "attack",
                "--model",
                "mnist-cnn",
                "--attack",
                "fgm",
                "--set",
                "eps=.1",
                "--device",
                "tpu9",
            ],
            "--device",
        ),
        (["attack", "--model", "m.py:f", "--attack", "fgm", "--set", "eps=.1"], "--model"),
        (
            [
                "attack",
                "--model",
                "mnist-cnn",
                "--attack",
                "fgm",
                "--set",
                "eps=.1",
                "--data",
                "csv:x",
            ],
            "--data",
        ),
        (
            [
                "attack",
                "--model",
                "mnist-cnn",
                "--attack",
                "fgm",
                "--set",
                "eps=.1",
                "--targets",
                "all",
            ],
            "--targets",
        ),
        (["attacks", "nope"], "nope"),
        (["train", "no-such-model"], "no-such-model"),
    ],
)
def test_bad_arguments_one_line(argv, named, capsys, demo_data):
    assert main(argv) == 2
    assert named in _one_error_line(capsys)
