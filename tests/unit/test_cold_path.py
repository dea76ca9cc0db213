"""What keeps ``distml --help`` and ``distml validate`` instant (issue 14: under 0.5 s of CPU,
measured by benchmarks/probe_cli_cpu.py, not here): the real CLI entry, ``python -m distml``,
run in a fresh interpreter with ``-X importtime``, imports no heavy library. Structural, not
timed: a module at the top of a kind that imports pandas, or a validation that loads a data set
it could know from distml/runtime/builtin_facts.py, fails it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])
HEAVY = (
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
    "sklearn",
    "ray",
    "xgboost",
    "torch",
    "lightgbm",
    "statsmodels",
    "dask",
    "fsspec",
)


def _cli_imports(*argv: str) -> tuple[int, set[str], str]:
    """Exit code, the top-level packages imported, and stdout of ``python -m distml ARGV``."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "distml", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    modules = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in out.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    assert "distml" in modules, out.stderr[-2000:]  # the probe sees imports at all
    return out.returncode, modules, out.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ("--help",),
        ("validate", "jobs/quickstart.yaml"),
        ("validate", "jobs/quickstart.yaml", "--no-data"),
    ],
)
def test_help_and_validate_import_no_heavy_library(argv):
    code, modules, stdout = _cli_imports(*argv)
    assert code == 0, stdout
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))
    if argv[0] == "validate":
        assert "is valid" in stdout


def test_the_probe_sees_a_heavy_import():
    """The same probe on a command that must load data (a target that is not the bundled data
    set's default one, so its figures are not recorded) reports pandas: the assertion above
    can fail."""
    code, modules, _ = _cli_imports(
        "validate",
        "jobs/quickstart.yaml",
        "--set",
        "data.source=builtin:wine",
        "--set",
        "data.target=alcohol",
    )
    assert code in (0, 2) and "pandas" in modules


def test_a_runs_own_cluster_starts_without_the_idle_monitors(monkeypatch):
    """distml.runtime.cluster._start_local makes Ray's Node skip its autoscaler monitor and
    log monitor while ray.init runs (private Ray API: this fails loudly when Ray renames the
    two starters) and puts them back after, also when ray.init fails; DISTML_DASHBOARD=1
    keeps them."""
    import ray
    from ray._private.node import Node

    from distml.runtime import cluster, node_start

    originals = {name: getattr(Node, name) for name in node_start.IDLE_MONITORS}
    assert all(callable(f) for f in originals.values())
    seen = {}

    def fake_init(**kwargs):
        seen.update({name: getattr(Node, name) for name in node_start.IDLE_MONITORS})
        seen["kwargs"] = kwargs
        raise RuntimeError("no cluster in a unit test")

    monkeypatch.setattr(ray, "init", fake_init)
    with pytest.raises(RuntimeError, match="no cluster"):
        cluster._start_local(2, None)
    assert all(seen[name] is not originals[name] for name in node_start.IDLE_MONITORS)
    assert seen[node_start.IDLE_MONITORS[0]](object()) is None
    assert seen["kwargs"]["address"] == "local" and seen["kwargs"]["log_to_driver"] is False
    assert {name: getattr(Node, name) for name in node_start.IDLE_MONITORS} == originals

    monkeypatch.setenv("DISTML_DASHBOARD", "1")
    with pytest.raises(RuntimeError, match="no cluster"):
        cluster._start_local(2, None)
    assert {name: seen[name] for name in node_start.IDLE_MONITORS} == originals


