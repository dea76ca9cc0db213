"""Warm runners: a run's single task as a method call on a process whose imports are done.

Ray binds a worker process to the job (the driver) that first uses it and ends it with that
job, so on the warm cluster every ``distml run`` would start a worker process of its own for its
one task: Python, Ray's worker and the preload, ~2 s of a 0.1 s fit (docs/clusters.md). A
*runner* is a detached actor of the warm cluster that outlives the run that created it; the next
runs call it instead of starting a worker (~0.15 s). :func:`call` is the one place that decides.

- **Only on the warm cluster, only CPU tasks.** Elsewhere (a cluster of the run's own, one
  connected by address, a task with GPUs) the task is a plain Ray task, as always.
- **Resources stay honest.** A runner holds no CPU of its own (``num_cpus=0``); the run reserves
  the task's CPUs with a placement group for the call, so Ray's scheduler and other runs see them
  taken, and the call runs under a thread limit of that many CPUs.
- **One call at a time.** A runner another run holds answers "busy"; the run tries the next one,
  then falls back to a plain task. Nothing waits for a runner.
- **Same code or not at all.** A runner states what it runs (Python, distml's folder and a digest
  of its source files' sizes and times, the installed distributions); one that differs from the
  calling CLI's is killed and replaced, never used.
- **No stale user code.** A call that imported a module from outside the installed packages (a
  user's ``model.module`` network on the cluster's ``PYTHONPATH``) retires the runner, so a later
  run that edited that module never meets the old one. Runners also retire after
  :data:`MAX_CALLS` calls or when they hold more than :data:`MAX_RSS` bytes.
- **Faults as a task.** A runner that dies during the call (killed, out of memory, the fault
  hook) counts as the task's first attempt; ``resources.max_failures`` more attempts run as
  plain Ray tasks. A stop of the run (SIGTERM, Ctrl-C) kills the runner, whose call Ray cannot
  interrupt, so no work of a stopped run goes on.

Runners are created by runs (after their task, not waited for), one per CPU of the warm cluster
up to :data:`MAX_RUNNERS`; ``DISTML_WARM_RUNNERS=0`` turns them off (``=N`` sets how many).
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any, Callable

from distml.runtime import threads, warm_workers

NAMESPACE = "distml_warm"
PREFIX = "distml_runner_"
ENV = "DISTML_WARM_RUNNERS"
MAX_RUNNERS = 4
MAX_CALLS = 200
MAX_RSS = 2 << 30
#: distml's package folder (this file is distml/runtime/runners.py)
PACKAGE = Path(__file__).resolve().parents[1]
#: how long a run waits for the placement group of its CPUs before it takes a plain task
RESERVE_WAIT_S = 2.0
#: how long a run waits for a runner's answer (one still starting is skipped, not waited for)
ACQUIRE_WAIT_S = 2.0
#: a runner acquired but never called is free again after this long (its driver died)
LEASE_S = 30.0


def identity() -> dict:
    """What code a process runs: Python, distml's folder and source digest, the installed
    distributions (names of their ``.dist-info`` folders, which carry versions)."""
    pkg = PACKAGE
    h = hashlib.sha256()
    for p in sorted(pkg.rglob("*.py")):
        st = p.stat()
        h.update(f"{p.relative_to(pkg)}:{st.st_size}:{st.st_mtime_ns};".encode())
    dists = hashlib.sha256()
    for site in sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}):
        try:
            names = sorted(n for n in os.listdir(site) if n.endswith((".dist-info", ".egg-link")))
        except OSError:
            names = []
        dists.update(("\n".join(names) + "|").encode())
    return {
        "python": sys.executable,
        "distml": str(pkg),
        "source": h.hexdigest()[:16],
        "distributions": dists.hexdigest()[:16],
    }


def _trusted_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.add(str(PACKAGE))
    return tuple(os.path.realpath(r) + os.sep for r in roots)


def _user_modules(before: set[str], roots: tuple[str, ...]) -> list[str]:
    """Modules imported since ``before`` from files outside the installed packages."""
    found = []
    for name, mod in list(sys.modules.items()):
        if name in before:
            continue
        f = getattr(mod, "__file__", None)
        if f and not os.path.realpath(f).startswith(roots):
            found.append(name)
    return found


def _rss() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Runner:
    """The body of a runner actor (see the module docstring). ``acquire``/``release`` run in
    their own concurrency group, so a busy runner still answers them."""

    def __init__(self) -> None:
        # the warm cluster's preload, which Ray gives only the workers it prestarted: a runner
        # is created for later runs (not waited for), so its imports are off their path
        warm_workers.import_each(warm_workers.warm_modules())
        self.identity = identity()
        self.roots = _trusted_roots()
        self.holder: str | None = None
        self.held_at = 0.0
        self.calling = False
        self.calls = 0
        self.retire: str | None = None

    def acquire(self, holder: str) -> dict:
        """This runner for ``holder``'s next call, or why not (busy, retired)."""
        if self.retire:
            return {"ok": False, "why": f"retired: {self.retire}", "retired": True}
        if self.calling or (self.holder and time.monotonic() - self.held_at < LEASE_S):
            return {"ok": False, "why": "busy"}
        self.holder, self.held_at = holder, time.monotonic()
        return {"ok": True, "identity": self.identity, "pid": os.getpid(), "calls": self.calls}

    def release(self, holder: str) -> None:
        if self.holder == holder and not self.calling:
            self.holder = None

    def call(self, holder: str, fn: Callable, args: tuple, cpus: int) -> Any:
        """``fn(*args)`` under ``cpus`` threads (what a plain task's worker would see)."""
        if self.holder != holder:
            raise RuntimeError("distml runner: called without holding it")
        self.calling = True
        before = set(sys.modules)
        try:
            with threads.limited(cpus):
                return fn(*args)
        finally:
            self.calls += 1
            # tidied while the result travels; busy (``calling``) until then
            threading.Thread(target=self._tidy, args=(before,), daemon=True).start()

    def _tidy(self, before: set[str]) -> None:
        """After a call: retire on user code, age or size; collect garbage; free again."""
        import gc

        try:
            user = _user_modules(before, self.roots)
            gc.collect()
            if user:
                self.retire = f"imported {', '.join(sorted(user)[:3])} from outside the packages"
            elif self.calls >= MAX_CALLS:
                self.retire = f"{self.calls} calls"
            elif _rss() > MAX_RSS:
                self.retire = f"holds {_rss() >> 20} MiB"
        finally:
            self.calling, self.holder = False, None


