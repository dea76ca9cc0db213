"""Where the CPU of a cold local cluster goes, process by process (issue 14, item 2).

A probe behind docs/clusters.md "Where a cold run goes", not a benchmark with a baseline:
CPU seconds, not wall seconds, because on the shared 2-core machines the wall clock measures
the neighbours (load averages of 10–30 while this was written) while the CPU a process burns
barely moves with them, and on 2 cores a cold start is CPU-bound: its wall time on a quiet
machine is about its CPU time over 2.

Each variant runs in a fresh process (private HOME/RAY_TMPDIR, token auth): ``import ray``,
start a local cluster, one trivial task, wait ``--settle`` seconds, then read the user+system
CPU of every descendant process from /proc (Linux only), and stop. Variants:

- ``plain``: ``ray.init(address="local", include_dashboard=False, log_to_driver=False)``, as
  distml started a run's cluster before issue 14;
- ``distml``: ``distml.runtime.cluster._start_local`` (the same, minus the two idle monitors).

``python -m benchmarks.b7_cold_breakdown [--reps N]``; writes
``benchmarks/results/b7_cold_breakdown.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import _harness as H

CHILD = r"""
import json, os, resource, sys, time
variant, settle = sys.argv[1], float(sys.argv[2])
t0 = time.perf_counter()
import ray
t1 = time.perf_counter()
if variant == "distml":
    from distml.runtime import cluster
    cluster._start_local(2, None)
else:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
t2 = time.perf_counter()
ray.get(ray.remote(lambda: 1).remote())
t3 = time.perf_counter()
time.sleep(settle)
tick, me, parent = os.sysconf("SC_CLK_TCK"), os.getpid(), {}
stats = {}
for e in os.scandir("/proc"):
    if e.name.isdigit():
        try:
            st = open(f"/proc/{e.name}/stat").read()
            cmd = open(f"/proc/{e.name}/cmdline").read().replace("\0", " ").strip()
        except OSError:
            continue
        f = st[st.rindex(")") + 2:].split()
        parent[int(e.name)] = int(f[1])
        stats[int(e.name)] = ((int(f[11]) + int(f[12])) / tick, cmd or st[st.index("(") + 1:st.rindex(")")])
def mine(p):
    while p in parent:
        if p == me:
            return True
        p = parent[p]
    return False
def name(cmd):
    for key in ("dashboard/dashboard.py", "DashboardAgent", "RuntimeEnvAgent", "log_monitor",
                "autoscaler", "gcs_server", "raylet", "ray::IDLE", "ray::"):
        if key in cmd:
            return {"dashboard/dashboard.py": "dashboard head", "autoscaler": "autoscaler monitor",
                    "log_monitor": "log monitor", "ray::IDLE": "idle worker",
                    "ray::": "worker"}.get(key, key)
    return cmd[:40]
procs = {}
for pid, (cpu, cmd) in stats.items():
    if pid != me and mine(pid):
        procs.setdefault(name(cmd), []).append(round(cpu, 3))
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"driver_cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
                  "processes": procs,
                  "import_ray_s": round(t1 - t0, 3), "start_s": round(t2 - t1, 3),
                  "first_task_s": round(t3 - t2, 3), "load": os.getloadavg()}))
if variant == "distml":
    cluster._shutdown(True)
else:
    ray.shutdown()
"""


def run_one(variant: str, settle: float, tmp: Path) -> dict:
    env = H.isolated_env(tmp / variant[:1], 1)
    out = subprocess.run(
        [H.PYTHON, "-c", CHILD, variant, str(settle)],
        env=env,
        cwd=H.ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise H.BenchmarkError(f"{variant}: {out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["total_cpu_s"] = round(
        res["driver_cpu_s"] + sum(sum(v) for v in res["processes"].values()), 3
    )
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.b7_cold_breakdown")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--settle", type=float, default=4.0, help="seconds before reading CPU")
    args = ap.parse_args(argv)
    samples: dict[str, list[dict]] = {"plain": [], "distml": []}
    with tempfile.TemporaryDirectory(prefix="b7c", dir="/tmp") as tmp:
        for r in range(args.reps):
            for variant in samples if r % 2 == 0 else reversed(list(samples)):
                res = run_one(variant, args.settle, Path(tmp))
                samples[variant].append(res)
                H.log(f"{variant}: {res['total_cpu_s']:.2f} s CPU, load {res['load'][0]:.1f}")
    summary = {
        v: {
            "total_cpu_s_median": statistics.median(s["total_cpu_s"] for s in runs),
            "driver_cpu_s_median": statistics.median(s["driver_cpu_s"] for s in runs),
            "process_cpu_s_median": {
                p: statistics.median(sum(s["processes"].get(p, [0.0])) for s in runs)
                for p in sorted({p for s in runs for p in s["processes"]})
            },
        }
        for v, runs in samples.items()
    }
    out = {
        "name": "b7_cold_breakdown",
        "reps": args.reps,
        "machine": H.machine(),
        "versions": H.versions(),
        "summary": summary,
        "samples": samples,
    }
    H.write_json_atomic(H.RESULTS / "b7_cold_breakdown.json", out)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
