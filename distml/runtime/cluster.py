"""Getting a Ray cluster for a run: reuse one already initialised, connect, or start a local one.

Order (DESIGN.md §3): ``--address``, else ``RAY_ADDRESS``, else the warm local cluster of
``distml cluster start`` when it is up and healthy (:mod:`distml.runtime.warm`; a head running
another distml/ray/python is a ClusterError, exit 3), else a single-node cluster started for
the run — always its own, never one a ``ray start`` left running on the machine — and shut down
after (its dashboard off unless ``DISTML_DASHBOARD=1``, and then bound to 127.0.0.1 only).
Connecting is preceded by a TCP pre-flight with a deadline so an unreachable address fails in
seconds (exit 3) instead of Ray's long retry loop. Token
authentication is left to Ray: it is on by default for new local clusters and read from
``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` / ``~/.ray/auth_token`` when connecting.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from distml.errors import ClusterError, first_line
from distml.runtime import warm_workers
from distml.runtime.node_start import (
    CONNECT_RETRY,
    quick_node_start,
    raylet_children,
    without_idle_monitors,
)
from distml.runtime.threads import imported, preload_modules

log = logging.getLogger("distml")
PREFLIGHT_TIMEOUT_S = 10.0


@dataclass
class ClusterInfo:
    """What the run used: how the cluster was obtained and what it offers."""

    mode: str  # "local" (started for this run), "connected", "warm" (distml cluster start),
    #            or "existing" (already initialised)
    address: str | None
    address_source: str | None
    resources: dict = field(default_factory=dict)
    start_s: float = 0.0
    warm: dict | None = None  # the warm cluster's record (versions, start time) when mode=warm


def resolve_address(address: str | None) -> tuple[str | None, str | None]:
    """Return (address, where it came from) following the documented order."""
    if address:
        return address, "--address"
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return env, "RAY_ADDRESS"
    return None, None


def _host_port(address: str) -> tuple[str, int] | None:
    if address in ("auto", "local"):
        return None
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    if parsed.hostname is None:
        return None
    try:
        port = parsed.port or 6379
    except ValueError:
        raise ClusterError(f"cluster address {address!r} has an invalid port") from None
    return parsed.hostname, port


def preflight(address: str, source: str, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> None:
    """Fail fast (ClusterError) when ``address`` is malformed or nothing listens there."""
    scheme = urlparse(address).scheme if "://" in address else ""
    if scheme in ("http", "https"):
        raise ClusterError(
            f"cluster address {address!r} (from {source}) is a Jobs API / dashboard URL; "
            "`distml run` connects to the GCS (HOST:6379); use `distml submit --address URL` "
            "to send the job to that cluster"
        )
    if scheme == "ray":
        raise ClusterError(
            f"cluster address {address!r} (from {source}) uses Ray Client (ray://), which distml "
            "does not use for data workloads; use `distml submit` with the dashboard URL instead"
        )
    hp = _host_port(address)
    if hp is None:
        return
    host, port = hp
    start = time.monotonic()
    deadline = start + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=min(3.0, timeout_s)):
                return
        except ConnectionRefusedError as e:
            last = e  # nothing listens: retry briefly in case the head is just starting
            if time.monotonic() - start > 2.0:
                break
        except OSError as e:
            last = e
        time.sleep(0.5)
    reason = getattr(last, "strerror", None) or str(last)
    raise ClusterError(
        f"cannot reach the Ray cluster at {address!r} (from {source}): {reason}; "
        f"is `ray start --head` running there and the port open?"
    )


def _start_local(
    num_cpus: int | None,
    num_gpus: int | None,
    preload: tuple[str, ...] = (),
    head: bool = True,
    store_bytes: int | None = None,
) -> None:
    """Start a single-node cluster for this run (tests replace this to forbid it).

    ``address="local"``: always a new cluster of our own, never one that ``ray start`` recorded
    in Ray's temp folder (plain ``ray.init()`` would silently join that one, and then fail on
    ``num_cpus``). CPUs and GPUs are left to Ray's detection, which honours container (cgroup)
    limits, unless the caller asks for a number. ``preload``: modules every worker process
    imports as it starts (``preload_python_modules``), before it takes a task. ``head``: start
    Ray's dashboard head (a run that may use Ray Train or Ray Data needs it;
    :func:`~distml.runtime.node_start.quick_node_start`). ``store_bytes``: the object store's
    size (:meth:`distml.jobs.base.Job.object_store_bytes`; None: Ray's default)."""
    import ray

    dashboard = os.environ.get("DISTML_DASHBOARD", "").lower() in ("1", "true", "yes")
    with without_idle_monitors(keep=dashboard), quick_node_start(keep=dashboard, head=head):
        ray.init(
            address="local",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            **({"object_store_memory": int(store_bytes)} if store_bytes else {}),
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",
            log_to_driver=False,
            configure_logging=False,
            _system_config={
                **CONNECT_RETRY,
                **({"preload_python_modules": preload_modules(preload)} if preload else {}),
            },
        )


def local_resources() -> dict:
    """The resources a run's own cluster on this machine will have, before it starts, for
    decisions that shape its start: every CPU, and a quarter of the memory (Ray gives tasks
    what the object store leaves of the available memory, so the real figure is higher and
    a decision made here errs towards the larger plan)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 0
    return {"CPU": float(os.cpu_count() or 1), "memory": 0.25 * memory}


@contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """Keep the process's SIGTERM handler through ``ray.init``, which installs its own (a bare
    ``sys.exit(15)``): a SIGTERM that lands while Ray starts becomes the KeyboardInterrupt the
    run's handler would have raised, and the handler is put back once Ray is up."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    except SystemExit as e:
        if e.code in (signal.SIGTERM, 128 + signal.SIGTERM):
            raise KeyboardInterrupt("terminated by signal 15 (SIGTERM)") from None
        raise
    finally:
        if main and previous is not None and signal.getsignal(signal.SIGTERM) is not previous:
            signal.signal(signal.SIGTERM, previous)


