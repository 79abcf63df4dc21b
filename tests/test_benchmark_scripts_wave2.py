"""The wave-2 benchmark scripts on the benchmark harness (benchmarks/ead.py, defenses.py,
blackbox.py, linear_region.py): their parsers take the harness's common options and their own,
each ``--report`` path reads a tiny stored jsonl in the one results format, and a one-image
black-box run goes through the runner and resumes from its rows."""

import importlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
DATA = os.environ.get("ADVX_DATA", str(Path(__file__).parents[2] / "shared" / "data"))
needs_mnist = pytest.mark.skipif(
    not (Path(DATA) / "MNIST").is_dir(), reason="MNIST not available (set ADVX_DATA)"
)
SCRIPTS = ("ead", "ead_training", "defenses", "blackbox", "linear_region", "_harness", "_results")


@pytest.fixture
def scripts(monkeypatch):
    """Import benchmark scripts by name (they import ``_harness`` from their own folder)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("ADVX_DATA", DATA)
    yield importlib.import_module
    for name in SCRIPTS:
        sys.modules.pop(name, None)


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


COMMON = ["--n", "3", "--batch-size", "7", "--threads", "1", "--data-dir", "D", "--out", "O"]


@pytest.mark.parametrize(
    "name, own",
    [
        ("ead", ["--tables", "6", "--search", "2", "--steps", "4"]),
        ("defenses", ["--parts", "squeeze", "--quick"]),
        ("blackbox", ["--parts", "cw", "--zoo-steps", "4"]),
        ("linear_region", ["table1", "--mip-n", "2", "--time-limit", "1"]),
    ],
)
def test_each_parser_takes_the_common_options_and_its_own(scripts, name, own):
    args = scripts(name).build_parser().parse_args(COMMON + own)
    assert (args.n, args.batch_size, args.threads) == (3, 7, 1)
    assert (args.data_dir, args.out) == ("D", "O")
    assert isinstance(args.models, list) and args.models


def test_parser_defaults_keep_each_script_s_own(scripts):
    assert scripts("ead").build_parser().parse_args([]).batch_size == 45
    defenses = scripts("defenses").build_parser().parse_args([])
    assert defenses.batch_size is None and defenses.n == 10  # n / 9 n per part, as before
    region = scripts("linear_region").build_parser().parse_args(["report"])
    assert region.out == "results/linear_region.jsonl" and region.models == ["mnist-n1", "mnist-n2"]
    blackbox = scripts("blackbox").build_parser()
    assert blackbox.parse_args([]).out == "results/blackbox"
    assert blackbox.parse_args(["--model", "cifar-cnn"]).models == ["cifar-cnn"]  # old spelling


def test_parsers_refuse_what_they_cannot_run(scripts):
    with pytest.raises(SystemExit):
        scripts("blackbox").build_parser().parse_args(["--parts", "zoo"])
    with pytest.raises(SystemExit):
        scripts("linear_region").build_parser().parse_args([])  # the command is required
    with pytest.raises(SystemExit):
        scripts("defenses").main(["--models", "mnist-mlp", "--out", "unused"])
    with pytest.raises(SystemExit):
        scripts("blackbox").main(["--models", "net.py:build", "--parts", "report"])


def test_setup_opens_a_folder_or_a_jsonl_file(scripts, tmp_path):
    harness = scripts("_harness")
    parsed = harness.parser("doc", models=["m"], n=1, out=str(tmp_path / "folder"))
    folder = harness.setup(parsed.parse_args([]))
    assert folder.path == tmp_path / "folder" / "results.jsonl"
    named = harness.setup(parsed.parse_args(["--out", str(tmp_path / "deep" / "rows.jsonl")]))
    assert named.path == tmp_path / "deep" / "rows.jsonl" and named.path.parent.is_dir()
    assert torch.get_num_threads() == 1


def _case(success_rate: float, l1: float, l2: float, linf: float) -> dict:
    return {"success_rate": success_rate, "l1": l1, "l2": l2, "linf": linf}


def test_ead_report_reads_stored_rows(scripts, tmp_path):
    cases = {"best": _case(1, 9.0, 1.0, 0.3), "average": _case(1, 12.5, 1.5, 0.4)}
    cases["worst"] = _case(1, 20.0, 2.0, 0.5)
    row = {"model": "mnist-cnn", "attack": "EAD (EN rule)", "n": 2, "hyperparameters": {}}
    row |= {"cases": cases, "pairs": 18, "seconds_per_pair": 0.25, "date": "2026-12-02 00:00 UTC"}
    _write_rows(tmp_path / "ead" / "results.jsonl", [row])
    doc = tmp_path / "ead.md"
    scripts("ead").main(
        ["--report", "--out", str(tmp_path / "ead"), "--doc", str(doc), "--notes", "none.md"]
    )
    text = doc.read_text()
    assert "| EAD (EN rule) | 100.0 | 12.50 | 1.500 | 0.400 | 0.25 |" in text
    assert "(no EAD peer rows measured)" in text


def test_defenses_report_reads_stored_rows(scripts, tmp_path):
    squeeze = {"key": "squeeze/EAD/20/untargeted/2/{}", "part": "squeeze", "method": "EAD"}
    squeeze |= {"kappa": 20, "mode": "untargeted", "n": 2, "asr_plain": 1.0}
    squeeze |= {"detected_of_adversarial": 0.5, "asr_detector": 0.5, "l1": 10.0, "l2": 2.0}
    squeeze["linf"] = 0.9
    madry = {"key": "madry/mnist-madry/0.3/0.01/1000", "part": "madry", "model": "mnist-madry"}
    madry |= {"train_eps": 0.3, "eps": 0.3, "step_size": 0.01, "n": 1000, "natural": 0.98}
    madry["accuracy"] = 0.9
    _write_rows(tmp_path / "def" / "results.jsonl", [squeeze, madry])
    doc = tmp_path / "defenses.md"
    scripts("defenses").main(["--report", "--out", str(tmp_path / "def"), "--doc", str(doc)])
    text = doc.read_text()
    assert "| EAD | 20 | untargeted | 2 | 100.0 | 50.0 | 50.0 | 10 | 2 | 0.9 |" in text
    assert "| mnist-madry | 0.3 | 0.3 (step 0.01) | 1000 | 98.0 | 90.0 | 98.16 / 91.14 |" in text


def _blackbox_rows() -> list[dict]:
    rows = []
    for row, l2s in (("white-box C&W", (1.0, 2.0)), ("ZOO-Adam", (1.1, 2.2))):
        for image, l2 in zip((0, 1), l2s):
            key = f"mnist-cnn|{row}|u{image}"
            rows.append({"key": key, "success": True, "l2": l2, "linf": 0.5, "seconds": 2.0})
            rows[-1]["queries"] = 100.0
    return rows


@pytest.mark.parametrize("out", ["bb", "bb/results.jsonl"])  # the folder, or the file as before
def test_blackbox_report_reads_stored_rows(scripts, tmp_path, capsys, out):
    _write_rows(tmp_path / "bb" / "results.jsonl", _blackbox_rows())
    doc = tmp_path / "blackbox.md"
    scripts("blackbox").main(["--parts", "report", "--out", str(tmp_path / out), "--doc", str(doc)])
    text = doc.read_text()
    assert "| ZOO-Adam | no | 2 | 100.0 | 1.65 | 2 | 100 |" in text
    assert "mean L2 1.6500 vs 1.5000 (+10.0%)" in text


def test_blackbox_report_shows_square_targeted_zoo_and_the_ablation(scripts, tmp_path):
    rows = _blackbox_rows()
    for image, ok in ((0, True), (1, False)):
        rows.append({"key": f"mnist-cnn|Square (torchattacks)|u{image}", "success": ok})
        rows[-1] |= {"l2": 1.4, "linf": 0.3, "seconds": 1.0, "queries": 10.0 * (image + 1)}
        rows[-1]["eps"] = 1.5
    for target, ok in ((1, True), (2, False)):
        rows.append({"key": f"mnist-cnn|ZOO-Adam|t0-{target}", "success": ok, "l2": 2.0})
        rows[-1] |= {"linf": 0.5, "seconds": 3.0, "queries": 500.0}
    for variant, ok in (("All techniques", True), ("No hierarchical attack", False)):
        rows.append({"key": f"cifar-cnn-128|ablation|{variant}|0|100|10", "part": "ablation"})
        rows[-1] |= {"variant": variant, "image": 0, "target": 3, "success": ok, "l2": 0.75}
        rows[-1] |= {"first_valid": 40 if ok else None, "final_loss": 1.5 if ok else 9.0}
        rows[-1] |= {"queries": 25700.0, "seconds": 60.0, "settings": "{'steps': 100}"}
    _write_rows(tmp_path / "bb.jsonl", rows)
    doc = tmp_path / "blackbox.md"
    scripts("blackbox").main(
        ["--parts", "report", "--out", str(tmp_path / "bb.jsonl"), "--doc", str(doc)]
    )
    text = doc.read_text()
    assert "fooled 1 of 2, median 15 queries" in text and "mean L2 1.4000." in text
    assert "- ZOO-Adam targeted success >= 97%: 50.0% on 2 image-target pairs: FAILS." in text
    assert "| All techniques | 0 | yes | 40 | 0.75 | 1.5 | 2.57e+04 | 60 |" in text
    assert (
        "| No hierarchical attack | 0 | no | - | - | 9 | 2.57e+04 | 60 | no / - / - / 62.44 |"
        in text
    )


def _linear_region_report(scripts, tmp_path, rows) -> str:
    """The linear-region report's page from ``rows`` stored in a fresh jsonl."""
    _write_rows(tmp_path / "lr.jsonl", rows)
    doc = tmp_path / "lr.md"
    scripts("linear_region").main(
        ["report", "--out", str(tmp_path / "lr.jsonl"), "--doc", str(doc)]
    )
    return doc.read_text()


