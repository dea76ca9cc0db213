"""How distml starts a single-node Ray cluster faster than ``ray.init`` alone (docs/clusters.md,
"the cold path"): patches of Ray's private node-start API, each applied only while a run's own
cluster (or ``distml cluster start``'s) starts, looked up defensively (a Ray without them
starts as before; tests/unit/test_cold_path.py fails loudly when Ray renames them).

- :data:`CONNECT_RETRY`: the raylet's and workers' retries of a local socket, every 20 ms.
- :func:`without_idle_monitors`: no autoscaler monitor and no log monitor.
- :func:`quick_node_start`: the dashboard head started beside the raylet, the raylet's
  registration seen as it happens, Ray's dashboard dependency check without its imports, and
  a start that fails part way ended (:func:`end_failed_start`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("distml")


#: How Ray's processes retry a connection to a local socket (the raylet's to its own object
#: store, a worker's to the raylet): Ray waits 1 s between 10 attempts, and the raylet's first
#: attempt often comes a moment before its store's socket exists, which cost every other
#: cluster start a whole second. Every 20 ms, for the same 10 s in all.
CONNECT_RETRY = {
    "raylet_client_connect_timeout_milliseconds": 20,
    "raylet_client_num_connect_attempts": 500,
}


#: Node methods that start the head's autoscaler monitor and its log monitor
IDLE_MONITORS = ("start_monitor", "start_log_monitor")


@contextmanager
def without_idle_monitors(keep: bool = False) -> Iterator[None]:
    """Start a run's own cluster without the two helper processes it never uses: the
    autoscaler monitor (a fixed single node has nothing to scale) and the log monitor (it
    forwards worker output to drivers, and the run's driver asks for none:
    ``log_to_driver=False``; the workers' log files are written as before). Each is a Python
    process importing Ray: ~1 s of CPU apiece at every cold start on the 2-core machines,
    about a fifth of the cluster's start (docs/clusters.md). ``ray.init`` has no option for
    them (``ray start`` has ``--no-monitor``), so ``ray._private.node.Node``'s two starters are
    no-ops while this run's ``ray.init`` runs, and restored after. Private Ray API, kept on
    purpose and looked up defensively: a Ray without these methods starts them as before;
    tests/unit/test_cold_path.py fails loudly when Ray renames them. ``DISTML_DASHBOARD=1``
    (observing the run) keeps them."""
    try:
        from ray._private.node import Node as node_cls
    except ImportError:
        node_cls = None
    saved = {name: getattr(node_cls, name, None) for name in IDLE_MONITORS}
    if keep or node_cls is None or not all(callable(v) for v in saved.values()):
        yield
        return
    for name in IDLE_MONITORS:
        setattr(node_cls, name, lambda self: None)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(node_cls, name, fn)


#: Node methods: the dashboard head's start (waited for until it registers), and the last
#: step of a new node's start, after the raylet has registered
DASHBOARD_START, NODE_STARTED = "start_api_server", "_record_stats"


@contextmanager
def quick_node_start(keep: bool = False, head: bool = True) -> Iterator[None]:
    """Start a run's own cluster with its dashboard head and its raylet side by side, or
    (``head=False``) with no dashboard head at all.

    ``ray.init`` starts the GCS, then the dashboard head, and waits (polling every 0.1 s)
    until the head has registered before it starts the raylet, whose own registration it then
    waits for: two waits of about a second each, one after the other, though the raylet needs
    nothing from the head (its ``--webui`` argument is not used by the workers, which build
    the address themselves). Here the head's start and wait run in a thread while the raylet
    starts, and the node's start waits for them before its last step (``_record_stats``,
    after the raylet registered), so ``ray.init`` returns, as before, with the head up and
    registered (Ray Train V2 and Ray Data look it up) and any failure of its start raised.
    That thread then lives as long as the head: Ray ties the head's life to the thread that
    started it (the parent-death signal), so it must not end with the start. Ray's dashboard
    dependency check is :func:`dashboard_deps_missing` (no imports), the raylet's registration
    is seen within 20 ms instead of on Ray's one-second retries, and a start that raises has
    what it started ended (:func:`end_failed_start`). Private Ray API, looked up defensively
    like :func:`without_idle_monitors` (tests/unit/test_cold_path.py fails when Ray renames
    them); ``DISTML_DASHBOARD=1`` keeps Ray's order.

    ``head=False``, for a run that uses neither a Ray Train worker group nor Ray Data (their
    State API calls expect a dashboard address): no head. Ray starts one whatever
    ``ray.init`` is told (``include_dashboard=False`` only trims its modules), a Python
    process of 0.8 s of CPU that competes with the workers' start on a small machine, and
    nothing of such a run asks it anything: the run's own cluster starts 0.4 s sooner
    (docs/clusters.md)."""
    try:
        from ray._private.node import Node as node_cls
    except ImportError:
        node_cls = None
    saved = {name: getattr(node_cls, name, None) for name in (DASHBOARD_START, NODE_STARTED)}
    if keep or node_cls is None or not all(callable(v) for v in saved.values()):
        yield
        return
    start_head, started = saved[DASHBOARD_START], saved[NODE_STARTED]
    pending: dict[int, tuple[threading.Event, dict]] = {}
    starting: dict[int, object] = {}  # the nodes whose start began here and has not ended

    def start_api_server(self, *args, **kwargs):
        starting[id(self)] = self
        if not head:
            return
        started_head, box = threading.Event(), {}

        def run() -> None:
            try:
                start_head(self, *args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - raised where the node's start waits
                box["error"] = e
                return
            finally:
                started_head.set()
            # Ray starts the head with the parent-death signal (PR_SET_PDEATHSIG), which the
            # kernel sends when the *thread* that started it ends: this thread lives as long
            # as the head (it ends when the cluster's stop kills the head, or with the process)
            from ray._private import ray_constants

            head = (self.all_processes.get(ray_constants.PROCESS_TYPE_DASHBOARD) or [None])[0]
            if head is not None:
                head.process.wait()
            else:  # Ray recorded no head process: nothing of ours to keep alive
                log.debug("the dashboard head's process is not recorded by Ray's node")

        pending[id(self)] = (started_head, box)
        threading.Thread(target=run, name="distml-dashboard-head", daemon=True).start()

    def record_stats(self):
        started_head, box = pending.pop(id(self), (None, {}))
        if started_head is not None:
            started_head.wait()
        if "error" in box:
            raise box["error"]
        out = started(self)
        starting.pop(id(self), None)
        return out

    import ray._private.services as services

    get_node = getattr(services, "get_node", None)

    def registered_node(gcs_address, node_id):
        """``services.get_node`` once the raylet has registered, seen within 20 ms: Ray's
        own lookup retries once a second, so a raylet up 1.2 s after its start was seen at
        2.1 s."""
        try:
            from ray._private.state import GlobalState

            state = GlobalState()
            state._initialize_global_state(services._get_gcs_client_options(gcs_address))
            want = node_id if isinstance(node_id, str) else node_id.hex()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                rows = state.node_table()
                if any(n.get("NodeID") == want for n in rows):
                    break
                if any("NodeID" not in n for n in rows):  # another Ray's rows: Ray decides
                    break
                time.sleep(0.02)
        except Exception:  # noqa: BLE001 - Ray's own lookup (below) waits and decides
            pass
        return get_node(gcs_address, node_id)

    import ray._private.utils as ray_utils

    check = getattr(ray_utils, "get_dashboard_dependency_error", None)
    setattr(node_cls, DASHBOARD_START, start_api_server)
    setattr(node_cls, NODE_STARTED, record_stats)
    if callable(get_node):
        services.get_node = registered_node
    if callable(check):
        ray_utils.get_dashboard_dependency_error = dashboard_deps_missing
    try:
        yield
    except BaseException:
        for started_head, _ in pending.values():  # a start that failed before its last step
            started_head.wait(timeout=5)
        for node in starting.values():
            end_failed_start(node)
        raise
    finally:
        for name, fn in saved.items():
            setattr(node_cls, name, fn)
        if callable(get_node):
            services.get_node = get_node
        if callable(check):
            ray_utils.get_dashboard_dependency_error = check
        for started_head, _ in pending.values():
            started_head.wait(timeout=5)


def end_failed_start(node) -> None:
    """End what the start of a node that failed part way had started: ``ray.init`` raises
    before it records the node, so nothing else ever stops its GCS, its dashboard head (and the
    thread that waits on it) or its raylet and the raylet's agents, which would live as long as
    the process that tried (a notebook, a scheduler's worker)."""
    orphans = raylet_children(node)
    try:
        node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
    except Exception as e:  # noqa: BLE001 - what is left is ended below where it can be
        log.debug("ending a failed start's processes: %s", e)
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


#: the packages Ray's dashboard dependency check imports (ray/dashboard/optional_deps.py)
DASHBOARD_DEPS = (
    *("aiohttp", "aiohttp_cors", "grpc", "opencensus", "opentelemetry", "prometheus_client"),
    "pydantic",
)


def dashboard_deps_missing() -> ImportError | None:
    """Ray's dashboard dependency check (full or minimal dashboard) answered from the installed
    packages: Ray's own imports aiohttp, OpenTelemetry... into the driver (0.13 s of CPU)."""
    from importlib.util import find_spec

    for name in DASHBOARD_DEPS:
        if find_spec(name) is None:
            return ImportError(f"No module named {name!r}", name=name)
    return None


def raylet_children(node) -> list[int]:
    """PIDs of the processes whose parent is this node's raylet (from /proc; [] elsewhere)."""
    try:
        raylet = node.all_processes["raylet"][0].process.pid
        children = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as fh:
                    stat = fh.read()
            except OSError:  # the process ended meanwhile
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == raylet:
                children.append(int(entry.name))
        return children
    except (OSError, KeyError, IndexError, AttributeError, ValueError):
        return []


def ray_start() -> int:
    """``ray start`` (Ray's own command line, its arguments from ``sys.argv``) in this process,
    with :func:`quick_node_start`: how ``distml cluster start`` starts its head
    (``python -m distml.runtime.node_start start --head ...``). Its exit code."""
    from ray.scripts.scripts import main

    with quick_node_start():
        try:
            main()
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(ray_start())