@contextmanager
def cluster(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    preload: tuple[str, ...] = (),
    run_preload: tuple[str, ...] = (),
    driver_preload: tuple[str, ...] = (),
    head: bool = True,
    store_bytes: int | None = None,
) -> Iterator[ClusterInfo]:
    """Yield a connected Ray for the run; shut down only what this call started. ``preload``:
    modules the workers of a cluster started here import as they start (the run's kind's,
    :meth:`distml.jobs.base.Job.worker_modules`); ``run_preload``: those the workers the warm
    cluster starts for this run import as they start (:func:`warm_workers.declare`), and a run
    that names any has them started as it connects (:func:`warm_workers.prestart`); a remote
    cluster keeps its own. ``driver_preload``: modules this driver imports while the cluster
    starts (:func:`preimport`; the kind's :meth:`~distml.jobs.base.Job.driver_modules`).
    ``head=False``: a cluster started here has no dashboard head (a run
    that uses neither a Ray Train worker group nor Ray Data). ``store_bytes``: the object store
    of a cluster started here (None: Ray's default; a warm or remote cluster keeps its own)."""
    t0 = time.monotonic()
    preimport(driver_preload)
    if _connected():
        yield ClusterInfo("existing", None, None, _resources(), 0.0)
        return
    addr, source = resolve_address(address)
    rec = None
    if not addr:
        from distml.runtime import warm

        rec = warm.for_run()  # None when none is up; ClusterError on a version mismatch
    if rec is not None:
        with warm.lease(rec), _warm_client(rec):
            with _ray(rec["address"], warm.SOURCE, num_cpus, num_gpus, t0, "warm") as info:
                info.warm = {
                    k: rec.get(k)
                    for k in ("started_at", "distml_version", "ray_version", "state_dir", "preload")
                }
                warm_workers.declare(run_preload)
                if run_preload:  # a run whose work starts worker processes of its own
                    info.warm["prestarted"] = warm_workers.prestart(
                        info.resources.get("CPU"), Path(rec["temp_dir"], "ready")
                    )
                try:
                    yield info
                finally:
                    warm_workers.forget()
        return
    mode = "connected" if addr else "local"
    with _ray(
        addr, source, num_cpus, num_gpus, t0, mode, () if addr else preload, head, store_bytes
    ) as info:
        yield info


def _connected() -> bool:
    """Whether this process is connected to a Ray already, without importing Ray (nor reading a
    Ray that :func:`preimport`'s thread is still importing, which cannot be connected)."""
    ray = imported("ray")
    return ray is not None and ray.is_initialized()


