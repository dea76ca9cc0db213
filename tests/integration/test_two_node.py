"""A two-node Ray cluster on this machine (a head and a worker joined with ``ray start
--address``, each with its own temp dir and one CPU): jobs submitted to it place their tasks on
both nodes and give the same results as the single-node run.

Kinds covered: sklearn cross-validation (one task per fold) and statsmodels many-models (one
task per batch of groups). Multi-worker xgboost joins this test once that kind can run on more
than one worker.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

import pandas as pd
import pytest
from test_submit_cluster import ROOT, LocalRayCluster, cli

import distml

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="finds its Ray processes through /proc"
    ),
]

TASKS_OF_JOB = """
import json, sys
from ray.util.state import list_tasks
tasks = list_tasks(address=sys.argv[1], filters=[("job_id", "=", sys.argv[2])], limit=10000,
                   raise_on_missing_output=False)
print(json.dumps([[t.name, t.node_id, str(t.state)] for t in tasks]))
"""


@pytest.fixture(scope="module")
def two_nodes():
    cluster = LocalRayCluster(token=secrets.token_hex(16), loopback_only=False)
    try:
        cluster.start_head(num_cpus=1)
        cluster.add_worker(num_cpus=1)
        yield cluster
    finally:
        cluster.stop()
        assert cluster.pids() == [], "processes of the test cluster survived stop()"


def _submit(cluster, spec: str, sid: str, out, *sets: str) -> dict:
    args = [a for s in sets for a in ("--set", s)]
    res = cli(
        "submit",
        spec,
        "--address",
        cluster.url,
        "--wait",
        "--json",
        "--submission-id",
        sid,
        "--output",
        str(out),
        *args,
        env={"RAY_AUTH_TOKEN": cluster.token},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    payload = json.loads(res.stdout)
    assert payload["job_status"] == "SUCCEEDED"
    return payload


def _task_nodes(cluster, job_id: str, names: set[str], expected: int) -> dict[str, set]:
    """{task name: node ids}, once the cluster has recorded ``expected`` finished tasks."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.token}
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(
            [sys.executable, "-c", TASKS_OF_JOB, cluster.url, job_id],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        tasks = [t for t in json.loads(out.stdout.strip().splitlines()[-1]) if t[0] in names]
        if sum("FINISHED" in t[2] for t in tasks) >= expected or time.monotonic() > deadline:
            break
        time.sleep(1)
    nodes: dict[str, set] = {}
    for name, node, _ in tasks:
        nodes.setdefault(name, set()).add(node)
    return nodes


def test_two_nodes_are_up(two_nodes):
    nodes = two_nodes.alive_nodes()
    assert len(nodes) == 2 and sum(bool(n["is_head_node"]) for n in nodes) == 1


@pytest.mark.usefixtures("ray_cluster")
def test_cv_folds_run_on_both_nodes_and_equal_single_node(two_nodes, tmp_path):
    spec = f"{ROOT}/jobs/sklearn_iris.yaml"
    payload = _submit(two_nodes, spec, "iris-2n", tmp_path / "two")
    node_ids = {n["node_id"] for n in two_nodes.alive_nodes()}
    placed = _task_nodes(
        two_nodes, payload["job_id"], {"_fold_task", "_fit_task", "_prepare_task"}, expected=7
    )
    used = set().union(*placed.values())
    assert used == node_ids, placed  # both nodes did work
    single = distml.run(spec, output=tmp_path / "one")
    assert payload["metrics"] == single.metrics  # same folds, same seeds: identical figures


@pytest.mark.usefixtures("ray_cluster")
def test_many_models_run_on_both_nodes_and_equal_single_node(two_nodes, tmp_path):
    spec = f"{ROOT}/jobs/statsmodels_grunfeld_firms.yaml"
    payload = _submit(two_nodes, spec, "grunfeld-2n", tmp_path / "two", "model.groups_per_task=1")
    node_ids = {n["node_id"] for n in two_nodes.alive_nodes()}
    placed = _task_nodes(two_nodes, payload["job_id"], {"fit_task", "map_partition"}, expected=11)
    assert set().union(*placed.values()) == node_ids, placed
    single = distml.run(spec, output=tmp_path / "one", model__groups_per_task=1)
    two_dir = payload["run_dir"]
    for table in ("coefficients", "model_stats"):
        two = pd.read_parquet(os.path.join(two_dir, "tables", f"{table}.parquet"))
        pd.testing.assert_frame_equal(two, single.tables[table])
