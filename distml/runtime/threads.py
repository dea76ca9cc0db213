"""Thread pools sized to the CPUs Ray gives a task (BLAS, OpenMP).

Ray sizes the pools of a task's libraries through ``OMP_NUM_THREADS``, which it sets to the
task's CPUs just before the task runs, so a library the task imports starts with that many
threads. A library the worker imported earlier keeps the pools it started with. Workers that
import distml's and the kinds' modules as they start (Ray's ``preload_python_modules``: a
run's own cluster and the warm cluster both do) load numpy's OpenBLAS and scikit-learn's
OpenMP before any task, with a thread for every core. Two 1-CPU tasks on 2 cores then run 4
BLAS threads: measured here, the passes of an out-of-core k-means took 2.4× as long.

:data:`PRELOAD_FIRST` is put first in a preload: it sets ``OMP_NUM_THREADS`` to 1 for the
imports that follow (unless the environment already sets it), as Ray would for a 1-CPU task.
:func:`fit_pools` sizes the pools of everything loaded to the CPUs of the task that calls it;
every Ray task distml starts calls it first (:func:`sized`), and so do the trials of a search
and the workers of a worker group.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import sys
from typing import Any, Callable

#: the module a worker's preload imports first (it calls :func:`preload_defaults`)
PRELOAD_FIRST = "distml.runtime.preload"

_applied: int | None = None  # the pool size this process last set


def imported(name: str) -> Any:
    """``sys.modules[name]`` once it is imported in full, else None; never imports. A module
    another thread is still importing (the driver's :func:`distml.runtime.cluster.preimport`)
    is in ``sys.modules`` half-initialised, without the names defined further down it: reading
    one raises AttributeError (CI: ``ray.is_initialized`` while that thread imported Ray)."""
    mod = sys.modules.get(name)
    if mod is None or getattr(getattr(mod, "__spec__", None), "_initializing", False):
        return None
    return mod


def preload_defaults() -> None:
    """Before a worker's preloaded imports: their pools start with one thread (what Ray sets
    for a 1-CPU task), unless the environment chose a size."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def preload_modules(modules) -> list[str]:
    """What a worker preload of ``modules`` imports: :data:`PRELOAD_FIRST`, then them."""
    return [PRELOAD_FIRST, *(m for m in modules if m != PRELOAD_FIRST)]


def task_cpus() -> int:
    """The CPUs Ray assigned to the running task or actor (at least 1; 1 outside a worker)."""
    try:
        import ray

        if not ray.is_initialized():
            return 1
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # noqa: BLE001 - no runtime context: one thread, as Ray's default
        return 1
    return max(1, math.floor(cpus or 1))


def fit_pools(cpus: float | None = None) -> int:
    """Size this process's BLAS and OpenMP pools to ``cpus`` (default: the task's CPUs) and
    set ``OMP_NUM_THREADS`` for the libraries loaded later; the size set. The pools are
    resized only when the size changes (the libraries loaded in between start at the size
    set, through the environment)."""
    global _applied
    n = max(1, math.floor(cpus)) if cpus else task_cpus()
    os.environ["OMP_NUM_THREADS"] = str(n)
    if n != _applied:
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=n)
        except Exception:  # noqa: BLE001 - without threadpoolctl the pools keep their size
            pass
        _applied = n
    return n


def sized(fn: Callable) -> Callable:
    """``fn`` calling :func:`fit_pools` first (for ``ray.remote``; same name, and a generator
    function stays one, for Ray's streaming returns)."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args: Any, **kwargs: Any) -> Any:
            fit_pools()
            yield from fn(*args, **kwargs)

        return stream

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        fit_pools()
        return fn(*args, **kwargs)

    return call


def remote(fn: Callable, **options: Any):
    """``ray.remote(fn).options(**options)`` whose tasks size their pools first."""
    import ray

    return ray.remote(sized(fn)).options(**options)


class limited:
    """Thread pools limited to ``cpus`` for a call, restored after it (a warm runner's call,
    in a process that serves many runs), torch's included."""

    def __init__(self, cpus: int) -> None:
        self.cpus = max(1, int(cpus))
        self.limits = None

    def __enter__(self):
        self.omp = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(self.cpus)  # libraries first loaded by the call
        try:
            from threadpoolctl import threadpool_limits

            self.limits = threadpool_limits(limits=self.cpus)
        except Exception:  # noqa: BLE001 - without threadpoolctl the pools keep their size
            self.limits = None
        torch = imported("torch")
        if torch is not None:
            torch.set_num_threads(self.cpus)
        return self

    def __exit__(self, *exc) -> None:
        if self.limits is not None:
            self.limits.restore_original_limits()
        if self.omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = self.omp