def preimport(modules: tuple[str, ...]) -> None:
    """Import ``modules`` in a background thread, so that they load while the cluster starts
    rather than in the job (measured for ``engine: dask``: dask-ml and Dask's frames, 1.7 s, out
    of the job's 5.5-7 s). One that fails is left for the job to raise where it needs it. What
    a cluster start imports and these share: two standard-library modules (the Dask engine's
    list), four of Ray's usage-stats modules (a search's), none of which imports what the
    thread holds half-initialised: no import cycle for the two threads to meet in."""
    if not modules:
        return

    def work() -> None:
        import importlib

        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the job imports it again and says why
                pass

    threading.Thread(target=work, name="distml-preimport", daemon=True).start()


_gc_lock = threading.Lock()
_gc_holds = [0, True]  # stops in progress; whether the collector was on before the first


def _gc_hold() -> None:
    """Automatic garbage collection off while any cluster stop is in progress."""
    import gc

    with _gc_lock:
        if _gc_holds[0] == 0:
            _gc_holds[1] = gc.isenabled()
            gc.disable()
        _gc_holds[0] += 1


def _gc_release() -> None:
    """One stop over; the collector back as it was once none is left."""
    import gc

    with _gc_lock:
        _gc_holds[0] -= 1
        if _gc_holds[0] == 0 and _gc_holds[1]:
            gc.enable()


class Stopping:
    """A cluster's stop (the exit of ``stack``, its context) in a thread of its own, while the
    run writes its outputs and its report: Ray's disconnect waits with the GIL released
    (measured: another thread keeps ~90% of its speed), so the two overlap. The thread is not a
    daemon: the process never exits with a cluster of its own half stopped."""

    def __init__(self, stack: ExitStack) -> None:
        self.stack, self.seconds, self.error = stack, 0.0, None
        self.thread = threading.Thread(target=self._stop, name="distml-cluster-stop")
        # No automatic garbage collection until the stop is over: one started by the writing
        # thread's allocations while Ray's core worker shuts down can free a Ray object that
        # only a reference cycle held (a Tune search leaves such cycles), and Ray then ends
        # the process (exit 1, "The core worker has already been shutdown"), the run left
        # `running` (seen in 3 of 6 cold 64-trial searches; 0 of 12 with this). Before the
        # stop and after it, freeing them is safe.
        held = False
        try:
            _gc_hold()
            held = True
            self.thread.start()
        except BaseException:
            if held:
                _gc_release()
            raise

    def _stop(self) -> None:
        t0 = time.perf_counter()
        try:
            self.stack.close()
        except BaseException as e:  # noqa: BLE001 - said by join's caller
            self.error = e
        finally:
            self.seconds = time.perf_counter() - t0
            _gc_release()

    def join(self) -> float:
        """Wait for the stop; its seconds."""
        self.thread.join()
        return self.seconds


@contextmanager
def _ray(
    addr: str | None,
    source: str | None,
    num_cpus: int | None,
    num_gpus: int | None,
    t0: float,
    mode: str,
    preload: tuple[str, ...] = (),
    head: bool = True,
    store_bytes: int | None = None,
) -> Iterator[ClusterInfo]:
    import ray

    try:
        with _keep_sigterm_handler():
            if addr:
                preflight(addr, source or "--address")
                try:
                    ray.init(address=addr, log_to_driver=False, configure_logging=False)
                except Exception as e:  # Ray raises ConnectionError/RuntimeError/auth errors
                    raise ClusterError(
                        f"cannot connect to the Ray cluster at {addr!r} (from "
                        f"{source}): {first_line(e)}"
                    ) from e
            else:
                _start_local(num_cpus, num_gpus, preload, head=head, store_bytes=store_bytes)
    except BaseException:  # interrupted or failed part way: stop what was started
        if mode == "local" or ray.is_initialized():
            _shutdown(started_here=mode == "local")
        raise
    info = ClusterInfo(mode, addr, source, _resources(), time.monotonic() - t0)
    log.info("ray cluster ready (%s, %.1fs): %s", mode, info.start_s, info.resources)
    _fixed.append(mode in ("local", "warm"))
    try:
        yield info
    finally:
        _fixed.pop()
        _shutdown(started_here=mode == "local")


_fixed: list[bool] = []  # per cluster() block in use: whether distml started it on this machine


