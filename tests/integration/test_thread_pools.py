"""A task's BLAS and OpenMP pools have as many threads as the task has CPUs, also in workers
that imported numpy as they started (``preload_python_modules``, as a run's own cluster and
the warm cluster do). Ray sizes pools through ``OMP_NUM_THREADS``, which it sets only when a
task runs: numpy preloaded before that starts OpenBLAS with a thread per core, and two 1-CPU
tasks on 2 cores then ran 4 threads (an out-of-core k-means took 2.4× as long per pass).

Real single-node Ray, started the way ``distml run`` starts one; the control starts it with
Ray's own preload and no distml guard, and shows the oversized pool the guard prevents."""

from __future__ import annotations

import os

import pytest

from tests.fresh import json_of, unpinned_env

pytestmark = [pytest.mark.allow_local_ray, pytest.mark.cluster]


def _probe(source: str) -> dict:
    return json_of(source, env=unpinned_env())


POOLS = """
def pools():
    import os
    import numpy  # noqa: F401 - (preloaded: already imported)
    from threadpoolctl import threadpool_info

    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    return {"pid": os.getpid(), "blas": blas, "omp_env": os.environ.get("OMP_NUM_THREADS")}
"""

GUARDED = (
    POOLS
    + """
import json
import ray
from distml.runtime import threads
from distml.runtime.cluster import cluster

with cluster(num_cpus=2, preload=("numpy",)) as info:
    plain = ray.get(ray.remote(pools).options(num_cpus=1).remote())
    one = ray.get(threads.remote(pools, num_cpus=1).remote())
    two = ray.get(threads.remote(pools, num_cpus=2).remote())
    again = ray.get(threads.remote(pools, num_cpus=1).remote())
    preloaded = ray.get(ray.remote(lambda: "numpy" in __import__("sys").modules).remote())
print(json.dumps({"mode": info.mode, "plain": plain, "one": one, "two": two, "again": again,
                  "preloaded": preloaded}))
"""
)

CONTROL = (
    POOLS
    + """
import json
import ray

ray.init(num_cpus=2, include_dashboard=False, _system_config={"preload_python_modules": ["numpy"]})
plain = ray.get(ray.remote(pools).options(num_cpus=1).remote())
ray.shutdown()
print(json.dumps({"plain": plain}))
"""
)


def test_a_tasks_pools_match_its_cpus_in_preloaded_workers():
    got = _probe(GUARDED)
    assert got["mode"] == "local" and got["preloaded"] is True
    # a task distml does not wrap: the preload's pools started at one thread (the guard)
    assert got["plain"]["blas"] and set(got["plain"]["blas"]) == {1}
    # distml's tasks: their CPUs, up and down again, and the same for libraries loaded later
    assert set(got["one"]["blas"]) == {1} and got["one"]["omp_env"] == "1"
    assert set(got["two"]["blas"]) == {2} and got["two"]["omp_env"] == "2"
    assert set(got["again"]["blas"]) == {1} and got["again"]["omp_env"] == "1"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: the pools cannot be oversized")
def test_control_rays_own_preload_sizes_the_pools_by_the_cores():
    """Without distml's guard, a 1-CPU task in a preloaded worker has a BLAS thread per core
    (what the test above would see without the guard)."""
    got = _probe(CONTROL)
    assert got["plain"]["omp_env"] == "1"  # Ray set it for the task, too late for numpy
    assert max(got["plain"]["blas"]) >= 2
