"""`advx bench --executor ray --address ...` on a two-node Ray cluster (ray.cluster_utils.Cluster:
a head and a second raylet on this machine, which Ray treats as two nodes): the jobs run on both
nodes and the stored rows equal the local executor's. Slow (two raylets and their workers)."""

from __future__ import annotations

import os

import pytest
from helpers import stored_results

from advx.cli import main
from advx.evaluation.bench import run_sweep
from advx.models.checkpoints import BUNDLED

pytestmark = pytest.mark.slow

CONFIG = """
[data]
dataset = "mnist-demo"
n = 4
batch_size = 2

[[models]]
name = "mnist-cnn"

[[attacks]]
name = "fgm"
norm = "inf"
eps = [0.1, 0.2]

[[attacks]]
name = "ddn"
steps = [3, 6]
"""


@pytest.fixture
def two_nodes():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'advx[ray]')")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield ray, cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_sweep_on_two_nodes_uses_both_and_stores_the_local_rows(two_nodes, tmp_path, capsys):
    if not BUNDLED["mnist-cnn"].is_file():
        pytest.skip("bundled mnist-cnn checkpoint not present")
    ray, cluster = two_nodes
    config = tmp_path / "sweep.toml"
    config.write_text(CONFIG)
    local = run_sweep(config, executor="local", db=tmp_path / "local.sqlite", progress=False)
    assert [o.status for o in local.outcomes] == ["complete"] * 4
    capsys.readouterr()
    db = tmp_path / "cluster.sqlite"
    command = ["bench", str(config), "--executor", "ray", "--address", cluster.address]
    assert main([*command, "--db", str(db), "--quiet"]) == 0
    table = capsys.readouterr().out.splitlines()
    header = table[0]
    assert header.split()[-2:] == ["ran", "on"]
    placed = [line[header.index("ran on") :].split()[-1] for line in table[1:5]]
    nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert len(nodes) == 2
    assert {node[:8] for node in nodes} == set(placed)  # every job on a node, both nodes used
    assert stored_results(db) == stored_results(tmp_path / "local.sqlite")
