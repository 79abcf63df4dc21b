"""The command line: attack on the bundled model, argument errors, report, demo."""

from __future__ import annotations

import pytest

from advx import data
from advx.cli import main, parse_settings, parse_value
from advx.evaluation import ResultsStore
from advx.models.checkpoints import BUNDLED


def _need_bundled_model():
    if not BUNDLED["mnist-cnn"].is_file():
        pytest.skip("bundled mnist-cnn checkpoint not present")


@pytest.fixture
def demo_data(monkeypatch):
    """Serve the bundled demo images as the MNIST test set (offline, fast)."""
    monkeypatch.setattr(
        data, "load_dataset", lambda name, split="test", data_dir=None: data.load_demo()
    )


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def test_parse_values():
    assert parse_value("0.3") == 0.3 and parse_value("40") == 40
    assert parse_value("true") is True and parse_value("none") is None
    assert parse_value("margin") == "margin"
    assert parse_settings(["eps=0.3", "random-start=false"]) == {"eps": 0.3, "random_start": False}


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["attack", "--model", "mnist-cnn", "--attack", "nope", "--set", "eps=0.1"], "--attack"),
        (["attack", "--model", "mnist-cnn", "--attack", "pgd", "--set", "eps"], "--set"),
        (["attack", "--model", "mnist-cnn", "--attack", "pgd", "--set", "bogus=1"], "bogus"),
        (["attack", "--model", "mnist-cnn", "--attack", "pgd"], "eps"),
        (["attack", "--model", "no-such-model", "--attack", "pgd", "--set", "eps=0.1"], "--model"),
        (["attack", "--model", "mnist-cnn", "--attack", "pgd", "--norm", "3"], "--norm"),
        (["attack", "--model", "mnist-cnn", "--attack", "pgd", "--n", "0"], "--n"),
        (["attack", "--attack", "pgd"], "--model"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, named, capsys):
    assert main(argv) == 2
    assert named in _error_line(capsys)


def test_bad_hyperparameter_value_exits_2(capsys, demo_data, tmp_path):
    _need_bundled_model()
    argv = ["attack", "--model", "mnist-cnn", "--attack", "pgd", "--set", "eps=-1", "--n", "4"]
    assert main([*argv, "--db", str(tmp_path / "r.sqlite"), "--quiet"]) == 2
    assert "eps" in _error_line(capsys)


def test_report_without_db_exits_2(tmp_path, capsys):
    assert main(["report", "--db", str(tmp_path / "missing.sqlite")]) == 2
    assert "--db" in _error_line(capsys)


def test_attack_writes_db_and_report(tmp_path, capsys, demo_data):
    _need_bundled_model()
    db = tmp_path / "results.sqlite"
    argv = ["attack", "--model", "mnist-cnn", "--attack", "pgd", "--set", "eps=0.1"]
    argv += ["--set", "steps=5", "--n", "20", "--batch-size", "10", "--db", str(db), "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "robust accuracy at eps=0.1" in out and "within budget: yes" in out
    with ResultsStore(db) as store:
        (run,) = store.runs()
        assert run["status"] == "complete" and run["summary"]["n"] == 20
        assert len(store.samples(run["id"])["sample_index"]) == 20
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "robust_accuracy.png").is_file()


@pytest.mark.slow  # about 35 s on 2 cores
def test_demo_writes_png(tmp_path, capsys):
    _need_bundled_model()
    assert main(["demo", "--out", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "robust_accuracy.png").stat().st_size > 1000
    assert (tmp_path / "adversarial_grid.png").is_file()
    assert "<table" in (tmp_path / "index.html").read_text()
    assert "pgd" in capsys.readouterr().out


def test_train_adversarial_needs_max_norm(capsys):
    assert main(["train", "mnist-fcnn", "--adversarial", "ddn"]) == 2
    assert "--max-norm" in capsys.readouterr().err


def test_train_adversarial_rejects_unknown_attack_setting(capsys):
    code = main(
        ["train", "mnist-fcnn", "--adversarial", "ddn", "--max-norm", "2.4", "--set", "foo=1"]
    )
    assert code == 2
    assert "foo" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--adversarial", "ddn", "--max-norm", "2", "--norm", "2"], "fixed norm"),
        (["--adversarial", "pgd", "--max-norm", "2", "--norm", "3"], "norm"),
        (["--norm", "2"], "--adversarial"),
    ],
)
def test_train_norm_is_refused_where_it_cannot_apply(argv, match, capsys):
    assert main(["train", "mnist-fcnn", *argv]) == 2
    err = _error_line(capsys)
    assert "--norm" in err and match in err


def test_train_norm_reaches_the_attack_and_the_saved_name(monkeypatch, capsys):
    """``--norm 2`` trains on PGD-L2 (the linear-region paper's 'at' models) under its own name."""
    from advx.defenses import adversarial_training as module

    seen = {}

    def fake_training(name, attack, **kwargs):
        seen.update(kwargs, name=name, attack=attack)
        return None, {"test_accuracy": 0.5}

    monkeypatch.setattr(module, "adversarial_training", fake_training)
    argv = ["train", "mnist-fcnn", "--adversarial", "pgd", "--max-norm", "2", "--norm", "2"]
    assert main(argv) == 0
    assert seen["attack_kwargs"] == {"norm": 2.0}
    assert seen["save_as"] == "mnist-fcnn-adv-pgd-l2"
    assert "mnist-fcnn-adv-pgd-l2" in capsys.readouterr().out


def test_train_set_without_adversarial_is_refused(capsys):
    assert main(["train", "mnist-fcnn", "--set", "steps=10"]) == 2
    assert "--adversarial" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["train", "mnist-fcnn", "--save-as", "mnist-mlp"], "another zoo model"),
        (["train", "mnist-fcnn", "--save-as", "../x"], "plain file name"),
        (["train", "mnist-madry", "--save-as", "m2"], "only plain training"),
        (["train", "mnist-fcnn", "--distill", "10", "--save-as", "m2"], "only plain training"),
    ],
)
def test_train_save_as_is_refused_where_it_cannot_apply(argv, match, capsys):
    assert main(argv) == 2
    err = _error_line(capsys)
    assert "--save-as" in err and match in err


def test_train_save_as_names_an_independent_run(tmp_path, monkeypatch, capsys):
    """``--save-as`` keeps the zoo name's recipe and cache file untouched: a second seed lands
    in its own checkpoint, loadable by its new name."""
    import torch

    from advx import models
    from advx.data import load_dataset

    try:
        load_dataset("mnist", "train")
    except Exception:  # noqa: BLE001
        pytest.skip("MNIST training data not available (set ADVX_DATA)")
    monkeypatch.setenv("ADVX_CACHE", str(tmp_path))
    argv = ["train", "mnist-fcnn", "--epochs", "1", "--max-samples", "128", "--seed"]
    assert main([*argv, "1", "--save-as", "mnist-fcnn-seed1"]) == 0
    assert main([*argv, "2", "--save-as", "mnist-fcnn-seed2"]) == 0
    assert "mnist-fcnn-seed2" in capsys.readouterr().out
    assert not (tmp_path / "mnist-fcnn.pt").exists()
    one = models.load("mnist-fcnn-seed1", cache_dir=tmp_path, train_if_missing=False)
    two = models.load("mnist-fcnn-seed2", cache_dir=tmp_path, train_if_missing=False)
    assert isinstance(one, models.MnistFCNN)
    weights = zip(one.state_dict().values(), two.state_dict().values())
    assert not all(torch.equal(a, b) for a, b in weights)