def fixed_size() -> bool:
    """Whether this process runs on a cluster distml started on this machine (a per-run cluster
    or ``distml cluster start``): one node, no autoscaler."""
    return bool(_fixed) and _fixed[-1]


@contextmanager
def runs_on(fixed: bool) -> Iterator[None]:
    """Within the block, :func:`fixed_size` answers ``fixed``: for a process working on the
    cluster of another process's :func:`cluster` block, which knows what it is (a Tune trial
    that drives a Train worker group, told by the search's driver)."""
    _fixed.append(fixed)
    try:
        yield
    finally:
        _fixed.pop()


@contextmanager
def _warm_client(rec: dict) -> Iterator[None]:
    """This process as a client of the warm head: its token, and loopback as its own address
    (Ray resolves 127.0.0.1 to the machine's interface address unless
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` was set before it was imported)."""
    from distml.runtime import warm

    saved = {
        k: os.environ.get(k)
        for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    }
    os.environ.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=warm.read_token(rec),
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
    )
    # Private Ray API, kept on purpose: when Ray was imported before (a long-lived process),
    # its loopback switch and its cached token were read then; set them for this connection.
    # Looked up defensively: a Ray that moves them only loses this in-process case.
    consts = getattr(getattr(sys.modules.get("ray"), "_private", None), "ray_constants", None)
    loopback_before = getattr(consts, "ENABLE_RAY_CLUSTER", None)
    if loopback_before is not None:
        consts.ENABLE_RAY_CLUSTER = False
    _reset_token_cache()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if loopback_before is not None:
            consts.ENABLE_RAY_CLUSTER = loopback_before
        _reset_token_cache()


def _reset_token_cache() -> None:
    """Make an already imported Ray read its auth mode and token from the environment again:
    Ray reads ``RAY_AUTH_MODE`` into its C++ config once per process, so a process that
    imported Ray before the warm client set it (a notebook: ``import ray`` first) would connect
    without the token and be refused. Private Ray API, kept on purpose (Ray's own test helpers
    do the same, config first, then the token cache); looked up defensively, and
    tests/unit/test_ray_private_apis.py fails loudly when Ray renames it."""
    raylet = getattr(sys.modules.get("ray"), "_raylet", None)
    config = getattr(raylet, "Config", None)
    if config is not None and hasattr(config, "initialize"):
        try:
            config.initialize("")
        except Exception:  # noqa: BLE001 - the connection then says what failed
            pass
    loader = getattr(raylet, "AuthenticationTokenLoader", None)
    if loader is not None:
        try:
            loader.instance().reset_cache()
        except Exception:  # noqa: BLE001 - only a cache; Ray reads the token again at worst
            pass


def _shutdown(started_here: bool) -> None:
    """Disconnect; for a cluster this run started, stop its processes without the graceful wait.

    ``ray.shutdown()`` sends SIGTERM to each process of a local cluster and waits up to a second
    for each (≈1.3 s here); nothing of a finished run lives in those processes (the driver has
    written every artifact), so the processes of a cluster we started are killed outright.
    """
    import ray

    # Private Ray API, kept on purpose: Ray has no public way to stop a local cluster without the
    # SIGTERM + grace wait per process, nor to name its raylet's PID; the Node that
    # ray.init(address="local") started is ``ray._private.worker._global_node``. Looked up
    # defensively (a Ray that changes it gets the slow path, not a crash);
    # tests/unit/test_ray_private_apis.py fails loudly when Ray renames or reshapes any of it.
    node = getattr(getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None)
    if started_here and node is not None and hasattr(node, "kill_all_processes"):
        original = node.kill_all_processes

        def fast_kill(check_alive: bool = False, allow_graceful: bool = False, wait: bool = False):
            return original(check_alive=False, allow_graceful=False, wait=wait)

        node.kill_all_processes = fast_kill
    orphans = raylet_children(node) if started_here and node is not None else []
    ray.shutdown()
    # The raylet's agents (dashboard agent, runtime-env agent) are its children, not the node's:
    # with the raylet killed they would outlive the run (seen: still alive minutes later).
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _resources() -> dict:
    import ray

    try:
        return {
            k: v
            for k, v in ray.cluster_resources().items()
            if k in ("CPU", "GPU", "memory", "object_store_memory")
            or k.startswith("node:")
            and not k.startswith("node:__")
        }
    except Exception:
        return {}