def test_linear_region_report_reads_stored_rows(scripts, tmp_path, capsys):
    rows = [
        {"key": "t1|mnist-n1|DeepFool|3", "table": 1, "model": "mnist-n1", "attack": "DeepFool"}
        | {"norm": 2, "images": [0, 1], "norms": [1.1, 1.2], "seconds_per_image": 0.01},
    ]
    for image in (0, 1):
        rows.append({"key": f"mip|mnist-n1|L2|{image}|5", "mip": True, "model": "mnist-n1"})
        rows[-1] |= {"norm": "2", "image": image, "norm_value": 1.0, "lower": 1.0}
        rows[-1] |= {"status": "optimal", "seconds": 3.0, "nodes": 1, "binaries": 10}
    text = _linear_region_report(scripts, tmp_path, rows)
    assert "MIP (L2): 2 images attempted, 2 proven optimal (time limit per image 5 s)" in text
    assert "| DeepFool | 0.010 | 1.1500 / 1.2000 | 2 |" in text


def test_linear_region_report_computes_tables_2_and_3(scripts, tmp_path):
    """CW/rLR and DF/rLR with the other attack's failures left out and counted, the improvement
    rate, and Table 3's per-application statistics, from stored rows."""
    base = {"table": 2, "model": "mnist-mlp-adv-pgd-l2", "dataset": "mnist", "layers": 1}
    base |= {"images": [0, 1, 2], "seconds_per_image": 2.0}
    rows = [
        base | {"key": "a", "attack": "rLR-QP", "norms": [1.0, 2.0, 4.0]},
        base | {"key": "b", "attack": "C&W", "norms": [1.1, 1.8, float("inf")]},
        base | {"key": "c", "attack": "DeepFool", "norms": [1.5, 2.0, 6.0]},
        {"key": "t3", "table": 3, "model": "mnist-mlp-adv-pgd-l2", "images": [1]}
        | {"norms": [[2.0], [1.9], [1.6]], "cw": [1.8]},
    ]
    text = _linear_region_report(scripts, tmp_path, rows)
    # C&W: ratios 1.1 and 0.9 (image 2 failed), rLR smaller on 1 of 2; DeepFool: 1.5, 1.0, 1.5
    assert "| 3 | 1.000 / 0.900 / 1.100 | 50.0 (1) | 1.333 / 1.000 / 1.500 | 66.7 | 0 |" in text
    assert "1.066 / 0.454 / 2.434, IR 83.3" in text  # the paper's MNIST 1x1024 at row
    assert "Settings with mean C&W / rLR >= 1: 1 of 1 measured" in text
    assert "| 2 | 0.947 / 0.947 / 0.947 | 0 | 5.3% | 5.3% |" in text  # 2.0 / 1.9 - 1
    assert "| 3 | 1.125 / 1.125 / 1.125 | 1 |" in text  # rLR below C&W at last


