"""`advx bench`: grid expansion, config validation, resume after a killed driver, failed jobs
reported while the others complete, and equal per-sample results under the local and Ray
executors (on a local Ray cluster started once for this module)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import stored_results

from advx.cli import main
from advx.evaluation import ResultsStore
from advx.evaluation.bench import ConfigError, load_config, run_sweep
from advx.models import get_spec
from advx.models.checkpoints import BUNDLED

N_IMAGES = 4


def _tiny_checkpoint(path: Path) -> Path:
    """A small MNIST MLP (784-150-100-10), a few SGD steps on the bundled images."""
    from advx import data

    torch.manual_seed(0)
    model = get_spec("mnist-fcnn").build()
    images, labels = data.load_demo()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images[:200]), labels[:200]).backward()
        optimizer.step()
    torch.save({"architecture": "mnist-fcnn", "state_dict": model.state_dict()}, path)
    return path


TINY_CONFIG = """
[data]
dataset = "mnist-demo"
n = {n}
batch_size = 2

[[models]]
name = "mnist-cnn"

[[models]]
name = "tiny-mlp"
checkpoint = "{checkpoint}"

[[attacks]]
name = "fgm"
norm = "inf"
eps = [0.1, 0.2]

[[attacks]]
name = "ddn"
steps = [3, 6]

[[attacks]]
name = "pgd"
norm = "inf"
eps = 0.2
steps = 3
targeted = ["random", "all"]
"""


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    if not BUNDLED["mnist-cnn"].is_file():
        pytest.skip("bundled mnist-cnn checkpoint not present")
    folder = tmp_path_factory.mktemp("bench")
    checkpoint = _tiny_checkpoint(folder / "tiny.pt")
    path = folder / "tiny.toml"
    path.write_text(TINY_CONFIG.format(n=N_IMAGES, checkpoint=checkpoint))
    return path


@pytest.fixture(scope="module")
def local_reference(tiny_config, tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("local") / "local.sqlite"
    result = run_sweep(tiny_config, executor="local", db=db, progress=False)
    assert [o.status for o in result.outcomes] == ["complete"] * 12
    return db


# ----------------------------------------------------------------------------------- grid


def test_grid_is_the_product_of_the_lists(tiny_config):
    jobs = load_config(tiny_config).jobs
    assert len(jobs) == 2 * 3 * 2
    assert {(j.model, j.attack) for j in jobs} == {
        (m, a) for m in ("mnist-cnn", "tiny-mlp") for a in ("fgm", "ddn", "pgd")
    }
    assert (
        sorted(j.hyperparameters["eps"] for j in jobs if j.attack == "fgm") == [0.1] * 2 + [0.2] * 2
    )
    assert {j.targets for j in jobs if j.attack == "pgd"} == {"random", "all"}


def test_sweep_stores_every_job_and_all_targets_cases(local_reference):
    with ResultsStore(local_reference) as store:
        runs = store.runs()
        assert len(runs) == 12 and all(r["status"] == "complete" for r in runs)
        for run in runs:
            n = len(store.samples(run["id"])["sample_index"])
            mode = run["config"]["data"]["targets"]
            assert n == (N_IMAGES * 9 if mode == "all" else N_IMAGES)
            if mode == "all":
                cases = run["summary"]["target_cases"]
                # best case succeeds at least as often as the average, the average as the worst
                rates = [cases[c]["success_rate"] for c in ("best", "average", "worst")]
                assert rates[0] >= rates[1] >= rates[2]


def test_rerun_skips_finished_jobs(tiny_config, local_reference, tmp_path):
    before = stored_results(local_reference)
    result = run_sweep(tiny_config, db=local_reference, progress=False)
    assert {o.status for o in result.outcomes} == {"skipped"}
    assert stored_results(local_reference) == before


# ------------------------------------------------------------------------------- resume


def _sample_count(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as connection:
            return connection.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_killed_driver_loses_and_duplicates_nothing(tiny_config, local_reference, tmp_path):
    db = tmp_path / "killed.sqlite"
    command = [sys.executable, "-m", "advx.cli", "bench", str(tiny_config), "--db", str(db)]
    process = subprocess.Popen([*command, "--quiet"], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while _sample_count(db) < 30 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted = stored_results(db)
    assert any(status != "complete" for status, *_ in interrupted.values()), "not killed midway"
    assert len(interrupted) < 12 or _sample_count(db) < sum(
        len(v[1]) for v in stored_results(local_reference).values()
    )
    assert main(["bench", str(tiny_config), "--db", str(db), "--quiet"]) == 0
    assert stored_results(db) == stored_results(local_reference)


# ----------------------------------------------------------------------------- failures


FAILING = """
[data]
dataset = "mnist-demo"
n = 2

