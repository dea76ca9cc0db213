"""A run's own cluster preloads its kind's worker modules (``Job.worker_modules`` → Ray's
``preload_python_modules``): with a real single-node Ray started the way ``distml run`` starts
one, a task finds the modules imported that nothing in it imports; without the preload it does
not (the control, so a Ray that ignores the setting fails here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.allow_local_ray, pytest.mark.cluster]


def _probe(source: str, *args: str) -> dict:
    """Run ``source`` in a fresh Python (its own Ray) and return the JSON of its last line."""
    out = subprocess.run(
        [sys.executable, "-c", source, *args], capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


PROBE = """
import json, sys
import ray
from distml.runtime.cluster import cluster

def probe():
    import sys
    return {m: m in sys.modules for m in ("colorsys", "distml.jobs.kmeans")}

preload = tuple(sys.argv[1:])
with cluster(num_cpus=1, preload=preload) as info:
    seen = ray.get(ray.remote(probe).remote())
print(json.dumps({"mode": info.mode, "seen": seen}))
"""


@pytest.mark.parametrize(
    "preload,want",
    [(("colorsys", "distml.jobs.kmeans"), True), ((), False)],
    ids=["preloaded", "control"],
)
def test_workers_of_a_runs_own_cluster_import_the_preload(preload, want):
    got = _probe(PROBE, *preload)
    assert got["mode"] == "local"
    assert got["seen"] == {"colorsys": want, "distml.jobs.kmeans": want}


STATE_PROBE = """
import json, sys, threading, time
import ray
from ray._private import ray_constants
from ray.experimental.internal_kv import _internal_kv_get
from distml.runtime.cluster import cluster

def head_threads():
    return [t for t in threading.enumerate() if t.name == "distml-dashboard-head"]

with cluster(num_cpus=1) as info:
    node = ray._private.worker._global_node
    head = node.all_processes[ray_constants.PROCESS_TYPE_DASHBOARD][0].process
    # what ray.init waits for before it returns: the head registered its address in the GCS
    # (Ray Train V2 and Ray Data look the dashboard up there)
    address = _internal_kv_get(
        ray_constants.DASHBOARD_ADDRESS, namespace=ray_constants.KV_NAMESPACE_DASHBOARD
    )
    alive = sum(n["Alive"] for n in ray.nodes())
    pid = ray.get(ray.remote(lambda: __import__("os").getpid()).remote())
    time.sleep(1.5)  # the head outlives the thread's start of it (the parent-death signal)
    # (Popen.poll answers None while the holding thread waits on it: ask the kernel)
    status = open(f"/proc/{head.pid}/stat").read().split(")")[-1].split()[0]
    running = status not in ("Z", "X") and len(head_threads()) == 1
    # the dashboard agent the raylet starts: the full one, not --minimal
    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    raylet_args = open(f"/proc/{raylet}/cmdline").read().split(chr(0))
    agents = [
        "--minimal" in a.split() for a in raylet_args if a.startswith("--dashboard_agent_command=")
    ]
    aiohttp = "aiohttp" in sys.modules
deadline = time.monotonic() + 10
while head_threads() and time.monotonic() < deadline:
    time.sleep(0.05)
print(json.dumps({"mode": info.mode, "head_running": running, "registered": address is not None,
                  "alive": alive, "task": pid > 0, "threads_after": len(head_threads()),
                  "head_after": head.poll() is not None, "agents_minimal": agents,
                  "driver_imported_aiohttp": aiohttp}))
"""


def test_a_runs_own_cluster_has_its_dashboard_head_up_when_it_is_ready():
    """The head starts beside the raylet (runtime.node_start.quick_node_start): when the
    cluster is handed to the run the head has registered its address, as when Ray started
    it before the raylet, and it keeps running (Ray kills a child when the thread that
    started it ends); a task runs; after the stop neither the head nor its thread is left.
    Ray's dashboard dependency check was answered without its imports (the driver never
    imported aiohttp) and the same way (the dashboard agent is the full one)."""
    got = _probe(STATE_PROBE)
    assert got == {
        "mode": "local",
        "head_running": True,
        "registered": True,
        "alive": 1,
        "task": True,
        "threads_after": 0,
        "head_after": True,
        "agents_minimal": [False],
        "driver_imported_aiohttp": False,
    }


NO_HEAD_PROBE = """
import json, os, threading
import ray
from ray._private import ray_constants
from ray.experimental.internal_kv import _internal_kv_get
from distml.runtime.cluster import cluster

def heads(session):  # Ray's dashboard head processes of this cluster's session
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = open(f"/proc/{pid}/cmdline").read().split(chr(0))
        except OSError:
            continue
        if any(a.endswith("dashboard/dashboard.py") for a in args) and any(
            session in a for a in args
        ):
            out.append(int(pid))
    return out