@needs_mnist
def test_blackbox_cw_runs_through_the_runner_and_resumes(scripts, tmp_path, monkeypatch, capsys):
    blackbox = scripts("blackbox")
    argv = ["--parts", "cw", "--n", "1", "--cw-search", "1", "--cw-steps", "2"]
    argv += ["--out", str(tmp_path)]
    blackbox.main(argv)
    harness = scripts("_harness")
    _, x, y = harness.evaluation_images("mnist-cnn", 1)
    index = harness.correct_test_images(harness.load_model("mnist-cnn")[0], "mnist", 1)[2]
    rows = scripts("_results").Results(tmp_path / "results.jsonl")
    row = rows[f"mnist-cnn|white-box C&W|u{int(index[0])}"]
    assert row["gradients"] == 2.0 and row["queries"] == 3.0  # the runner's counts: 2 steps
    assert row["success"] is False and row["l2"] == 0.0  # 2 steps from c = 0.01 fail

    def no_run(*args, **kwargs):
        raise AssertionError("a stored row was attacked again")

    monkeypatch.setattr(blackbox.harness, "run", no_run)
    blackbox.main(argv)
    assert len(scripts("_results").Results(tmp_path / "results.jsonl")) == 1
    assert x.shape == (1, 1, 28, 28) and y.shape == (1,)