[[models]]
name = "mnist-cnn"

[[attacks]]
name = "ddn"
steps = 2
gamma = [0.05, 1.5, 0.1]
"""


def test_failed_job_is_reported_and_the_others_complete(tmp_path, capsys):
    if not BUNDLED["mnist-cnn"].is_file():
        pytest.skip("bundled mnist-cnn checkpoint not present")
    config = tmp_path / "failing.toml"
    config.write_text(FAILING)
    db = tmp_path / "failing.sqlite"
    assert main(["bench", str(config), "--db", str(db), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "1 of 3 jobs failed" in captured.err
    assert "gamma=1.5" in captured.err and "gamma must be a number in (0, 1)" in captured.err
    with ResultsStore(db) as store:
        statuses = sorted(
            (r["config"]["hyperparameters"]["gamma"], r["status"]) for r in store.runs()
        )
    assert statuses == [(0.05, "complete"), (0.1, "complete"), (1.5, "interrupted")]


# ------------------------------------------------------------------------------ invalid


VALID = {
    "data": '[data]\ndataset = "mnist-demo"\nn = 2\n',
    "models": '[[models]]\nname = "mnist-cnn"\n',
}


@pytest.mark.parametrize(
    ("attack_table", "key", "reason"),
    [
        ('name = "nosuch"', "attacks[0].name", "unknown attack 'nosuch'"),
        ('name = "ddn"\nstepz = 3', "attacks[0].stepz", "has no hyperparameter 'stepz'"),
        ('name = "ddn"\nsteps = "many"', "attacks[0].steps", "expected an integer, got str"),
        ('name = "ddn"\nsteps = 2.5', "attacks[0].steps", "expected an integer, got float"),
        ('name = "fgm"\neps = []', "attacks[0].eps", "empty list"),
        ('name = "fgm"', "attacks[0].eps", "required by attack fgm"),
        ('name = "ddn"\nnorm = "inf"', "attacks[0].norm", "L2 norm only"),
        ('name = "ddn"\ntargeted = "sometimes"', "attacks[0].targeted", "unknown targeted mode"),
    ],
)
def test_invalid_configs_name_file_key_and_reason(tmp_path, capsys, attack_table, key, reason):
    path = tmp_path / "bad.toml"
    path.write_text(VALID["data"] + VALID["models"] + "[[attacks]]\n" + attack_table + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: ") and reason in message, message
    assert main(["bench", str(path), "--db", str(tmp_path / "x.sqlite")]) == 2
    assert reason in capsys.readouterr().err
    assert not (tmp_path / "x.sqlite").exists()


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('[data]\ndataset = "imagenet"\nn = 2\n', "data.dataset", "unknown dataset"),
        ('[data]\ndataset = "mnist"\n', "data.n", "required"),
        ('[data]\ndataset = "mnist"\nn = "ten"\n', "data.n", "expected an integer"),
        (VALID["data"] + '[[models]]\nname = "nosuch-net"\n', "models[0].name", "unknown model"),
        (
            VALID["data"] + '[[models]]\nname = "cifar-cnn"\n',
            "models[0].name",
            "is a cifar10 model",
        ),
        (VALID["data"] + VALID["models"], "attacks", "at least one [[attacks]]"),
        (VALID["data"] + VALID["models"] + "[sweep]\nx = 1\n", "sweep", "unknown table"),
        ("[data\n", "-", "not valid TOML"),
    ],
)
def test_invalid_tables(tmp_path, text, key, reason):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: {key}: ") and reason in str(caught.value)


def test_report_json(local_reference, capsys):
    assert main(["report", "--db", str(local_reference), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert len(runs) == 12
    for run in runs:
        assert run["status"] == "complete"
        assert {"attack", "model", "hyperparameters", "data"} <= set(run["config"])
        assert 0.0 <= run["summary"]["success_rate"] <= 1.0


def test_connection_error_on_token_authentication_says_what_to_set():
    from advx.evaluation.bench import _authentication_hint

    try:
        try:
            raise RuntimeError("RPC error: InvalidAuthToken: token is missing or incorrect")
        except RuntimeError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from cause
    except ConnectionError as error:
        assert "RAY_AUTH_MODE=token" in _authentication_hint(error)
    assert _authentication_hint(ConnectionError("Failed to connect: no route to host")) == ""


# ---------------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'advx[ray]')")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")  # tqdm_ray: leave builtins.print alone
    # log_to_driver: the workers' tqdm_ray progress reaches the driver as log lines
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    yield ray
    ray.shutdown()


def test_ray_gives_the_local_results(tiny_config, local_reference, ray_cluster, tmp_path):
    db = tmp_path / "ray.sqlite"
    result = run_sweep(tiny_config, executor="ray", db=db, progress=False)
    assert [o.status for o in result.outcomes] == ["complete"] * 12
    assert stored_results(db) == stored_results(local_reference)


def test_ray_resumes_a_half_finished_job(tiny_config, local_reference, ray_cluster, tmp_path):
    db = tmp_path / "half.sqlite"
    with ResultsStore(local_reference) as source, ResultsStore(db) as target:
        for run in source.runs()[:2]:
            run_id, _ = target.open_run(run["config"])
            columns = source.samples(run["id"])
            rows = [{c: columns[c][k].item() for c in columns} for k in range(1)]
            target.add_samples(run_id, rows)  # one stored sample of a four-sample run
    result = run_sweep(tiny_config, executor="ray", db=db, progress=False, max_parallel=2)
    assert [o.status for o in result.outcomes] == ["complete"] * 12
    resumed = stored_results(db)
    reference = stored_results(local_reference)
    for key in reference:  # the first two runs have no images for the pre-seeded sample
        assert resumed[key][:3] == reference[key][:3]


def test_ray_reports_a_failed_job(ray_cluster, tmp_path):
    if not BUNDLED["mnist-cnn"].is_file():
        pytest.skip("bundled mnist-cnn checkpoint not present")
    config = tmp_path / "failing.toml"
    config.write_text(FAILING)
    result = run_sweep(config, executor="ray", db=tmp_path / "f.sqlite", progress=False)
    assert [o.status for o in result.outcomes] == ["complete", "failed", "complete"]
    assert "gamma must be a number in (0, 1)" in result.failed[0].error


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parent.parent / "benchmarks" / "configs").glob("*.toml"))
)
def test_shipped_configs_are_valid(path):
    jobs = load_config(path).jobs
    assert jobs and all(job.n >= 100 for job in jobs)


def _one_job_config(tmp_path) -> Path:
    config = tmp_path / "one.toml"
    config.write_text(
        '[data]\ndataset = "mnist-demo"\nn = 2\n[[models]]\nname = "mnist-cnn"\n'
        '[[attacks]]\nname = "fgm"\neps = 0.1\n'
    )
    return config


def _two_job_config(tmp_path) -> Path:
    config = tmp_path / "two.toml"
    config.write_text(
        '[data]\ndataset = "mnist-demo"\nn = 4\nbatch_size = 2\n[[models]]\nname = "mnist-cnn"\n'
        '[[attacks]]\nname = "fgm"\neps = [0.1, 0.2]\n'
    )
    return config


class RecordingBar:
    """A progress bar that records what the runner tells it."""

    def __init__(self, made: list, **options):
        self.options, self.updates, self.closed = options, [], False
        made.append(self)

    def update(self, n: int = 1) -> None:
        self.updates.append(n)

    def close(self) -> None:
        self.closed = True


def test_execute_job_drives_the_progress_bar_it_is_given(tmp_path):
    if not BUNDLED["mnist-cnn"].is_file():
        pytest.skip("bundled mnist-cnn checkpoint not present")
    from advx.evaluation.bench import execute_job

    job = load_config(_two_job_config(tmp_path)).jobs[0]
    made: list[RecordingBar] = []
    first = execute_job(job, None, progress=lambda **o: RecordingBar(made, **o))
    resumed = execute_job(
        job, None, seed_rows=first["rows"][:2], progress=lambda **o: RecordingBar(made, **o)
    )
    assert [(b.options["total"], b.options["initial"]) for b in made] == [(4, 0), (4, 2)]
    assert [b.updates for b in made] == [[2, 2], [2]] and all(b.closed for b in made)
    assert [r["sample_index"] for r in resumed["rows"]] == [2, 3]
    untimed = [{k: v for k, v in r.items() if k != "seconds"} for r in resumed["rows"]]
    assert untimed == [{k: v for k, v in r.items() if k != "seconds"} for r in first["rows"][2:]]


def test_ray_progress_per_job_reaches_the_driver(ray_cluster, tmp_path, monkeypatch):
    """Each Ray task draws its own tqdm_ray bar, forwarded to the driver through Ray's logs;
    the driver keeps the sweep's bar; the rows are the local executor's."""
    if not BUNDLED["mnist-cnn"].is_file():
        pytest.skip("bundled mnist-cnn checkpoint not present")
    from ray.experimental import tqdm_ray

    states: list[dict] = []
    monkeypatch.setattr(
        tqdm_ray._BarManager, "process_state_update", lambda self, state: states.append(state)
    )
    config = _two_job_config(tmp_path)
    local = run_sweep(config, executor="local", db=tmp_path / "l.sqlite", progress=False)
    messages: list[str] = []
    result = run_sweep(config, executor="ray", db=tmp_path / "r.sqlite", echo=messages.append)
    assert [o.status for o in result.outcomes] == ["complete"] * 2
    assert stored_results(tmp_path / "r.sqlite") == stored_results(tmp_path / "l.sqlite")

    def closed_job_bars() -> dict:
        return {s["uuid"]: s for s in states if s["unit"] == "sample" and s["closed"]}

    deadline = time.monotonic() + 30  # the log monitor forwards worker lines asynchronously
    while len(closed_job_bars()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    bars = closed_job_bars()
    assert sorted(b["desc"] for b in bars.values()) == sorted(o.job.label() for o in local.outcomes)
    assert all(b["x"] == b["total"] == 4 and b["pid"] != os.getpid() for b in bars.values())
    sweep = [s for s in states if s["unit"] == "job"]
    assert sweep[-1]["closed"] and sweep[-1]["x"] == sweep[-1]["total"] == 2
    assert {s["pid"] for s in sweep} == {os.getpid()}
    node = ray_cluster.get_runtime_context().get_node_id()
    assert [o.node_id for o in result.outcomes] == [node, node]
    assert all(node[:8] in m for m in messages if m.startswith("done"))


def test_ray_job_progress_makes_a_tqdm_ray_bar_that_starts_at_the_resumed_samples(
    ray_cluster, tmp_path, monkeypatch
):
    from ray.experimental import tqdm_ray

    from advx.evaluation.bench import ray_job_progress

    states: list[dict] = []
    monkeypatch.setattr(
        tqdm_ray._BarManager, "process_state_update", lambda self, state: states.append(state)
    )
    job = load_config(_one_job_config(tmp_path)).jobs[0]
    bar = ray_job_progress(job)(total=4, initial=3, unit="sample", desc="fgm")
    assert isinstance(bar, tqdm_ray.tqdm) and (bar.n, bar.total) == (3, 4)
    bar.update(1)
    bar.close()
    assert states[0]["x"] == 3 and states[0]["desc"] == job.label()  # shown at once, resumed
    assert states[-1]["x"] == 4 and states[-1]["closed"]


def test_ray_retries_a_raising_task(ray_cluster, tmp_path, monkeypatch):
    from advx.evaluation import bench

    attempts = tmp_path / "attempts"

    def flaky(job, seed_rows, progress=False):
        if not attempts.exists():
            attempts.write_text("x")
            raise RuntimeError("transient")
        return bench.execute_job(job, None, seed_rows=seed_rows)

    monkeypatch.setattr(bench, "_ray_execute", flaky)
    result = run_sweep(_one_job_config(tmp_path), executor="ray", db=tmp_path / "r.sqlite")
    assert [o.status for o in result.outcomes] == ["complete"]


# Last: it kills Ray workers, whose replacements would have to import torch again.
def test_ray_retries_a_dead_worker_once_then_reports(ray_cluster, tmp_path, monkeypatch):
    from advx.evaluation import bench

    attempts = tmp_path / "attempts"
    execute = bench._ray_execute

    def dying(job, seed_rows, progress=False):  # defined here: Ray ships it by value
        if job.hyperparameters["eps"] == 0.2:
            return execute(job, seed_rows, progress)
        with open(attempts, "a") as handle:
            handle.write("x")
        os._exit(1)

    monkeypatch.setattr(bench, "_ray_execute", dying)
    db = tmp_path / "d.sqlite"
    result = run_sweep(_two_job_config(tmp_path), executor="ray", db=db)
    assert [o.status for o in result.outcomes] == ["failed", "complete"]  # the sweep went on
    assert "WorkerCrashedError" in result.failed[0].error
    assert attempts.read_text() == "xx"  # the first try and one retry
    with ResultsStore(db) as store:
        assert [r["status"] for r in store.runs()] == ["complete"]  # the other job's rows kept