with cluster(num_cpus=1, head=False) as info:
    node = ray._private.worker._global_node
    session = node.get_session_dir_path()
    recorded = len(node.all_processes.get(ray_constants.PROCESS_TYPE_DASHBOARD) or [])
    address = _internal_kv_get(
        ray_constants.DASHBOARD_ADDRESS, namespace=ray_constants.KV_NAMESPACE_DASHBOARD
    )
    running = heads(session)
    threads = [t.name for t in threading.enumerate() if t.name == "distml-dashboard-head"]
    pid = ray.get(ray.remote(lambda: os.getpid()).remote())
    agents = len(node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET) or [])
print(json.dumps({"mode": info.mode, "recorded": recorded, "registered": address is not None,
                  "running": running, "threads": threads, "task": pid > 0, "raylets": agents}))
"""


def test_a_runs_own_cluster_without_a_train_worker_group_starts_no_dashboard_head():
    """``cluster(head=False)`` (``distml.run`` for a run whose plan is no Train worker
    group): Ray's dashboard head is neither started nor registered, and the cluster runs
    tasks (tests/unit/test_cold_path.py checks which runs ask for it)."""
    got = _probe(NO_HEAD_PROBE)
    assert got == {
        "mode": "local",
        "recorded": 0,
        "registered": False,
        "running": [],
        "threads": [],
        "task": True,
        "raylets": 1,
    }


FAILED_START_PROBE = """
import os, threading, time, json
os.environ["DISTML_PROBE_MARK"] = "failed-start"
import ray
from ray._private.node import Node
from distml.runtime.cluster import cluster

original = Node.start_raylet
def failing(self, *a, **k):
    raise RuntimeError("injected: the raylet did not start")
Node.start_raylet = failing
try:
    with cluster(num_cpus=1):
        error = None
except Exception as e:
    error = str(e)
time.sleep(1)
def marked():
    out = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = open(f"/proc/{d}/environ", "rb").read()
        except OSError:
            continue
        if b"DISTML_PROBE_MARK=failed-start" in env and int(d) != os.getpid():
            out.append(open(f"/proc/{d}/cmdline").read().split(chr(0))[0][-40:])
    return out
left = marked()
threads = [t.name for t in threading.enumerate() if t.name == "distml-dashboard-head"]
Node.start_raylet = original
with cluster(num_cpus=1) as info:
    task = ray.get(ray.remote(lambda: 7).remote())
print(json.dumps({"error": error, "left": left, "head_threads": threads, "retry": [info.mode, task]}))
"""


def test_a_start_that_fails_part_way_leaves_nothing_running():
    """A run's own cluster whose start fails after its GCS and dashboard head are up (the raylet
    does not start): ray.init raises before it records the node, so nothing would ever stop
    them. distml ends what that start started: no process of it is left, nor the thread that
    waits on its dashboard head, and the next start in the same process works."""
    got = _probe(FAILED_START_PROBE)
    assert got == {
        "error": "injected: the raylet did not start",
        "left": [],
        "head_threads": [],
        "retry": ["local", 7],
    }


CONFIG_PROBE = """
import base64, json
import ray
from ray._private import ray_constants
from distml.runtime.cluster import cluster

with cluster(num_cpus=1) as info:
    gcs = ray._private.worker._global_node.all_processes[ray_constants.PROCESS_TYPE_GCS_SERVER]
    args = open(f"/proc/{gcs[0].process.pid}/cmdline").read().split(chr(0))
    config = [a.split("=", 1)[1] for a in args if a.startswith("--config_list=")][0]
    task = ray.get(ray.remote(lambda: 1).remote())
print(json.dumps({"mode": info.mode, "config": json.loads(base64.b64decode(config)), "task": task}))
"""


def test_a_runs_own_cluster_retries_local_connections_every_20_ms():
    """The cluster's system config (what the GCS hands every raylet and worker) carries the
    connection retry of ``node_start.CONNECT_RETRY``: Ray's 1 s wait between attempts cost every
    other start a second, when the raylet's first connection to its object store came a moment
    too early (docs/clusters.md). Ray refuses unknown keys, so a cluster that runs a task also
    shows it knows these."""
    from distml.runtime.node_start import CONNECT_RETRY

    got = _probe(CONFIG_PROBE)
    assert got["mode"] == "local" and got["task"] == 1
    assert {k: got["config"].get(k) for k in CONNECT_RETRY} == CONNECT_RETRY
    assert CONNECT_RETRY["raylet_client_connect_timeout_milliseconds"] <= 50
    # the same 10 s in all before a connection is given up, as Ray's own 10 × 1 s
    assert (
        CONNECT_RETRY["raylet_client_connect_timeout_milliseconds"]
        * CONNECT_RETRY["raylet_client_num_connect_attempts"]
        >= 10_000
    )
