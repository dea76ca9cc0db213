"""``distml.runtime.warm_workers``: which worker processes import the warm preload (in fresh
processes: the guard runs as Ray's preload would run it), and the ready marks ``cluster start``
waits for."""

from __future__ import annotations

import os
import time

from distml.runtime import warm_workers
from tests.fresh import json_of, unpinned_env


def test_the_guard_imports_the_warm_preload_only_in_a_worker_bound_to_no_job():
    source = """
import json, sys
import distml.runtime.preload
print(json.dumps({m: m in sys.modules for m in ("colorsys", "wave")}))
"""
    warm = {warm_workers.WARM_PRELOAD_ENV: "colorsys, wave,no_such_module_here"}
    env = unpinned_env()
    prestarted = json_of(source, env={**env, **warm, "RAY_JOB_ID": "ffffffff"})
    assert prestarted == {"colorsys": True, "wave": True}  # the missing one said, skipped
    bound = json_of(source, env={**env, **warm, "RAY_JOB_ID": "02000000"})
    assert bound == {"colorsys": False, "wave": False}
    cold = json_of(source, env={**env, "RAY_JOB_ID": "ffffffff"})  # no warm preload set
    assert cold == {"colorsys": False, "wave": False}


def test_warm_modules_and_bound_to_job_read_the_environment(monkeypatch, capsys):
    monkeypatch.delenv("RAY_JOB_ID", raising=False)
    monkeypatch.delenv(warm_workers.WARM_PRELOAD_ENV, raising=False)
    assert not warm_workers.bound_to_job() and warm_workers.warm_modules() == ()
    monkeypatch.setenv("RAY_JOB_ID", "ffffffff")
    assert not warm_workers.bound_to_job()
    monkeypatch.setenv("RAY_JOB_ID", "0a000000")
    assert warm_workers.bound_to_job()
    monkeypatch.setenv(warm_workers.WARM_PRELOAD_ENV, "a.b,, c")
    assert warm_workers.warm_modules() == ("a.b", "c")
    assert warm_workers.import_each(("json", "no_such_module_here")) == ["no_such_module_here"]
    assert "cannot import no_such_module_here" in capsys.readouterr().err


def test_a_prestarted_worker_marks_its_preload_done_and_a_bound_one_does_not(tmp_path):
    ready = tmp_path / "ready"
    ready.mkdir()
    source = "import json, os\nimport distml.runtime.preload\nprint(json.dumps(os.getpid()))\n"
    env = {**unpinned_env(), warm_workers.WARM_PRELOAD_ENV: "colorsys"}
    env[warm_workers.READY_ENV] = str(ready)
    prestarted = json_of(source, env={**env, "RAY_JOB_ID": "ffffffff"})
    assert os.listdir(ready) == [str(prestarted)]
    json_of(source, env={**env, "RAY_JOB_ID": "03000000"})
    assert os.listdir(ready) == [str(prestarted)]
    gone = {**env, "RAY_JOB_ID": "ffffffff", warm_workers.READY_ENV: str(tmp_path / "no")}
    json_of(source, env=gone)  # a head being stopped: the mark is skipped, the worker goes on


def test_expected_workers_is_one_per_cpu_up_to_the_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert warm_workers.expected_workers(None) == 2
    assert warm_workers.expected_workers(1) == 1
    assert warm_workers.expected_workers(4) == 2
    assert warm_workers.expected_workers(0) == 0


def test_a_worker_started_for_a_run_imports_what_the_run_declared(monkeypatch):
    """``_declared`` reads the run's entry (by the worker's job id) and expands the warm
    cluster's own list; the guard imports it only in a bound worker of the warm head."""
    import ray
    from ray.experimental import internal_kv

    store = {("0b000000", warm_workers.RUN_NAMESPACE): b"json,+warm,wave"}
    monkeypatch.setattr(
        internal_kv, "_internal_kv_get", lambda key, namespace=None: store.get((key, namespace))
    )
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # (a worker of the head)
    monkeypatch.setenv("RAY_JOB_ID", "0b000000")
    monkeypatch.setenv(warm_workers.WARM_PRELOAD_ENV, "colorsys,json")
    assert warm_workers._declared() == ("json", "colorsys", "wave")
    monkeypatch.setenv("RAY_JOB_ID", "0c000000")  # a run that declared nothing
    assert warm_workers._declared() == ()
    source = """
import json, sys
import distml.runtime.preload
print(json.dumps("tabnanny" in sys.modules))
"""
    # outside a Ray worker the store cannot be asked: nothing is imported, nothing fails
    env = {**unpinned_env(), "RAY_JOB_ID": "0b000000", warm_workers.READY_ENV: "/nonexistent"}
    assert json_of(source, env=env) is False


