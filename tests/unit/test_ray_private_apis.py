"""The private Ray APIs distml still uses, each pinned here so a Ray upgrade that changes one
fails this file loudly instead of degrading quietly where it is used.

Every other use of Ray in distml, its tests and benchmarks goes through public API
(``ray.util.annotations`` PublicAPI / DeveloperAPI). What is left has no public equivalent:

- ``ray._private.worker._global_node`` and its ``Node.kill_all_processes`` /
  ``all_processes``: ``distml.runtime.cluster._shutdown`` and
  ``benchmarks/probe_ray_startup.py``. No public way to stop a local cluster without the
  SIGTERM + grace wait per process, or to name its raylet's PID (whose agents outlive it).
- ``ray._private.state.actors()``: ``tests/integration/ray_checks.py``. The public
  ``ray.util.state.list_actors`` needs the dashboard, which the shared test cluster omits.
- ``JobSubmissionClient._do_request``: ``distml.remote``. The one place to give every HTTP
  request a deadline (Ray sets none).
- ``ResultGrid._experiment_analysis`` and ``Trial.run_metadata.num_failures``:
  ``distml.tune.runner``. A trial's process deaths, which ``Result`` does not expose.
- ``ray._raylet.Config.initialize`` and ``AuthenticationTokenLoader``:
  ``distml.runtime.cluster._reset_token_cache``. Ray reads ``RAY_AUTH_MODE`` once per process;
  a process that imported Ray first must re-read it to connect to the token-authenticated
  warm cluster.
- The raylet's ``PrestartWorkers`` call (``node_manager_pb2``, through
  ``ray._private.grpc_utils.init_grpc_channel``, at ``global_worker.node``'s address):
  ``distml.runtime.warm_workers.prestart``. Ray starts a job's workers ahead only for the first
  driver of a cluster; a later run on the warm cluster has no public way to have its workers
  started while it plans.

The call sites look these up defensively (a changed Ray gets the slow or less detailed path, not
a crash), which is exactly why these tests must be the loud part. Each failure message names the
attribute, the Ray version and the distml code to revisit.
"""

from __future__ import annotations

import inspect


def _ray_changed(what: str, where: str, detail: str = "") -> str:
    import ray

    return (
        f"Ray {ray.__version__} changed the private API {what}, which {where} relies on "
        f"(no public equivalent). Revisit that code for this Ray version. {detail}"
    ).strip()


def _params(fn) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(fn).parameters)


# --- ray._private.worker._global_node: runtime/cluster.py and benchmarks/probe_ray_startup.py ---

_SHUTDOWN = "distml.runtime.cluster._shutdown (fast local-cluster stop)"


def test_global_node_exists_where_distml_looks_for_it():
    import ray

    worker = getattr(getattr(ray, "_private", None), "worker", None)
    assert worker is not None, _ray_changed("ray._private.worker", _SHUTDOWN, "Module is gone.")
    assert hasattr(worker, "_global_node"), _ray_changed(
        "ray._private.worker._global_node", _SHUTDOWN, "Attribute is gone."
    )
    if not ray.is_initialized():
        assert worker._global_node is None, _ray_changed(
            "ray._private.worker._global_node", _SHUTDOWN, "Not None without a cluster."
        )


def test_node_kill_all_processes_takes_the_keywords_distml_passes():
    from ray._private.node import Node

    kill = getattr(Node, "kill_all_processes", None)
    assert callable(kill), _ray_changed("Node.kill_all_processes", _SHUTDOWN, "Method is gone.")
    params = _params(kill)
    for name in ("check_alive", "allow_graceful", "wait"):
        assert name in params, _ray_changed(
            "Node.kill_all_processes", _SHUTDOWN, f"No keyword {name!r}; has {list(params)}."
        )
    assert params["allow_graceful"].default is False, _ray_changed(
        "Node.kill_all_processes", _SHUTDOWN, "allow_graceful no longer defaults to False."
    )


SHUTDOWN_PROBE = """
import json, ray
from ray._private import worker
calls = []
class FakeNode:
    def is_head(self):
        return False
    def kill_all_processes(self, **kwargs):
        calls.append(kwargs)
worker._global_node = FakeNode()
ray.shutdown()
print(json.dumps({"calls": calls, "reset": worker._global_node is None}))
"""


def test_ray_shutdown_stops_the_node_through_its_kill_all_processes():
    """The behaviour distml patches: ``ray.shutdown()`` calls the instance's
    ``kill_all_processes`` with keywords (so replacing it on the instance takes effect) and asks
    for the graceful wait that distml turns off; then it forgets the node. (In a fresh process:
    this one may hold the integration tests' cluster.)"""
    import json
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", SHUTDOWN_PROBE], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, _ray_changed("ray.shutdown with a node", _SHUTDOWN, run.stderr)
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    calls = seen["calls"]
    assert len(calls) == 1, _ray_changed(
        "ray.shutdown -> _global_node.kill_all_processes",
        _SHUTDOWN,
        f"ray.shutdown() called it {len(calls)} times, not once.",
    )
    assert set(calls[0]) == {"check_alive", "allow_graceful", "wait"}, _ray_changed(
        "ray.shutdown -> _global_node.kill_all_processes",
        _SHUTDOWN,
        f"Called with {calls[0]}, not keywords check_alive/allow_graceful/wait.",
    )
    assert calls[0]["allow_graceful"] is True, _ray_changed(
        "ray.shutdown -> _global_node.kill_all_processes",
        _SHUTDOWN,
        "ray.shutdown() no longer asks for the graceful wait (distml's patch may be moot).",
    )
    assert seen["reset"], _ray_changed(
        "ray._private.worker._global_node", _SHUTDOWN, "ray.shutdown() no longer resets it."
    )


