"""Users' own models and data on the command line (``--model file.py:factory --weights``,
TorchScript, ``--mean/--std``, ``--data npz:`` / ``folder:``), and the acceptance run: an attack
on a model and data that are not in the zoo, whose HTML report renders in headless Chromium."""

from __future__ import annotations

import os
import shlex
import shutil
import textwrap

import numpy as np
import pytest
import torch
from headless_chromium import find_chromium, inspect_page
from torch import nn

from advx.cli import main
from advx.evaluation import ResultsStore
from advx.sources import Normalize, SourceError, load_data_source, load_user_model

MODEL_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn


    def make():
        return nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 10)
        )


    def not_a_module():
        return 42
    """
)


@pytest.fixture
def own(tmp_path):
    """my_net.py with make(), w.pt (its trained-looking weights), my.npz (16 uint8 12x12 images
    labelled with the model's own predictions, so the clean accuracy is 100%)."""
    (tmp_path / "my_net.py").write_text(MODEL_FILE)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(400, 10))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    generator = np.random.default_rng(0)
    x = generator.integers(0, 256, size=(16, 12, 12), dtype=np.uint8)
    with torch.no_grad():
        y = model(torch.from_numpy(x).float().div(255)[:, None]).argmax(1).numpy()
    np.savez(tmp_path / "my.npz", x=x, y=y)
    return tmp_path


def _need_chromium() -> None:
    if find_chromium() is None:
        reason = "no Chromium found (Debian: apt-get install chromium); the page is not rendered"
        if os.environ.get("ADVX_REQUIRE_CHROMIUM"):
            pytest.fail(reason + ", but ADVX_REQUIRE_CHROMIUM is set")
        pytest.skip(reason)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def _attack_argv(own, *extra):
    return [
        "attack",
        "--model",
        f"{own}/my_net.py:make",
        "--weights",
        str(own / "w.pt"),
        "--data",
        f"npz:{own}/my.npz",
        "--attack",
        "pgd",
        "--norm",
        "inf",
        "--set",
        "eps=0.3",
        "--db",
        str(own / "runs.sqlite"),
        "--quiet",
        *extra,
    ]


def test_acceptance_own_model_and_data_then_html_in_chromium(own, capsys, monkeypatch):
    monkeypatch.chdir(own)
    assert main(_attack_argv(own)) == 0
    out = capsys.readouterr().out
    assert "my_net.py:make + w.pt" in out and "robust accuracy at eps=0.3" in out
    with ResultsStore(own / "runs.sqlite") as store:
        (run,) = store.runs()
    summary = run["summary"]
    assert run["status"] == "complete" and summary["n"] == 16
    assert summary["clean_accuracy"] == 1.0  # the weights were loaded: labels are their output
    assert summary["max_norm"] <= 0.3 + 1e-6
    html_dir = own / "out"
    assert main(["report", "--db", str(own / "runs.sqlite"), "--html", str(html_dir)]) == 0
    assert not (own / "advx-report").exists()  # --html alone writes only the page
    page = html_dir / "index.html"
    text = page.read_text()
    assert "my_net.py:make + w.pt" in text and "http://" not in text and "https://" not in text
    assert "Runs made by: <code>advx attack --model" in text  # the command kept with the run
    _need_chromium()
    shot = own / "report.png"
    found = inspect_page(page, shot)
    keep = os.environ.get("ADVX_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, os.path.join(keep, "report-acceptance.png"))
    assert found["errors"] == []
    assert found["resources"] == []  # nothing fetched: plots are embedded
    (table,) = [t for t in found["tables"] if t["id"] == "runs-table"]
    assert table["shown"] and table["width"] > 0 and table["height"] > 0 and table["rows"] == 2
    assert len(found["images"]) >= 3  # robust accuracy, norm vs time, the run's grid
    for image in found["images"]:
        assert image["shown"] and image["complete"], image
        assert image["width"] > 100 and image["height"] > 100, image
        assert min(image["natural"]) > 0, image
    assert shot.stat().st_size > 10_000


def test_browser_check_catches_a_broken_page(tmp_path):
    _need_chromium()
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><body><table><tr><td>a</td></tr></table>"
        '<img src="missing.png" alt="gone"><script>console.error("boom"); nope();</script>'
        "</body></html>"
    )
    found = inspect_page(page, tmp_path / "broken.png")
    assert any("boom" in e for e in found["errors"])
    assert any("nope" in e for e in found["errors"])
    assert any("missing.png" in e for e in found["errors"])
    assert found["images"][0]["natural"] == [0, 0]