def test_a_list_that_cannot_be_stored_never_fails_the_run(monkeypatch, capsys):
    """A store that refuses the run's list: said, not raised. Outside a connected driver
    nothing is asked of Ray (its store would start a local Ray)."""
    import ray
    from ray.experimental import internal_kv

    asked = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # (whatever this process holds)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: asked.append(1))
    warm_workers.declare(("json",))
    warm_workers.forget()
    assert asked == [] and capsys.readouterr().err == ""

    def refuse(*args, **kwargs):
        raise ConnectionError("the GCS went away")

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(
        ray, "get_runtime_context", lambda: type("C", (), {"get_job_id": lambda self: "0d000000"})()
    )
    monkeypatch.setattr(internal_kv, "_internal_kv_put", refuse)
    monkeypatch.setattr(internal_kv, "_internal_kv_del", refuse)
    warm_workers.declare(("json",))
    assert "get no list for this run: ConnectionError" in capsys.readouterr().err
    warm_workers.forget()  # (silent: the entry dies with the head)


def test_idle_unbound_counts_the_marked_workers_alive_and_idle(tmp_path):
    """The marks of the workers Ray prestarted for no job: one alive and titled ``ray::IDLE``
    counts; a process doing other work, a dead pid and a stray file do not."""
    import shutil
    import subprocess
    import sys

    ready = tmp_path / "ready"
    assert warm_workers.idle_unbound(ready) == 0  # no folder (a head started before marks)
    ready.mkdir()
    idle = subprocess.Popen(["ray::IDLE", "60"], executable=shutil.which("sleep"))  # its title
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        for name in (idle.pid, os.getpid(), dead.pid, "not-a-pid"):
            (ready / str(name)).touch()
        assert warm_workers.idle_unbound(ready) == 1
    finally:
        idle.kill()
        idle.wait()
    assert warm_workers.idle_unbound(ready) == 0


def test_prestart_asks_for_none_when_enough_are_idle_and_never_fails_the_run(
    tmp_path, monkeypatch, capsys
):
    """``prestart`` wants one worker per CPU (up to the cores) less the idle unbound ones;
    outside a connected driver it asks nothing, and a raylet that cannot be asked is a warning
    on stderr, not an error."""
    import ray

    monkeypatch.setattr(warm_workers, "idle_unbound", lambda ready: 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    assert warm_workers.prestart(1.0, tmp_path) == 0  # 1 CPU, 1 idle: none to start
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert warm_workers.prestart(2.0, tmp_path) == 0  # (Ray not connected: nothing asked)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(ray, "is_initialized", lambda: True)

    def gone():
        raise ConnectionError("the raylet went away")

    monkeypatch.setattr(ray, "get_runtime_context", gone)
    assert warm_workers.prestart(2.0, tmp_path) == 0
    assert "did not start this run's workers" in capsys.readouterr().err


def test_a_worker_started_for_a_run_marks_it_ready_once_it_imported_the_runs_list(
    tmp_path, monkeypatch
):
    """The guard in a bound worker of the warm head: the run's list imported, then a mark in
    the run's folder (``run_ready``), which :func:`await_prestarted` counts; none for a run
    that declared nothing."""
    ready = tmp_path / "ready"
    monkeypatch.setenv(warm_workers.READY_ENV, str(ready))
    monkeypatch.setenv("RAY_JOB_ID", "0e000000")
    monkeypatch.setattr(warm_workers, "_declared", lambda: ("json",))
    warm_workers.warm_preload()
    folder = warm_workers.run_ready(ready, "0e000000")
    assert folder == tmp_path / "ready-runs" / "0e000000"
    assert [p.name for p in folder.iterdir()] == [str(os.getpid())]
    assert not ready.exists()  # (the marks of the workers bound to no job are apart)
    monkeypatch.setenv("RAY_JOB_ID", "0f000000")
    monkeypatch.setattr(warm_workers, "_declared", lambda: ())
    warm_workers.warm_preload()
    assert not warm_workers.run_ready(ready, "0f000000").exists()


def test_await_prestarted_waits_for_the_marks_and_no_longer_than_its_limit(tmp_path, monkeypatch):
    import threading

    assert warm_workers.await_prestarted() == (0, 0.0)  # none asked for: no wait
    folder = tmp_path / "ready-runs" / "0e000000"
    monkeypatch.setattr(warm_workers, "_prestarted", [(folder, 2)])

    def mark():
        for pid in (11, 12):
            time.sleep(0.2)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / str(pid)).touch()

    threading.Thread(target=mark).start()
    n, waited = warm_workers.await_prestarted(wait_s=30)
    assert n == 2 and 0.3 < waited < 30
    assert warm_workers.await_prestarted() == (0, 0.0)  # asked once, awaited once
    monkeypatch.setattr(warm_workers, "_prestarted", [(folder, 3)])  # one never comes
    n, waited = warm_workers.await_prestarted(wait_s=0.3)
    assert n == 2 and 0.3 <= waited < 5
    monkeypatch.setattr(warm_workers, "_prestarted", [(folder, 2)])
    warm_workers.forget()  # the run's end on the warm cluster: nothing left for a later run
    assert warm_workers.await_prestarted() == (0, 0.0)
