"""A run's own cluster preloads its kind's worker modules (``Job.worker_modules`` → Ray's
``preload_python_modules``): with a real single-node Ray started the way ``distml run`` starts
one, a task finds the modules imported that nothing in it imports; without the preload it does
not (the control, so a Ray that ignores the setting fails here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.allow_local_ray, pytest.mark.cluster]

PROBE = """
import json, sys
import ray
from distml.runtime.cluster import cluster

def probe():
    import sys
    return {m: m in sys.modules for m in ("colorsys", "distml.jobs.kmeans")}

preload = tuple(sys.argv[1:])
with cluster(num_cpus=1, preload=preload) as info:
    seen = ray.get(ray.remote(probe).remote())
print(json.dumps({"mode": info.mode, "seen": seen}))
"""


@pytest.mark.parametrize(
    "preload,want",
    [(("colorsys", "distml.jobs.kmeans"), True), ((), False)],
    ids=["preloaded", "control"],
)
def test_workers_of_a_runs_own_cluster_import_the_preload(preload, want):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *preload], capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["mode"] == "local"
    assert got["seen"] == {"colorsys": want, "distml.jobs.kmeans": want}