def test_a_runs_own_cluster_starts_its_dashboard_beside_its_raylet(monkeypatch):
    """While distml's ray.init runs, Ray's Node starts the dashboard head in a thread (its
    dependency check first, in the caller's thread) and joins it before the node's last
    step, and services.get_node sees the raylet register without Ray's one-second retries;
    all three are Ray's own again after, also when ray.init fails (private Ray API: this
    fails loudly when Ray renames them). DISTML_DASHBOARD=1 keeps Ray's order."""
    import threading

    import ray
    import ray._private.services as services
    from ray._private.node import Node

    from distml.runtime import cluster, node_start

    names = (node_start.DASHBOARD_START, node_start.NODE_STARTED)
    originals = {name: getattr(Node, name) for name in names}
    original_get_node = services.get_node
    assert all(callable(f) for f in originals.values())
    seen: dict = {}

    def fake_init(**kwargs):
        seen.update({name: getattr(Node, name) for name in names})
        seen["get_node"] = services.get_node
        raise RuntimeError("no cluster in a unit test")

    monkeypatch.setattr(ray, "init", fake_init)
    with pytest.raises(RuntimeError, match="no cluster"):
        cluster._start_local(2, None)
    assert all(seen[name] is not originals[name] for name in names)
    assert seen["get_node"] is not original_get_node
    assert {name: getattr(Node, name) for name in names} == originals
    assert services.get_node is original_get_node

    # the patched pair: the head starts in another thread, the node's last step waits for it
    # and raises what its start raised
    order: list = []
    release = threading.Event()

    def slow_head(self, **kwargs):
        order.append(("head", threading.current_thread() is threading.main_thread(), kwargs))
        release.wait(5)
        raise ValueError("the head failed")

    monkeypatch.setattr(Node, node_start.DASHBOARD_START, slow_head)
    monkeypatch.setattr(Node, node_start.NODE_STARTED, lambda self: order.append("stats"))
    import ray._private.utils as ray_utils

    ray_check = ray_utils.get_dashboard_dependency_error
    node = object.__new__(Node)
    with node_start.quick_node_start():
        # Ray's dependency check is answered without importing the packages
        assert ray_utils.get_dashboard_dependency_error is node_start.dashboard_deps_missing
        getattr(Node, node_start.DASHBOARD_START)(
            node, include_dashboard=False, raise_on_failure=False
        )
        release.set()
        with pytest.raises(ValueError, match="the head failed"):
            getattr(Node, node_start.NODE_STARTED)(node)
    assert ray_utils.get_dashboard_dependency_error is ray_check
    assert order[0] == ("head", False, {"include_dashboard": False, "raise_on_failure": False})
    assert "stats" not in order  # a failed head stops the node's start there

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(Node, node_start.DASHBOARD_START, originals[node_start.DASHBOARD_START])
    monkeypatch.setattr(Node, node_start.NODE_STARTED, originals[node_start.NODE_STARTED])
    monkeypatch.setenv("DISTML_DASHBOARD", "1")
    with pytest.raises(RuntimeError, match="no cluster"):
        cluster._start_local(2, None)
    assert {name: seen[name] for name in names} == originals
    assert seen["get_node"] is original_get_node