def wanted(cluster: Any) -> int:
    """How many runners the run's cluster should have (0: do not use them)."""
    if cluster is None or getattr(cluster, "mode", None) != "warm":
        return 0
    env = os.environ.get(ENV, "").strip()
    if env:
        try:
            return max(0, int(env))
        except ValueError:
            return 0
    cpus = int((cluster.resources or {}).get("CPU", 1) or 1)
    return max(1, min(MAX_RUNNERS, cpus))


def call(fn: Callable, args: tuple, options: dict, cluster: Any, facts: dict) -> Any:
    """``fn(*args)`` as the run's single task: on a free runner of the warm cluster when there
    is one, else a plain Ray task with ``options``; the result (Ray's errors as ``ray.get``
    raises them). ``facts`` receives what ran, for the manifest."""
    import ray
    from ray.exceptions import GetTimeoutError

    n = wanted(cluster)
    if n == 0 or options.get("num_gpus"):
        if getattr(cluster, "mode", None) != "warm":
            why = "not a warm cluster"
        else:
            why = f"turned off ({ENV}=0)" if n == 0 else "a GPU task"
        facts.update(runner=False, why=why)
        return result(threads.remote(fn, **options).remote(*args))
    holder = f"{os.getpid()}-{time.time_ns()}"
    mine = identity()
    got, missing, notes = None, [], []
    for i in range(n):
        name = f"{PREFIX}{i}"
        try:
            actor = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            missing.append(i)
            continue
        try:
            ans = ray.get(actor.acquire.remote(holder), timeout=ACQUIRE_WAIT_S)
        except GetTimeoutError:  # still starting (or stuck): not waited for, left as it is
            notes.append(f"{name}: not ready")
            continue
        except Exception as e:  # noqa: BLE001 - a dead runner: replace it
            notes.append(f"{name}: {type(e).__name__}")
            _kill(actor)
            missing.append(i)
            continue
        if ans.get("ok") and ans["identity"] != mine:
            notes.append(f"{name}: other code ({_diff(ans['identity'], mine)}), replaced")
            _kill(actor)
            missing.append(i)
        elif ans.get("ok"):
            got = (name, actor, ans)
            break
        else:
            notes.append(f"{name}: {ans.get('why')}")
            if ans.get("retired"):
                _kill(actor)
                missing.append(i)
    try:
        if got is None:
            facts.update(runner=False, why="; ".join(notes) or "none yet (created for next runs)")
            return result(threads.remote(fn, **options).remote(*args))
        return _on_runner(got, holder, fn, args, options, facts)
    finally:
        for i in missing:
            _create(f"{PREFIX}{i}")