def test_weights_change_the_model(own):
    plain = load_user_model(f"{own}/my_net.py:make").model
    loaded = load_user_model(f"{own}/my_net.py:make", own / "w.pt").model
    saved = torch.load(own / "w.pt", weights_only=True)
    assert torch.equal(loaded.state_dict()["3.weight"], saved["3.weight"])
    assert not torch.equal(plain.state_dict()["3.weight"], saved["3.weight"])


def test_factory_not_returning_a_module(own, capsys):
    argv = _attack_argv(own)
    argv[argv.index(f"{own}/my_net.py:make")] = f"{own}/my_net.py:not_a_module"
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert "--model" in line and "returned int" in line and "nn.Module" in line


def test_missing_factory_lists_the_callables(own, capsys):
    argv = _attack_argv(own)
    argv[argv.index(f"{own}/my_net.py:make")] = f"{own}/my_net.py:build"
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert "no function 'build'" in line and "make" in line


def test_weights_that_do_not_fit(own, capsys):
    torch.save({"0.weight": torch.zeros(8, 1, 3, 3)}, own / "bad.pt")
    argv = _attack_argv(own)
    argv[argv.index(str(own / "w.pt"))] = str(own / "bad.pt")
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert "--weights" in line and "bad.pt" in line and "does not fit" in line
    assert "missing" in line and "shape: 0.weight (8, 1, 3, 3) vs (4, 1, 3, 3)" in line


def test_empty_weights_file(own, capsys):
    (own / "empty.pt").write_bytes(b"")
    argv = _attack_argv(own)
    argv[argv.index(str(own / "w.pt"))] = str(own / "empty.pt")
    assert main(argv) == 2
    assert "empty.pt is empty" in _one_error_line(capsys)


def test_images_that_do_not_fit_the_model(own, capsys):
    np.savez(own / "big.npz", x=np.zeros((4, 20, 20), np.uint8), y=np.zeros(4, np.int64))
    argv = _attack_argv(own)
    argv[argv.index(f"npz:{own}/my.npz")] = f"npz:{own}/big.npz"
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert "--data" in line and "(1, 20, 20)" in line and "do not fit the model" in line


def test_labels_outside_the_models_classes(own, capsys):
    np.savez(own / "labels.npz", x=np.zeros((4, 12, 12), np.uint8), y=np.array([0, 1, 2, 12]))
    argv = _attack_argv(own)
    argv[argv.index(f"npz:{own}/my.npz")] = f"npz:{own}/labels.npz"
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert "labels go up to 12" in line and "10 outputs" in line


def test_npz_layouts(tmp_path):
    hwc = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    np.savez(tmp_path / "hwc.npz", x=hwc, y=np.array([1, 0]))
    data = load_data_source(f"npz:{tmp_path}/hwc.npz")
    assert data.images.shape == (2, 3, 4, 5) and data.images.dtype == torch.float32
    assert data.images[1, 2, 3, 4].item() == pytest.approx(hwc[1, 3, 4, 2] / 255)
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == [1, 0]
    floats = np.full((3, 2, 4, 4), 0.25, np.float32)
    np.savez(tmp_path / "f.npz", x=floats, y=np.zeros(3, np.int32))
    assert load_data_source(f"npz:{tmp_path}/f.npz").images.shape == (3, 2, 4, 4)
    np.savez(tmp_path / "range.npz", x=floats * 5, y=np.zeros(3, np.int32))
    with pytest.raises(SourceError, match=r"\[0, 1\]"):
        load_data_source(f"npz:{tmp_path}/range.npz")
    np.savez(tmp_path / "keys.npz", images=floats)
    with pytest.raises(SourceError, match="'x' and 'y'"):
        load_data_source(f"npz:{tmp_path}/keys.npz")
    np.savez(tmp_path / "count.npz", x=floats, y=np.zeros(2, np.int64))
    with pytest.raises(SourceError, match="3 images but y 2 labels"):
        load_data_source(f"npz:{tmp_path}/count.npz")