def _table10_row(method, targeted, setting, asr, l1=50.0):
    row = {"part": "madry-transfer", "method": method, "targeted": targeted, "n": 10}
    row |= {"kappa": setting} if method in ("C&W", "EAD") else {"eps": setting}
    row |= {"success_rate": asr, "l1": l1, "l2": 4.0, "linf": 0.5, "seconds_per_sample": 1.0}
    row["source_success_rate"] = 1.0
    return row | {"key": f"{method}/{setting}/{targeted}"}


def test_defenses_table10_report_tunes_eps_as_the_thesis(scripts, tmp_path):
    """PGD's row is the lowest eps that reached the highest ASR; C&W / EAD rows per kappa, with
    the thesis's figures beside them; the eps sweep gets its own table."""
    rows = [
        _table10_row("PGD", True, 0.2, 0.5),
        _table10_row("PGD", True, 0.6, 0.8, l1=80.0),
        _table10_row("PGD", True, 0.4, 0.8, l1=70.0),
        _table10_row("EAD", False, 30, 0.9),
    ]
    _write_rows(tmp_path / "t10" / "results.jsonl", rows)
    doc = tmp_path / "t10.md"
    scripts("defenses").main(["--report", "--out", str(tmp_path / "t10"), "--doc", str(doc)])
    text = doc.read_text()
    assert (
        "| PGD | eps 0.4 | 10 | 100.0 | 80.0 | 70 | 4 | 0.5 | 68.5 / 188.3 / 8.947 / 0.6 |" in text
    )
    row = "| EAD | kappa 30 | 10 | 100.0 | 90.0 | 50 | 4 | 0.5 | 94.5 / 34.28 / 4.192 / 0.971 |"
    assert row in text
    assert "| PGD | targeted | 50.0 | 80.0 | 80.0 |" in text


