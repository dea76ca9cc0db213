"""Where a local Ray cluster's fixed cost goes, and what ``ray.init`` options change it.

Not a benchmark of distml itself: a probe behind the B7 findings. Each variant runs in a fresh
process (private HOME/RAY_TMPDIR, token auth, threads pinned) that times ``import ray``,
``ray.init(...)``, the first trivial task, a second one, a task importing what distml's xgboost
worker imports, and ``ray.shutdown()``; variants alternate round by round and medians are
reported. ``python -m benchmarks.probe_ray_startup [--reps N] [--variants a,b]``; writes
``benchmarks/results/probe_ray_startup.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks import _harness as H

# What distml.runtime.cluster._start_local passes today (num_cpus = os.cpu_count()).
BASE = {
    "num_cpus": 2,
    "include_dashboard": False,
    "log_to_driver": False,
    "configure_logging": False,
}
VARIANTS: dict[str, dict] = {
    "distml_now": {"init": BASE},
    "no_prestart": {
        "init": {
            **BASE,
            "_system_config": {
                "enable_worker_prestart": False,
                "prestart_worker_first_driver": False,
            },
        }
    },
    "small_object_store": {"init": {**BASE, "object_store_memory": 200 * 2**20}},
    "usage_stats_on": {"init": BASE, "env": {"RAY_USAGE_STATS_ENABLED": "1"}},
    "num_cpus_1": {"init": {**BASE, "num_cpus": 1}},
    "fast_kill": {"init": BASE, "shutdown": "kill"},
    "no_shutdown_exit": {"init": BASE, "shutdown": "exit"},
    "no_prestart_fast_kill": {
        "init": {
            **BASE,
            "_system_config": {
                "enable_worker_prestart": False,
                "prestart_worker_first_driver": False,
            },
        },
        "shutdown": "kill",
    },
}

CHILD = r"""
import json, os, sys, time
T0 = time.perf_counter()
cfg = json.loads(sys.argv[1])
out = {}
import ray
out["import_ray_s"] = time.perf_counter() - T0
t = time.perf_counter(); ray.init(**cfg["init"]); out["init_s"] = time.perf_counter() - t
def _descendants():
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
                cmd = open(f"/proc/{d}/cmdline").read().replace("\0", " ").strip()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append((int(d), cmd))
    out, todo = [], [os.getpid()]
    while todo:
        for pid, cmd in kids.get(todo.pop(), []):
            out.append(cmd.split(" ")[0].rsplit("/", 1)[-1] + " " + " ".join(
                a for a in cmd.split(" ")[1:3] if not a.startswith("--")))
            todo.append(pid)
    return sorted(out)
@ray.remote(num_cpus=1)
def noop():
    return os.getpid()
@ray.remote(num_cpus=1)
def heavy():
    import distml.jobs.xgboost, sklearn.datasets, xgboost  # what the quickstart worker imports
    return os.getpid()
t = time.perf_counter(); ray.get(noop.remote()); out["first_task_s"] = time.perf_counter() - t
t = time.perf_counter(); ray.get(noop.remote()); out["second_task_s"] = time.perf_counter() - t
t = time.perf_counter(); ray.get(heavy.remote()); out["worker_imports_task_s"] = time.perf_counter() - t
out["children"] = _descendants()  # after the tasks: what a local cluster runs
t = time.perf_counter()
mode = cfg.get("shutdown", "normal")
if mode == "kill":
    # Same as ray.shutdown() but SIGKILL instead of SIGTERM + up to 1 s grace per process.
    # Private Ray API: no public way to ask for it (see distml.runtime.cluster._shutdown, which
    # does the same); tests/unit/test_ray_private_apis.py fails loudly if Ray changes it.
    import ray._private.worker as w
    orig = w._global_node.kill_all_processes
    w._global_node.kill_all_processes = lambda **kw: orig(**{**kw, "allow_graceful": False})
    ray.shutdown()
elif mode == "normal":
    ray.shutdown()
out["shutdown_s"] = time.perf_counter() - t
out["in_process_s"] = time.perf_counter() - T0
print(json.dumps(out), flush=True)
if mode == "exit":
    os._exit(0)
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.probe_ray_startup")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    work = Path(tempfile.mkdtemp(prefix="dml-prb-"))
    try:
        samples: dict[str, list[dict]] = {n: [] for n in names}
        for r in range(args.reps + 1):  # round 0 is the warm-up
            order = names if r % 2 == 0 else names[::-1]
            for n in order:
                v = VARIANTS[n]
                env = H.isolated_env(work / "home", 1)
                env.update(v.get("env", {}))
                cfg = {"init": v["init"], "shutdown": v.get("shutdown", "normal")}
                t = H.run_timed([H.PYTHON, "-c", CHILD, json.dumps(cfg)], env, timeout=300)
                s = {**H.last_json(t.stdout), "wall_s": t.wall_s}
                H.log(
                    f"  {'warm-up' if r == 0 else f'rep {r}'} {n}: wall {t.wall_s:.2f}s "
                    f"init {s['init_s']:.2f}s shutdown {s['shutdown_s']:.2f}s"
                )
                if r:
                    samples[n].append(s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    keys = (
        "wall_s",
        "import_ray_s",
        "init_s",
        "first_task_s",
        "second_task_s",
        "worker_imports_task_s",
        "shutdown_s",
        "in_process_s",
    )
    res = {
        n: {
            "config": {**VARIANTS[n], "init": {k: v for k, v in VARIANTS[n]["init"].items()}},
            "median_s": {k: H.median_of(s, k) for k in keys},
            "children": s[-1].get("children"),
            "samples": s,
        }
        for n, s in samples.items()
    }
    base = res.get("distml_now", {}).get("median_s", {}).get("wall_s")
    for n in res:
        res[n]["wall_ratio_vs_distml_now"] = H.ratio(res[n]["median_s"]["wall_s"], base)
    out = {
        "name": "probe_ray_startup",
        "reps": args.reps,
        "machine": H.machine(),
        "versions": H.versions(("ray",)),
        "variants": res,
    }
    path = H.RESULTS / "probe_ray_startup.json"
    H.write_json_atomic(path, out)
    for n, r in res.items():
        print(n, json.dumps(r["median_s"]), "ratio", r["wall_ratio_vs_distml_now"])
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
