"""The warm cluster's worker processes: which ones import its preload, and having them ready
before the first run.

Ray binds a worker process to the job (driver) that first uses it and ends it with that job.
The workers Ray prestarts (one per CPU, up to the machine's cores) when the first driver
connects are bound to no job: they import the warm preload (:data:`WARM_PRELOAD_ENV`, set on
the head; the thread guard :mod:`distml.runtime.preload`, which Ray preloads, calls
:func:`warm_preload`), and the first runs' tasks take them. A worker started for a run (its
tasks, trials and worker groups, started while that run waits) imports what the run declared
(:func:`declare`, through Ray's key-value store: the kind's worker modules; for a search Tune's
and the warm list) and nothing else: the whole preload cost every such process about a second,
mostly for libraries it never used (docs/clusters.md). The runners
(:mod:`distml.runtime.runners`) import the preload as they are created, for later runs.

:func:`prime` connects one driver at ``distml cluster start`` so that Ray prestarts those
workers then, and waits until each has imported the preload (it leaves a mark in
:data:`READY_ENV`'s folder): the first run finds them ready instead of waiting for them. A later
run that declared a list has its own workers started as it connects (:func:`prestart`), while
its driver plans.

Imported by every worker process of the warm head (the guard): standard library only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

#: set on the warm cluster's head: the modules its workers import while bound to no job
WARM_PRELOAD_ENV = "DISTML_WARM_PRELOAD"
#: set on the warm cluster's head: the folder where a prestarted worker marks its preload done
READY_ENV = "DISTML_WARM_READY"
#: how long ``cluster start`` waits for the prestarted workers' preload
PRIME_WAIT_S = 60.0


def bound_to_job() -> bool:
    """Whether this Ray worker process was started for a job. Ray starts a worker with the
    job's id in ``RAY_JOB_ID``; the workers it prestarts for no job have the nil id (all
    ``f``). Outside a worker: False."""
    return bool(os.environ.get("RAY_JOB_ID", "").strip("f"))


def warm_modules() -> tuple[str, ...]:
    """The warm cluster's preload (:data:`WARM_PRELOAD_ENV`, set on its head, which its
    workers inherit); empty elsewhere."""
    names = (m.strip() for m in os.environ.get(WARM_PRELOAD_ENV, "").split(","))
    return tuple(m for m in names if m)


def import_each(modules) -> list[str]:
    """Import ``modules``, each on its own (one that fails is said on stderr and skipped, as
    Ray's preload does); the ones that failed."""
    import importlib

    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - a preload only saves time
            failed.append(name)
            print(f"distml preload: cannot import {name}: {e!r}", file=sys.stderr)
    return failed


#: Ray's key-value store: what the workers started for a run import (key: the run's job id)
RUN_NAMESPACE = "distml_run_preload"
#: in a run's list (:func:`declare`): the warm cluster's own preload
WARM_LIST = "+warm"


def declare(modules) -> None:
    """In a run's driver connected to the warm head: the workers Ray starts for this run
    import ``modules`` as they start (:func:`warm_preload` reads them)."""
    import ray

    if not modules or not ray.is_initialized():  # (Ray's store would start a local Ray)
        return
    from ray.experimental.internal_kv import _internal_kv_put

    try:
        job = ray.get_runtime_context().get_job_id()
        _internal_kv_put(job, ",".join(modules), overwrite=True, namespace=RUN_NAMESPACE)
    except Exception as e:  # noqa: BLE001 - a preload only saves time: the run goes on
        print(
            f"distml: the warm cluster's workers get no list for this run: {e!r}", file=sys.stderr
        )


def forget() -> None:
    """The run's entry gone from the store (at the end of the run, while still connected; a
    driver killed before that leaves its few bytes until the head stops)."""
    _prestarted.clear()  # (a later run of this process may be on another cluster)
    import ray
    from ray.experimental.internal_kv import _internal_kv_del

    if not ray.is_initialized():
        return
    try:
        _internal_kv_del(ray.get_runtime_context().get_job_id(), namespace=RUN_NAMESPACE)
    except Exception:  # noqa: BLE001 - the head may be gone; the entry dies with it
        pass


#: how long the head keeps a run's prestarted workers although idle (:func:`prestart`); after
#: that they are idle workers like any other
PRESTART_KEEP_S = 60


def idle_unbound(ready: Path) -> int:
    """How many of the workers Ray prestarted for no job (each marked in ``ready`` by
    :func:`warm_preload`) are alive and idle: the next run's tasks and actors take those. A
    worker a run took dies when that run ends (Linux; elsewhere none are counted)."""
    n = 0
    for mark in ready.iterdir() if ready.is_dir() else ():
        try:
            with open(f"/proc/{int(mark.name)}/cmdline", "rb") as fh:
                n += fh.read().startswith(b"ray::IDLE")
        except (OSError, ValueError):
            pass
    return n


#: a search waits at most this long for its prestarted workers (:func:`await_prestarted`)
PRESTART_WAIT_S = 5.0
_prestarted: list = []  # (this run's marks folder, how many were asked for), once asked


def prestart(cpus, ready: Path) -> int:
    """In a run's driver connected to the warm head, for a run whose work starts worker
    processes of its own (out-of-core tasks, search trials: it declared a list): have the head
    start them now, one per CPU (at most one per core, :func:`expected_workers`) less the idle
    ones bound to no job, so that they start, and import what the run declared, while the
    driver plans. Ray starts a run's workers only when its work asks for them (ahead of time
    only for a cluster's first driver), and gives an actor (a trial) only a worker that never
    ran a task, so a run cannot warm them by running tasks itself: this asks the raylet
    (its ``PrestartWorkers`` call; private API, tests/unit/test_ray_private_apis.py) for
    workers of this job, kept :data:`PRESTART_KEEP_S` although idle. Returns how many it asked
    for; never raises (a warning on stderr: the run goes on, its workers start when asked)."""
    import ray

    _prestarted.clear()
    want = expected_workers(int(cpus or 0)) - idle_unbound(ready)
    if want <= 0 or not ray.is_initialized():
        return 0
    try:
        from ray._private.grpc_utils import init_grpc_channel
        from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc

        node = ray._private.worker.global_worker.node
        channel = init_grpc_channel(f"{node.node_ip_address}:{node.node_manager_port}")
        try:
            node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(
                node_manager_pb2.PrestartWorkersRequest(
                    language=common_pb2.PYTHON,
                    job_id=bytes.fromhex(ray.get_runtime_context().get_job_id()),
                    num_workers=want,
                    keep_alive_duration_secs=PRESTART_KEEP_S,
                ),
                timeout=5,
            )
        finally:
            channel.close()
    except Exception as e:  # noqa: BLE001 - only saves time: the run's work starts them
        print(f"distml: the warm cluster did not start this run's workers: {e!r}", file=sys.stderr)
        return 0
    _prestarted.append((run_ready(ready, ray.get_runtime_context().get_job_id()), want))
    return want


def await_prestarted(wait_s: float = PRESTART_WAIT_S) -> tuple[int, float]:
    """Wait until the workers :func:`prestart` asked for have imported the run's list (or
    ``wait_s`` passed): ``(how many are ready, seconds waited)``; ``(0, 0.0)`` when none were
    asked for. A search waits before its first trial: Tune removes a trial's actor that is
    still starting when an actor of a finished trial is free (it reuses that one instead), so
    when trials end sooner than a new process starts (a process importing Tune and the
    warm list: 2-2.5 s on 2 busy cores) the search only ever has one actor and runs its trials
    one at a time (seen: B2's 64-trial search at 20k rows, 17-20 s against 10-11 s)."""
    if not _prestarted:
        return 0, 0.0
    folder, want = _prestarted.pop()
    t0 = time.monotonic()
    n = 0
    while True:
        n = len(list(folder.iterdir())) if folder.is_dir() else 0
        if n >= want or time.monotonic() - t0 >= wait_s:
            return n, round(time.monotonic() - t0, 4)
        time.sleep(0.02)


def _declared() -> tuple[str, ...]:
    """What this worker's run declared (none if it declared nothing or cannot be asked)."""
    try:
        import ray
        from ray.experimental.internal_kv import _internal_kv_get

        if not ray.is_initialized():
            return ()
        got = _internal_kv_get(os.environ["RAY_JOB_ID"], namespace=RUN_NAMESPACE)
    except Exception:  # noqa: BLE001 - a preload only saves time
        return ()
    names = [m for m in (got or b"").decode().split(",") if m]
    return tuple(
        dict.fromkeys(w for m in names for w in (warm_modules() if m == WARM_LIST else [m]))
    )


def warm_preload() -> None:
    """In a worker of the warm head bound to no job: import the warm preload, then mark this
    process ready. A worker started for a run imports what that run declared."""
    folder = os.environ.get(READY_ENV)
    if bound_to_job():
        if folder:  # (the warm head's workers only)
            declared = _declared()
            import_each(declared)
            if declared:  # ready for its run (await_prestarted)
                _mark(run_ready(Path(folder), os.environ["RAY_JOB_ID"]))
        return
    import_each(warm_modules())
    if folder:
        _mark(Path(folder))


def _mark(folder: Path) -> None:
    """This process's mark in ``folder``, under the head's temporary folder (never made again
    once ``cluster stop`` removed it)."""
    top = Path(os.environ[READY_ENV]).parent
    if not top.is_dir():
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        Path(folder, str(os.getpid())).touch()
    except OSError:  # the head is being stopped (its temporary folder gone)
        pass


def run_ready(ready: Path, job: str) -> Path:
    """Where the workers started for the run ``job`` mark that they imported its list
    (beside ``ready``, the marks of the workers bound to no job)."""
    return ready.parent / "ready-runs" / job


def expected_workers(num_cpus: int | None) -> int:
    """How many workers Ray prestarts for the first driver: one per CPU of the head, at most
    one per core of the machine (Ray's start-up concurrency)."""
    cores = os.cpu_count() or 1
    return max(0, min(cores if num_cpus is None else num_cpus, cores))


def prime(address: str, env: dict, ready: Path, expected: int, wait_s: float = PRIME_WAIT_S):
    """Connect a driver to the head at ``address`` and leave (Ray prestarts its workers for
    the first driver, bound to no job, and keeps them idle), then wait until ``expected`` of
    them marked ``ready`` or ``wait_s`` passed. Returns ``(workers ready, seconds)``; never
    raises for a head that does not answer (the start checked it just before)."""
    t0 = time.monotonic()
    code = (
        "import sys, ray\n"
        "ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)\n"
        "ray.shutdown()\n"
    )
    try:
        subprocess.run(
            [sys.executable, "-c", code, address],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=wait_s,
            check=False,
            cwd="/",
        )
    except subprocess.TimeoutExpired:
        pass
    n = 0
    while time.monotonic() - t0 < wait_s:
        n = len(list(ready.iterdir())) if ready.is_dir() else 0
        if n >= expected:
            break
        time.sleep(0.05)
    return n, time.monotonic() - t0