def test_defenses_table10_runs_on_stand_in_models_and_resumes(scripts, tmp_path, monkeypatch):
    """The part end to end with the bundled mnist-cnn standing in for all four models (a
    transfer from a model to itself is a direct attack): every row stored once, a rerun adds
    none, targeted rows use one fixed other class per image."""
    from advx.models import load

    defenses = scripts("defenses")
    monkeypatch.setattr(defenses, "load", lambda name, **_: load("mnist-cnn"))
    out = tmp_path / "t10"
    argv = ["--parts", "madry-transfer", "--quick", "--n", "2", "--kappas", "10", "--out"]
    defenses.main([*argv, str(out)])
    stored = (out / "results.jsonl").read_text().splitlines()
    assert len(stored) == 2 * (2 + 2 * len(defenses.TABLE10_EPS))
    defenses.main([*argv, str(out)])
    assert (out / "results.jsonl").read_text().splitlines() == stored
    rows = [json.loads(line) for line in stored]
    pgd = {(r["targeted"], r["eps"]): r["success_rate"] for r in rows if r["method"] == "PGD"}
    assert pgd[(False, 1.0)] == 1.0  # eps 1 reaches any image on the model itself
    # the target is the source: what fools one fools the other, but for an example left on
    # the boundary (I-FGM's last iterate) whose argmax the rounding of the mean of three equal
    # logits may flip
    differ = [r for r in rows if r["source_success_rate"] != r["success_rate"]]
    assert len(differ) <= 2, differ
    x, y, targets = defenses._table10_images([load("mnist-cnn")], load("mnist-cnn"), 5, DATA)
    assert (targets != y).all() and len(y) == 5


def test_table7_augmentation_mixes_every_example_in_once_per_epoch(scripts):
    """60 training images in batches of 12 with 15 examples: 3 examples join each batch, and
    after one epoch (5 batches) every example was used exactly once; labels travel along."""
    import torch

    augmenting = scripts("ead_training").augmenting
    extra_x = torch.arange(15.0).view(15, 1, 1, 1).expand(15, 1, 2, 2).contiguous()
    extra_y = torch.arange(15) % 10
    transform = augmenting(extra_x, extra_y, n_train=60)
    seen = []
    for _ in range(5):
        x, y = transform(None, torch.full((12, 1, 2, 2), -1.0), torch.zeros(12, dtype=torch.long))
        assert x.shape == (15, 1, 2, 2) and y.shape == (15,)
        assert (x[:12] == -1).all() and (y[:12] == 0).all()
        index = x[12:, 0, 0, 0].long()
        assert torch.equal(y[12:], extra_y[index])
        seen += index.tolist()
    assert sorted(seen) == list(range(15))
    with pytest.raises(ValueError, match="extra_x"):
        augmenting(extra_x[:3], extra_y, n_train=60)


def test_table7_report_sets_each_row_beside_the_thesis(scripts, tmp_path):
    ead_training = scripts("ead_training")
    row = {"key": "k", "training": "EAD", "model": ead_training.model_name("EAD")}
    row |= {"attack": "C&W (L2)", "n": 100, "pairs": 900, "test_accuracy": 0.99}
    row |= {"average": {"success_rate": 1.0, "l1": 25.0, "l2": 2.5, "linf": 0.6}}
    row |= {"seconds_per_pair": 0.1, "torch": "x", "date": "2026-12-03 10:00 UTC"}
    row["hyperparameters"] = {"binary_search_steps": 3, "steps": 100, "c_init": 1.0, "lr": 0.1}
    _write_rows(tmp_path / "t7" / "results.jsonl", [row])
    doc = tmp_path / "t7.md"
    ead_training.main(["--report", "--out", str(tmp_path / "t7"), "--doc", str(doc)])
    text = doc.read_text()
    assert ead_training.model_name("EAD + C&W") == "mnist-cnn-t7-ead-cw"
    assert "| C&W (L2) | EAD | mnist-cnn-t7-ead | 99.00 | 900 | 100.0 | 25.00 | 2.500 | " in text
    assert "100 / 26.11 / 2.468 / 0.643 |" in text
    assert "C&W (L2): 3 binary-search steps x 100 iterations, c_0 = 1, lr 0.1" in text
    assert "--search 3 --steps 100" in text