def test_node_records_the_raylet_process_where_distml_reads_its_pid():
    """``node.all_processes["raylet"][0].process.pid``: the raylet, whose children (agents) distml
    kills after a fast stop."""
    from ray._private import ray_constants, services
    from ray._private.node import Node

    assert ray_constants.PROCESS_TYPE_RAYLET == "raylet", _ray_changed(
        "ray_constants.PROCESS_TYPE_RAYLET",
        _SHUTDOWN,
        f"It is now {ray_constants.PROCESS_TYPE_RAYLET!r}.",
    )
    assert "process" in services.ProcessInfo._fields, _ray_changed(
        "ray._private.services.ProcessInfo.process",
        _SHUTDOWN,
        f"Fields are {services.ProcessInfo._fields}.",
    )
    init = inspect.getsource(Node.__init__)
    assert "self.all_processes" in init, _ray_changed(
        "Node.all_processes", _SHUTDOWN, "Node.__init__ no longer sets it."
    )
    start = inspect.getsource(Node.start_raylet)
    assert "all_processes[ray_constants.PROCESS_TYPE_RAYLET]" in start, _ray_changed(
        "Node.all_processes['raylet']", _SHUTDOWN, "start_raylet no longer records it there."
    )


# --- ray._private.state.actors(): tests/integration/ray_checks.py ---

_RAY_CHECKS = "tests/integration/ray_checks.wait_resources_free (RELIABILITY.md T10)"


def test_state_actors_takes_no_required_arguments():
    from ray._private import state

    actors = getattr(state, "actors", None)
    assert callable(actors), _ray_changed("ray._private.state.actors", _RAY_CHECKS, "It is gone.")
    required = [
        n
        for n, p in _params(actors).items()
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    assert not required, _ray_changed(
        "ray._private.state.actors", _RAY_CHECKS, f"It now requires {required}."
    )
    assert "state.actor_table(" in inspect.getsource(actors), _ray_changed(
        "ray._private.state.actors", _RAY_CHECKS, "It no longer reads GlobalState.actor_table."
    )


def test_state_actor_records_carry_the_fields_the_check_reads():
    """Each record of ``actors()`` is ``GlobalState._gen_actor_info`` of the GCS actor row: the
    check reads ActorClassName, State ("ALIVE") and IsDetached."""
    from ray._private.state import GlobalState
    from ray.core.generated import gcs_pb2

    row = gcs_pb2.ActorTableData(
        class_name="TrainController",
        is_detached=False,
        state=gcs_pb2.ActorTableData.ActorState.Value("ALIVE"),
    )
    info = GlobalState()._gen_actor_info(row)
    for key, want in (
        ("ActorClassName", "TrainController"),
        ("State", "ALIVE"),
        ("IsDetached", False),
    ):
        assert key in info, _ray_changed(
            "ray._private.state.actors() records",
            _RAY_CHECKS,
            f"No key {key!r}; keys are {sorted(info)}.",
        )
        assert info[key] == want, _ray_changed(
            "ray._private.state.actors() records",
            _RAY_CHECKS,
            f"{key} = {info[key]!r}, not {want!r}.",
        )


# --- JobSubmissionClient._do_request: distml/remote/client.py ---

_SUBMIT = "distml.remote (a deadline on every request to the job server)"


def test_job_client_do_request_forwards_extra_keywords_to_requests(monkeypatch):
    """distml overrides ``_do_request`` to add ``timeout=``; every request of the client (the
    version check at construction, list_jobs, ...) must pass through it, and extra keywords must
    reach ``requests.request``."""
    import ray
    import requests
    from ray.job_submission import JobSubmissionClient

    params = _params(JobSubmissionClient._do_request)
    assert list(params)[:3] == ["self", "method", "endpoint"], _ray_changed(
        "JobSubmissionClient._do_request", _SUBMIT, f"Parameters are {list(params)}."
    )
    assert any(p.kind is p.VAR_KEYWORD for p in params.values()), _ray_changed(
        "JobSubmissionClient._do_request", _SUBMIT, "It no longer takes **kwargs."
    )

    sent = []

    class Response:
        status_code, text = 200, ""

        def __init__(self, url):
            self.url = url

        def json(self):
            if "version" in self.url:
                return {"ray_version": ray.__version__, "version": "x"}
            return []  # list_jobs: no jobs

        def raise_for_status(self):
            pass

    def request(method, url, **kwargs):
        sent.append((method, url, kwargs.get("timeout")))
        return Response(url)

    monkeypatch.setattr(requests, "request", request)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "unit-test")  # the tests run with token auth on

    class WithDeadline(JobSubmissionClient):  # what distml.remote does
        def _do_request(self, method, endpoint, **kwargs):
            kwargs.setdefault("timeout", (1.5, 2.5))
            return super()._do_request(method, endpoint, **kwargs)

    client = WithDeadline("http://127.0.0.1:1")
    client.list_jobs()
    assert len(sent) >= 2, _ray_changed(
        "JobSubmissionClient._do_request", _SUBMIT, f"Only {sent} went through it."
    )
    assert all(t == (1.5, 2.5) for _, _, t in sent), _ray_changed(
        "JobSubmissionClient._do_request", _SUBMIT, f"Timeouts reaching requests: {sent}."
    )