def test_image_folder_with_size(tmp_path):
    from PIL import Image

    for k, (name, size) in enumerate([("cat", (16, 16)), ("dog", (20, 24))]):
        (tmp_path / name).mkdir()
        for j in range(2):
            Image.new("RGB", size, (40 * k, 80, 10 * j)).save(tmp_path / name / f"{j}.png")
    with pytest.raises(SourceError, match="--size"):
        load_data_source(f"folder:{tmp_path}")
    data = load_data_source(f"folder:{tmp_path}", size=(12, 12))
    assert data.images.shape == (4, 3, 12, 12)
    assert data.labels.tolist() == [0, 0, 1, 1]
    assert data.spec["classes"] == ["cat", "dog"]
    assert data.images[2, 0, 0, 0].item() == pytest.approx(40 / 255)


def test_torchscript_model_with_normalisation(own, capsys):
    inner = load_user_model(f"{own}/my_net.py:make", own / "w.pt").model
    torch.jit.save(torch.jit.script(inner), own / "scripted.pt")
    loaded = load_user_model(str(own / "scripted.pt"), mean=[0.5], std=[0.25])
    assert isinstance(loaded.model, Normalize)
    x = torch.rand(3, 1, 12, 12)
    assert torch.allclose(loaded.model(x), inner((x - 0.5) / 0.25), atol=1e-6)
    argv = ["attack", "--model", str(own / "scripted.pt"), "--data", f"npz:{own}/my.npz"]
    argv += ["--attack", "fgm", "--set", "eps=0.1", "--db", str(own / "ts.sqlite"), "--quiet"]
    assert main([*argv, "--mean", "0.5", "--std", "0.25"]) == 0
    assert "scripted.pt (mean 0.5, std 0.25)" in capsys.readouterr().out


def test_not_torchscript(own, capsys):
    argv = _attack_argv(own)
    argv[argv.index(f"{own}/my_net.py:make")] = str(own / "w.pt")
    argv.remove("--weights")
    argv.remove(str(own / "w.pt"))
    assert main(argv) == 2
    assert "not a TorchScript module" in _one_error_line(capsys)


def test_attack_json_and_targets_all_give_best_average_worst(own, capsys):
    argv = _attack_argv(own, "--json", "--targeted", "--targets", "all", "--set", "steps=5")
    assert main(argv) == 0
    import json

    printed = json.loads(capsys.readouterr().out)
    (run,) = printed["runs"]  # one run of every (image, other class) pair
    assert run["config"]["targeted"] and run["summary"]["n"] == 16 * 9
    from advx.evaluation.report import load_runs, targeted_cases

    with ResultsStore(own / "runs.sqlite") as store:
        (case,) = targeted_cases(store, load_runs(store))
    assert case["targets"] == 9 and case["n"] == 16
    rates = [case[c]["success_rate"] for c in ("best", "average", "worst")]
    assert rates[0] >= rates[1] >= rates[2]


def test_resume_command_of_an_own_model_run(own, capsys, monkeypatch, tmp_path):
    argv = _attack_argv(own, "--set", "steps=3", "--batch-size", "8", "--mean", "0.5")
    argv += ["--std", "1", "--targeted", "--targets", "next"]
    assert main(argv) == 0
    with ResultsStore(own / "runs.sqlite") as store:
        (run,) = store.runs()
        store.connection.execute("DELETE FROM samples WHERE sample_index >= 8")
        store.connection.commit()
        store.set_status(run["id"], "interrupted")
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)  # the command holds absolute paths
    assert main(["report", "--db", str(own / "runs.sqlite"), "--out", "png"]) == 0
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if "resume with:" in x]
    command = shlex.split(line.split("resume with: ")[1])
    assert "--weights" in command and "--targets" in command and "--mean" in command
    assert main(command[1:] + ["--quiet"]) == 0
    with ResultsStore(own / "runs.sqlite") as store:
        (resumed,) = store.runs()
    assert resumed["id"] == run["id"] and resumed["status"] == "complete"
    assert resumed["summary"]["n"] == 16