def test_ead_report_shows_a_run_in_progress_from_its_store(scripts, tmp_path):
    """An interrupted 4-image EAD row with 2 images' 9 targets and 3 pairs of a third stored:
    the page shows the 2 complete images, their average case, and the planned count."""
    from advx.evaluation.store import SAMPLE_COLUMNS, ResultsStore

    ead = scripts("ead")
    _, norm, hyper = ead.table6_attacks()["EAD (L1 rule)"]
    config = {"attack": "ead", "norm": "l1", "hyperparameters": hyper, "model": "mnist-cnn"}
    config |= {"data": {"n": 36, "fingerprint": "f"}, "targeted": True}
    rows = []
    for i in range(21):
        row = dict.fromkeys(SAMPLE_COLUMNS, 0.0) | {"sample_index": i, "label": 1, "target": 2}
        row |= {"clean_pred": 1, "adv_pred": 2, "success": 1, "seconds": 0.5}
        row |= {"l1": float(1 + i), "l2": 1.0, "linf": 0.5, "lp": float(1 + i)}
        rows.append(row)
    with ResultsStore(tmp_path / "ead" / "runs.sqlite") as store:
        run_id, _ = store.open_run(config)
        store.add_samples(run_id, rows)
    doc = tmp_path / "ead.md"
    ead.main(["--report", "--out", str(tmp_path / "ead"), "--doc", str(doc), "--notes", "x.md"])
    text = doc.read_text()
    assert "images per row: 2 (of 4, in progress) x 9 targets" in text
    # the average case over the first 18 pairs: mean L1 of 1..18
    assert "| EAD (L1 rule) | 100.0 | 9.50 | 1.000 | 0.500 | 0.50 |" in text
    assert norm == 1.0


def test_blackbox_ablation_runs_table_3_on_a_small_model(scripts, tmp_path, monkeypatch):
    """The ablation part on a tiny model with 16 x 16 inputs (the attack space 4 -> 8 -> 16
    instead of 32 -> 64 -> 128): each variant stores success, first valid iteration, final loss
    and its exact queries, and a rerun skips the stored rows."""
    blackbox = scripts("blackbox")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4)).eval()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    args = blackbox.build_parser().parse_args(["--ablation-steps", "20", "--ablation-c", "50"])
    args.model = "tiny"
    settings = blackbox.ablation_settings(args)
    assert settings["hierarchy"] == ((2, 64), (10, 128)) and settings["attack_size"] == 32
    small = settings | {"attack_size": 4, "hierarchy": ((2, 8), (10, 16))}
    monkeypatch.setattr(blackbox, "ablation_settings", lambda _args: small)
    results = scripts("_results").Results(tmp_path / "rows.jsonl")
    blackbox.run_ablation(args, results, model, x, torch.zeros(1, dtype=torch.long))
    rows = {r["variant"]: r for r in results.values()}
    assert set(rows) == set(blackbox.ABLATION)
    # 2 iterations on 4 x 4 x 3 = 48 coordinates, then 128 per iteration; plus the clean query
    hierarchical = 1 + 2 * (2 * 48 + 1) + 18 * (2 * 128 + 1)
    for row in rows.values():
        full_size = row["variant"] == "No hierarchical attack"
        assert row["queries"] == (1 + 20 * (2 * 128 + 1) if full_size else hierarchical)
        assert row["first_valid"] is None or 1 <= row["first_valid"] <= 20
        assert row["success"] == (row["first_valid"] is not None)
    before = len(list(results.values()))
    blackbox.run_ablation(args, results, model, x, torch.zeros(1, dtype=torch.long))
    assert len(list(results.values())) == before