def test_the_dashboard_dependency_check_answers_as_rays_without_importing(monkeypatch):
    """node_start.dashboard_deps_missing answers Ray's question (are the dashboard's packages
    installed?) as Ray's check does, from the installed packages; its list covers every
    package ray/dashboard/optional_deps.py imports (this fails when Ray adds one), and a
    missing one is an ImportError naming it, as Ray's."""
    import ast
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    from distml.runtime import node_start

    deps = Path(importlib.util.find_spec("ray.dashboard").origin).parent / "optional_deps.py"
    imported = set()
    for node in ast.walk(ast.parse(deps.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported and imported <= set(node_start.DASHBOARD_DEPS)
    probe = (
        "import sys, ray._private.utils as u\n"
        "from distml.runtime.node_start import dashboard_deps_missing as ours\n"
        "mine = ours(); print(repr(mine), 'aiohttp' in sys.modules)\n"
        "print(repr(u.get_dashboard_dependency_error()))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["None", "False", "None"]  # same answer, nothing imported
    monkeypatch.setattr(node_start, "DASHBOARD_DEPS", ("aiohttp", "distml_no_such_package"))
    missing = node_start.dashboard_deps_missing()
    assert isinstance(missing, ImportError) and missing.name == "distml_no_such_package"


def test_the_raylets_registration_is_seen_as_it_happens(monkeypatch):
    """Inside node_start.quick_node_start, services.get_node looks at the node table every 20 ms until
    the node is there, then asks Ray's own lookup (which then answers at once); rows of
    another shape (a Ray that renamed "NodeID") end the polling at the first look."""
    import ray._private.services as services
    import ray._private.state as state_mod

    from distml.runtime import node_start

    tables: list = [[], [{"NodeID": "other"}], [{"NodeID": "abc"}]]
    looks: list = []

    class FakeState:
        def _initialize_global_state(self, options):
            pass

        def node_table(self):
            looks.append(1)
            return tables[min(len(looks), len(tables)) - 1]

    monkeypatch.setattr(state_mod, "GlobalState", FakeState)
    monkeypatch.setattr(services, "_get_gcs_client_options", lambda address: None)
    monkeypatch.setattr(services, "get_node", lambda address, node_id: {"asked": node_id})
    with node_start.quick_node_start():
        assert services.get_node("127.0.0.1:1", "abc") == {"asked": "abc"}
    assert len(looks) == 3
    looks.clear()
    tables[:] = [[{"node_id": "abc"}]]
    with node_start.quick_node_start():
        assert services.get_node("127.0.0.1:1", "abc") == {"asked": "abc"}
    assert len(looks) == 1


_EXIT_PROBE = """
import atexit, sys, tempfile, threading, time
from pathlib import Path
from distml.runtime.procs import exit_now

out = Path(sys.argv[1])
keep = tempfile.TemporaryDirectory(dir=out)  # removed by its finalizer at exit
(out / "tmpdir").write_text(keep.name)
atexit.register(lambda: (out / "atexit").write_text("ran"))
if sys.argv[2] == "thread":
    def late():
        time.sleep(0.5)
        (out / "thread").write_text("finished")
    threading.Thread(target=late).start()
sys.stdout.write("no newline at the end")
sys.stderr.write("nor here")
exit_now(3)
sys.stdout.write("never")
"""


@pytest.mark.parametrize("mode", ["plain", "thread"])
def test_the_quick_exit_keeps_what_an_exit_promises(tmp_path, mode):
    """``distml`` ends with procs.exit_now (no interpreter teardown, 0.3 s after a run): the
    exit code, unflushed stdout/stderr, exit handlers and temporary folders' clean-up are as
    a normal exit's; with another non-daemon thread running it is a normal exit (the thread
    finishes first)."""
    done = subprocess.run(
        [sys.executable, "-c", _EXIT_PROBE, str(tmp_path), mode],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    assert done.stdout == "no newline at the end" and done.stderr == "nor here"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert not Path((tmp_path / "tmpdir").read_text()).exists()
    if mode == "thread":
        assert (tmp_path / "thread").read_text() == "finished"


def test_the_distml_command_exits_through_the_quick_exit():
    """The installed ``distml`` script and ``python -m distml`` both end in cli.entry."""
    import tomllib

    from distml import cli

    root = Path(__file__).resolve().parents[2]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["distml"] == "distml.cli:entry" and callable(cli.entry)
    assert "entry()" in (root / "distml" / "__main__.py").read_text()
    done = subprocess.run(
        [sys.executable, "-m", "distml", "validate", "/no/such/spec.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "does not exist" in done.stderr


def _kmeans_spec(tmp_path) -> dict:
    """A k-means spec on a small parquet file (a kind that names worker modules)."""
    import pandas as pd

    data = tmp_path / "d.parquet"
    pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]}).to_parquet(data)
    return {
        "name": "p",
        "kind": "kmeans",
        "data": {"source": str(data)},
        "model": {"n_clusters": 2},
    }


def _own_cluster_only(monkeypatch, tmp_path) -> None:
    """``distml.run`` in this process starts a cluster of its own (no Ray up here, no
    ``RAY_ADDRESS``, no warm cluster) whose start the test replaces; nothing to stop after."""
    import ray

    from distml.runtime import cluster

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster, "_shutdown", lambda started_here: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("DISTML_STATE_DIR", str(tmp_path / "state"))  # no warm cluster


def _record_own_starts(monkeypatch, tmp_path) -> list[dict]:
    """:func:`_own_cluster_only`, with the start replaced by one that records its ``head`` and
    ``store_bytes`` and raises (no cluster in a unit test)."""
    from distml.runtime import cluster

    seen: list[dict] = []

    def fake_start(num_cpus, num_gpus, preload=(), head=True, store_bytes=None):
        seen.append({"head": head, "store_bytes": store_bytes})
        raise RuntimeError("no cluster in a unit test")

    monkeypatch.setattr(cluster, "_start_local", fake_start)
    _own_cluster_only(monkeypatch, tmp_path)
    return seen


def test_a_runs_own_cluster_starts_a_dashboard_head_only_for_a_train_worker_group(
    monkeypatch, tmp_path
):
    """Ray Train's State API calls expect Ray's dashboard head, and nothing else of a run asks
    it anything: ``distml.run`` starts its own cluster with a head only when the run's plan
    is a Train worker group (decided before the start, on this machine's resources), and
    ``quick_node_start(head=False)`` never starts Ray's head, nor waits for one before the
    node's last step (private Ray API: this fails loudly when Ray renames them)."""
    import yaml
    from ray._private.node import Node

    import distml
    from distml.runtime import cluster, node_start

    seen = _record_own_starts(monkeypatch, tmp_path)
    quickstart = yaml.safe_load(open(ROOT + "/jobs/quickstart.yaml"))
    tune_torch = yaml.safe_load(open(ROOT + "/jobs/tune_torch.yaml"))
    cases = [
        (_kmeans_spec(tmp_path), False),  # out-of-core passes: Ray tasks
        (ROOT + "/jobs/quickstart.yaml", False),  # xgboost, one task
        ({**quickstart, "resources": {"num_workers": 2}}, True),  # xgboost, a worker group
        (ROOT + "/jobs/torch_digits_mlp.yaml", True),
        (ROOT + "/jobs/tune_sklearn.yaml", False),  # a search of Ray tasks
        (tune_torch, False),  # trials of one task each
        ({**tune_torch, "resources": {"num_workers": 2}}, True),  # each drives a worker group
    ]
    for spec, want in cases:
        with pytest.raises(Exception, match="no cluster"):
            distml.run(spec, output=tmp_path / "runs")
        assert seen[-1]["head"] is want, spec
    assert len(seen) == len(cases)
    res = cluster.local_resources()
    assert res["CPU"] >= 1 and 0 < res["memory"] < 2**50

    calls: list = []
    monkeypatch.setattr(Node, node_start.DASHBOARD_START, lambda self, **k: calls.append("head"))
    monkeypatch.setattr(Node, node_start.NODE_STARTED, lambda self: calls.append("stats"))
    node = object.__new__(Node)
    with node_start.quick_node_start(head=False):
        getattr(Node, node_start.DASHBOARD_START)(
            node, include_dashboard=False, raise_on_failure=False
        )
        getattr(Node, node_start.NODE_STARTED)(node)
    assert calls == ["stats"]
    assert [t for t in threading.enumerate() if t.name == "distml-dashboard-head"] == []


def test_a_runs_own_cluster_preloads_its_kinds_worker_modules(monkeypatch, tmp_path):
    """``distml.run`` starts a cluster of its own with the kind's worker modules for Ray's
    ``preload_python_modules`` (the prestarted workers import them while the driver plans);
    none for a kind that names none; for ``engine: dask`` what its partition tasks import;
    every module named imports."""
    import importlib.util

    import ray

    import distml
    from distml.jobs import kmeans, pca
    from distml.runtime import node_start, threads
    from distml.spec import load_spec

    seen: list = []

    def fake_init(**kwargs):
        seen.append(kwargs.get("_system_config"))
        raise RuntimeError("no cluster in a unit test")

    monkeypatch.setattr(ray, "init", fake_init)
    _own_cluster_only(monkeypatch, tmp_path)
    spec = _kmeans_spec(tmp_path)
    with pytest.raises(Exception, match="no cluster"):
        distml.run(spec, output=tmp_path / "runs")
    mods = ["distml.jobs.kmeans", "pyarrow.parquet"]
    first = [threads.PRELOAD_FIRST]  # the thread-pool guard, then the kind's modules
    assert seen[-1] == {**node_start.CONNECT_RETRY, "preload_python_modules": first + mods}
    with pytest.raises(Exception, match="no cluster"):
        distml.run(ROOT + "/jobs/quickstart.yaml", output=tmp_path / "runs")
    assert seen[-1] == node_start.CONNECT_RETRY  # a kind that names none: no preload
    with pytest.raises(Exception, match="no cluster"):  # a search: its trials' modules first
        distml.run(ROOT + "/jobs/tune_sklearn.yaml", output=tmp_path / "runs")
    tune_mods = ["ray.tune", "distml.tune.session"]
    assert seen[-1] == {**node_start.CONNECT_RETRY, "preload_python_modules": first + tune_mods}
    from distml.tune import worker_modules  # a kind's own modules follow the trials'

    assert worker_modules(kmeans.Job(load_spec(spec))) == (*tune_mods, *mods)
    dask_mods = (
        "distml.jobs._dask_engine",
        "dask.dataframe",
        "dask.array",
        "dask.dataframe.io.parquet.arrow",
    )
    assert kmeans.Job(load_spec({**spec, "engine": "dask"})).worker_modules() == dask_mods
    pca_spec = {**spec, "kind": "pca", "model": {"n_components": 1}}
    assert pca.Job(load_spec(pca_spec)).worker_modules()[0] == "distml.jobs.pca"
    for job in (kmeans.Job(load_spec(spec)), pca.Job(load_spec(pca_spec))):
        for m in (*job.worker_modules(), *tune_mods):
            assert importlib.util.find_spec(m) is not None, m


def test_the_drivers_fit_libraries_load_while_the_cluster_starts(monkeypatch, tmp_path):
    """``engine: dask`` names the driver's imports (Dask's frames, dask-ml, about 1.7 s), and a
    search Tune's runner (0.7 s) before the kind's; ``distml.run`` imports them in a background
    thread before it starts the cluster, so the job does not wait for them. The native engine
    names none; every module named imports."""
    import importlib.util
    import sys
    import threading

    import ray

    import distml
    from distml.jobs import kmeans, pca
    from distml.runtime import cluster
    from distml.spec import load_spec

    order: list = []
    real = cluster.preimport
    monkeypatch.setattr(cluster, "preimport", lambda mods: (order.append(mods), real(mods)))

    def fake_init(**kwargs):
        order.append("ray.init")
        raise RuntimeError("no cluster in a unit test")

    monkeypatch.setattr(ray, "init", fake_init)
    _own_cluster_only(monkeypatch, tmp_path)
    spec = {**_kmeans_spec(tmp_path), "engine": "dask"}
    with pytest.raises(Exception, match="no cluster"):
        distml.run(spec, output=tmp_path / "runs")
    km = kmeans.Job(load_spec(spec)).driver_modules()
    assert km == ("distml.jobs._dask_fits", "dask.dataframe", "dask_ml.wrappers", "sklearn.cluster")
    assert [o for o in order if o] == [km, "ray.init"]
    pca_spec = {**spec, "kind": "pca", "model": {"n_components": 1}}
    pc = pca.Job(load_spec(pca_spec)).driver_modules()
    assert pc == ("distml.jobs._dask_fits", "dask.dataframe", "dask_ml.decomposition")
    assert kmeans.Job(load_spec({**spec, "engine": "native"})).driver_modules() == ()
    order.clear()
    with pytest.raises(Exception, match="no cluster"):
        distml.run(ROOT + "/jobs/tune_sklearn.yaml", output=tmp_path / "runs")
    assert [o for o in order if o] == [("distml.tune.runner",), "ray.init"]
    for m in (*km, *pc, "distml.tune.runner"):
        assert importlib.util.find_spec(m) is not None, m
    # the thread imports each module; one that fails is left for the job to raise
    monkeypatch.delitem(sys.modules, "tabnanny", raising=False)
    real(("distml.no_such_module", "tabnanny"))
    for t in [t for t in threading.enumerate() if t.name == "distml-preimport"]:
        t.join(30)
    assert "tabnanny" in sys.modules


SKOPS_PROBE = """
import importlib.util, json, sys
import sklearn.ensemble
from distml.jobs.predictors import skops_io
sio = skops_io()
pruned = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "dask", "numba"})
from skops.io import _trusted_types
from skops.io._utils import get_type_name
from sklearn.utils import all_estimators
plain = [get_type_name(c) for _, c in all_estimators()]
est = sklearn.ensemble.RandomForestClassifier(n_estimators=2, random_state=0).fit([[0], [1]], [0, 1])
back = sio.loads(sio.dumps(est), trusted=sio.get_untrusted_types(data=sio.dumps(est)))
print(json.dumps({
    "pruned_imports": pruned,
    "plain_imports": sorted({m.split(".")[0] for m in sys.modules} & {"torch", "dask", "numba"}),
    "installed": sorted(m for m in ("torch", "dask") if importlib.util.find_spec(m)),
    "same_trust": _trusted_types.SKLEARN_ESTIMATOR_TYPE_NAMES
    == [n for n in plain if n.startswith("sklearn.")],
    "n": len(plain),
    "round_trip": back.predict([[0], [1]]).tolist(),
}))
"""


def test_skops_imports_without_walking_the_packages_its_estimator_list_skips():
    """skops lists scikit-learn's estimators as it is imported; the plain walk imports torch and
    Dask (``sklearn.externals.array_api_compat``), 1.2 s of every sklearn run's model save.
    Through :func:`skops_io` neither is imported, the trust list is the one the plain walk
    gives, and a model saves and loads."""
    import json

    out = subprocess.run(
        [sys.executable, "-c", SKOPS_PROBE],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["pruned_imports"] == []
    assert got["same_trust"] and got["n"] > 150
    assert set(got["installed"]) <= set(got["plain_imports"])  # the probe sees the plain walk's
    assert got["round_trip"] == [0, 1]


def test_a_run_declares_what_the_warm_clusters_workers_started_for_it_import(monkeypatch, tmp_path):
    """``distml.run`` hands ``cluster`` the run's list for the warm cluster's workers started
    for it (:func:`distml.runtime.warm_workers.declare`): the kind's worker modules, and for a
    search Tune's and the warm cluster's own preload."""
    import distml
    from distml.runtime import cluster, warm_workers

    seen: list = []

    def fake_cluster(address=None, **kwargs):
        seen.append(kwargs)
        raise RuntimeError("no cluster in a unit test")

    monkeypatch.setattr(cluster, "cluster", fake_cluster)
    spec = _kmeans_spec(tmp_path)
    runs = (
        (spec, ("distml.jobs.kmeans", "pyarrow.parquet")),
        (ROOT + "/jobs/quickstart.yaml", ()),
        (ROOT + "/jobs/tune_sklearn.yaml", ("ray.tune", "distml.tune.session", "+warm")),
    )
    for source, want in runs:
        with pytest.raises(Exception, match="no cluster"):
            distml.run(source, output=tmp_path / "runs")
        assert seen[-1]["run_preload"] == want
    assert warm_workers.WARM_LIST == "+warm"


def test_a_dask_engine_runs_own_cluster_gets_an_object_store_sized_to_its_partitions(
    monkeypatch, tmp_path
):
    """A dask-engine run over parquet streams its partitions through Ray's object store, and
    every process keeps the store pages it touched: its own cluster gets a store of the
    partitions in flight and held (``_dask_engine.store_bytes``, at least STORE_MIN), passed
    to ``ray.init`` as ``object_store_memory``; the native engine, sources whose partitions
    are unknown before the start and remote files keep Ray's default (None)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    import distml
    from distml.jobs import _dask_engine as E
    from distml.runtime import cluster

    seen = _record_own_starts(monkeypatch, tmp_path)
    big = tmp_path / "big.parquet"  # row groups of 300,000 rows x 32 features: 76.8 MB each
    frame = pd.DataFrame(np.ones((600_000, 32)), columns=[f"x{i}" for i in range(32)])
    pq.write_table(pa.Table.from_pandas(frame), big, row_group_size=300_000)
    frame.iloc[:50].to_csv(tmp_path / "small.csv", index=False)
    part = 300_000 * 32 * 8
    cases = [
        (_kmeans_spec(tmp_path), None),  # the native engine
        ({**_kmeans_spec(tmp_path), "engine": "dask"}, E.STORE_MIN),  # tiny partitions
        ({**_kmeans_spec(tmp_path), "engine": "dask", "data": {"source": str(big)}}, None),
        (
            {
                "name": "p",
                "kind": "pca",
                "engine": "dask",
                "data": {"source": str(big)},
                "model": {"n_components": 2},
            },
            None,
        ),
        (
            {
                **_kmeans_spec(tmp_path),
                "engine": "dask",
                "data": {"source": str(tmp_path / "small.csv")},
            },
            None,
        ),
    ]
    cpus = cluster.local_resources()["CPU"]
    want_big = (E.ahead(int(cpus), part) + E.HELD_PARTITIONS) * part
    assert want_big > E.STORE_MIN
    cases[2] = (cases[2][0], want_big)
    cases[3] = (cases[3][0], want_big)
    for spec, want in cases:
        with pytest.raises(Exception, match="no cluster"):
            distml.run(spec, output=tmp_path / "runs")
        assert seen[-1]["store_bytes"] == want, spec
    # remote files: their footers are not read again before the start (Ray's default store)
    from types import SimpleNamespace

    remote = SimpleNamespace(kind="files", format="parquet", files=["s3://bucket/d.parquet"])
    assert E.store_bytes(SimpleNamespace(source=remote, features=["a"]), {"CPU": 2}) is None

    def fake_init(**kwargs):
        seen.append({"store_bytes": kwargs.get("object_store_memory")})
        raise RuntimeError("no cluster in a unit test")

    monkeypatch.setattr(ray, "init", fake_init)
    for size in (None, 300 << 20):
        with pytest.raises(RuntimeError, match="no cluster"):
            cluster._start_local(2, None, head=False, store_bytes=size)
        assert seen[-1]["store_bytes"] == size


CONNECTED_PROBE = """
import sys, threading, time
from distml.runtime import cluster, frames, threads
assert "ray" not in sys.modules
t = threading.Thread(target=lambda: __import__("ray.tune"))
t.start()
half = 0
while t.is_alive():
    m = sys.modules.get("ray")
    if m is not None and getattr(m, "is_initialized", None) is None:
        half += 1
        assert threads.imported("ray") is None and frames._module("ray") is None
    assert cluster._connected() is False
    time.sleep(0.002)  # (a busy loop would hold the GIL from the import)
t.join()
assert cluster._connected() is False  # imported, not connected
assert threads.imported("ray") is sys.modules["ray"] and threads.imported("no_such") is None
print(half)
"""


def test_a_run_reads_whether_ray_is_up_while_a_thread_still_imports_ray():
    """The driver's preimport thread (a search's: Tune's runner) may be importing Ray when the run
    asks whether Ray is up; the half-imported module has no ``is_initialized`` yet (CI: the run
    failed with AttributeError). The question is answered False all through the import, which
    this probe watches half-done at least once, and ``threads.imported`` (what the frame checks
    and the thread pools read too) gives the half-imported module to nobody."""
    out = subprocess.run(
        [sys.executable, "-c", CONNECTED_PROBE],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[-1]) > 0