def _on_runner(got, holder: str, fn, args, options: dict, facts: dict) -> Any:
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError
    from ray.util.placement_group import placement_group, remove_placement_group

    name, actor, ans = got
    cpus = options.get("num_cpus") or 1
    t0 = time.perf_counter()
    pg = placement_group([{"CPU": float(cpus)}])
    try:
        ray.get(pg.ready(), timeout=RESERVE_WAIT_S)
    except GetTimeoutError:  # the CPUs are taken: queue as a plain task, as Ray would
        remove_placement_group(pg)
        actor.release.remote(holder)
        facts.update(runner=False, why="the CPUs are busy")
        return result(threads.remote(fn, **options).remote(*args))
    facts.update(runner=True, name=name, pid=ans["pid"], reused=ans["calls"] > 0)
    facts["reserve_s"] = round(time.perf_counter() - t0, 4)
    ref = actor.call.remote(holder, fn, args, cpus)
    try:
        out = result(ref)
        facts["call_s"] = round(time.perf_counter() - t0 - facts["reserve_s"], 4)
        return out
    except (ActorDiedError, ActorUnavailableError) as died:
        retries = int(options.get("max_retries", 0) or 0)
        facts.update(runner_died=type(died).__name__)
        _create(name)  # its replacement, for the next runs
        if retries <= 0:
            raise
        retry = threads.remote(fn, **{**options, "max_retries": retries - 1})
        return result(retry.remote(*args))
    except BaseException:  # a stop of the run: Ray cannot interrupt the call, so end the runner
        if not ref_done(ref):
            _kill(actor)
        raise
    finally:
        remove_placement_group(pg)


def result(ref) -> Any:
    """``ray.get(ref)`` of a task's result, with pandas imported first in this thread.

    A job's result usually holds pandas frames, and deserialising it imports pandas when
    nothing has. Imported here, after the task was submitted, the import overlaps the task.
    The run's report warm-up thread (:func:`distml.report.warm_up`) imports pandas before
    anything else, so this thread, which holds no import lock here, at most waits for that
    import: two threads importing shared dependencies at once can fail in CPython with a
    ``_DeadlockError``."""
    import ray

    try:
        import pandas  # noqa: F401
    except ImportError:  # pragma: no cover - a dependency of distml
        pass
    return ray.get(ref)


def ref_done(ref) -> bool:
    import ray

    try:
        ready, _ = ray.wait([ref], timeout=0)
    except Exception:  # noqa: BLE001 - cannot tell: treat as running
        return False
    return bool(ready)


def _create(name: str) -> None:
    """A runner named ``name`` (detached; ``get_if_exists`` makes creation race-free)."""
    try:
        cls = _actor_class().options(
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=0,
        )
        cls.remote()
    except Exception:  # noqa: BLE001 - runners only save time: a run never fails for one
        pass


def _actor_class():
    """:class:`Runner` as a Ray actor whose ``acquire``/``release`` answer while it is busy."""
    import ray

    class RunnerActor(Runner):
        @ray.method(concurrency_group="ctl")
        def acquire(self, holder: str) -> dict:
            return Runner.acquire(self, holder)

        @ray.method(concurrency_group="ctl")
        def release(self, holder: str) -> None:
            return Runner.release(self, holder)

    return ray.remote(concurrency_groups={"ctl": 2})(RunnerActor)


def _kill(actor) -> None:
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


def _diff(theirs: dict, mine: dict) -> str:
    return ", ".join(k for k in mine if theirs.get(k) != mine.get(k)) or "?"
