"""``distml.runtime.threads``: pools sized to a task's CPUs (in a fresh process: the sizes set
are the process's own)."""

from __future__ import annotations

import inspect

from distml.runtime import threads
from tests.fresh import json_of, unpinned_env


def _run(source: str) -> dict:
    return json_of(source, timeout=120, env=unpinned_env())


def test_fit_pools_sizes_the_loaded_pools_and_the_environment():
    got = _run(
        """
import json, os
import numpy
from threadpoolctl import threadpool_info
from distml.runtime import threads

def blas():
    return sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})

out = {"outside_ray": threads.task_cpus()}
out["two"] = [threads.fit_pools(2), blas(), os.environ["OMP_NUM_THREADS"]]
out["one"] = [threads.fit_pools(1), blas(), os.environ["OMP_NUM_THREADS"]]
out["fraction"] = [threads.fit_pools(0.5), blas()]
out["default"] = [threads.fit_pools(), blas()]
print(json.dumps(out))
"""
    )
    assert got["outside_ray"] == 1
    assert got["two"] == [2, [2], "2"]
    assert got["one"] == [1, [1], "1"]
    assert got["fraction"] == [1, [1]]
    assert got["default"] == [1, [1]]


def test_the_preload_guard_starts_the_pools_at_one_thread_unless_the_environment_says():
    source = """
import json, os, sys
import distml.runtime.preload
import numpy
from threadpoolctl import threadpool_info
print(json.dumps({"blas": sorted({p["num_threads"] for p in threadpool_info()
                                  if p["user_api"] == "blas"}),
                  "omp": os.environ.get("OMP_NUM_THREADS")}))
"""
    assert _run(source) == {"blas": [1], "omp": "1"}
    chosen = _run("import os; os.environ['OMP_NUM_THREADS'] = '2'\n" + source)
    assert chosen == {"blas": [2], "omp": "2"}


def _square(x):
    return x * x


def _squares(n):
    yield from (i * i for i in range(n))


def test_sized_sizes_first_keeps_the_name_and_a_generator_function_stays_one(monkeypatch):
    calls = []
    monkeypatch.setattr(threads, "fit_pools", lambda: calls.append(1))  # (not this process's)
    f, g = threads.sized(_square), threads.sized(_squares)
    assert f(3) == 9 and f.__name__ == "_square" and calls == [1]
    assert inspect.isgeneratorfunction(g) and not inspect.isgeneratorfunction(f)
    assert list(g(4)) == [0, 1, 4, 9] and g.__name__ == "_squares" and calls == [1, 1]
    assert threads.preload_modules(("numpy", threads.PRELOAD_FIRST)) == [
        threads.PRELOAD_FIRST,
        "numpy",
    ]