# --- ResultGrid._experiment_analysis / Trial.run_metadata: distml/tune/runner.py ---

_RUNNER = "distml.tune.runner._records (a trial's process deaths in the trials table)"


def test_result_grid_keeps_its_experiment_analysis_with_the_trials():
    from ray.tune import ResultGrid
    from ray.tune.experiment import Trial

    class Analysis:  # the public ExperimentAnalysis' shape ResultGrid reads
        trials: tuple = ()
        experiment_path = "/nowhere"
        default_metric = default_mode = None

    analysis = Analysis()
    grid = ResultGrid(analysis)
    assert getattr(grid, "_experiment_analysis", None) is analysis, _ray_changed(
        "ResultGrid._experiment_analysis", _RUNNER, "ResultGrid no longer keeps it there."
    )
    trial = Trial("__fake", stub=True)
    assert trial.run_metadata.num_failures == 0, _ray_changed(
        "Trial.run_metadata.num_failures", _RUNNER, "A new trial does not count 0 failures."
    )
    trial.run_metadata.num_failures += 1
    assert trial.num_failures == 1, _ray_changed(
        "Trial.run_metadata.num_failures", _RUNNER, "Trial.num_failures no longer reads it."
    )


# --- ray._raylet.Config / AuthenticationTokenLoader: runtime/cluster._reset_token_cache ---

_TOKEN = "distml.runtime.cluster._reset_token_cache (the warm client in a process with Ray)"


def test_config_initialize_rereads_the_auth_mode_from_the_environment(monkeypatch):
    import ray._raylet as raylet

    from distml.runtime.cluster import _reset_token_cache

    assert hasattr(raylet, "Config") and hasattr(raylet.Config, "initialize"), _ray_changed(
        "ray._raylet.Config.initialize", _TOKEN
    )
    assert hasattr(raylet, "AuthenticationTokenLoader"), _ray_changed(
        "ray._raylet.AuthenticationTokenLoader", _TOKEN
    )
    assert hasattr(raylet.AuthenticationTokenLoader.instance(), "reset_cache"), _ray_changed(
        "AuthenticationTokenLoader.instance().reset_cache", _TOKEN
    )
    token = raylet.AuthenticationMode.TOKEN
    try:
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        monkeypatch.setenv("RAY_AUTH_TOKEN", "x" * 32)
        _reset_token_cache()
        assert raylet.get_authentication_mode() == token, _ray_changed(
            "Config.initialize('') (no longer re-reads RAY_AUTH_MODE)", _TOKEN
        )
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
        _reset_token_cache()
        assert raylet.get_authentication_mode() != token
    finally:
        monkeypatch.undo()
        _reset_token_cache()


_PRESTART = "distml.runtime.warm_workers.prestart (a warm run's workers started as it connects)"


def test_the_raylet_still_takes_the_prestart_request_distml_sends():
    """The raylet's ``PrestartWorkers`` call, its request's fields, the authenticated channel
    Ray's own tools use to reach a raylet, and where a connected driver finds its raylet.
    tests/integration/test_warm_cluster.py runs it against a real head."""
    import ray
    from ray._private import grpc_utils
    from ray._private.node import Node
    from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc

    assert callable(getattr(grpc_utils, "init_grpc_channel", None)), _ray_changed(
        "ray._private.grpc_utils.init_grpc_channel", _PRESTART
    )
    assert hasattr(node_manager_pb2_grpc.NodeManagerServiceServicer, "PrestartWorkers"), (
        _ray_changed("NodeManagerService.PrestartWorkers", _PRESTART)
    )
    fields = set(node_manager_pb2.PrestartWorkersRequest.DESCRIPTOR.fields_by_name)
    wanted = {"language", "job_id", "num_workers", "keep_alive_duration_secs"}
    assert wanted <= fields, _ray_changed("PrestartWorkersRequest", _PRESTART, f"{fields}")
    assert common_pb2.PYTHON == common_pb2.Language.Value("PYTHON")
    assert hasattr(ray._private.worker, "global_worker"), _ray_changed(
        "ray._private.worker.global_worker", _PRESTART
    )
    for name in ("node_ip_address", "node_manager_port"):
        assert isinstance(getattr(Node, name, None), property), _ray_changed(
            f"ray._private.node.Node.{name}", _PRESTART
        )
