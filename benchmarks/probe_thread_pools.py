"""A run in the environment users have: no thread variables set.

Every benchmark pins the BLAS/OpenMP pools of both sides to ``--threads`` (``H.pinned_env``),
which hid a fault users met: workers that import numpy as they start (the preload of a run's
own cluster) started OpenBLAS with a thread per core, so two 1-CPU tasks ran 4 threads on 2
cores and an out-of-core k-means took 1.7–1.9× as long (``distml.runtime.threads`` sizes the
pools to each task's CPUs since). This probe runs the same ``distml run`` of B5's k-means and
PCA with the thread variables removed and with them pinned to 1, alternated; the two must take
the same time (``default_over_pinned`` ≤ 1.1).

``python -m benchmarks.probe_thread_pools [--reps N] [--gb G]``; writes
``benchmarks/results/probe_thread_pools.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _harness as H

TARGET = 1.1
FEATURES, CENTERS, ROWS_PER_FILE, BATCH = 64, 12, 200_000, 8192
SPECS = {
    "kmeans": {
        "n_clusters": CENTERS,
        "batch_size": BATCH,
        "n_init": 3,
        "max_passes": 1,
        "seed": 0,
        "keep_decoded": False,
    },
    "pca": {"n_components": 8, "batch_size": BATCH},
}


def _run(spec: Path, env: dict, out: Path) -> dict:
    t = H.run_timed([H.bin_path("distml"), "run", str(spec), "--output", str(out)], env)
    manifest = json.loads(next(out.glob("*/*/manifest.json")).read_text())
    if manifest["status"] != "succeeded":
        raise H.BenchmarkError(f"{spec.name}: {manifest['status']}")
    info = json.loads(next(out.glob("*/*/metrics.json")).read_text())
    return {
        "wall_s": t.wall_s,
        "job_s": manifest["timings"]["job_s"],
        "passes_s": manifest.get("execution", {}).get("timings_s", {}),
        "metrics": json.dumps(info, sort_keys=True),  # (the fitted figures: no timings)
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.probe_thread_pools")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--gb", type=float, default=0.5)
    args = ap.parse_args(argv)
    import yaml

    from distml.runtime.datasets import generate_dataset

    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dtp") as tmp:
        work = Path(tmp)
        pinned = H.isolated_env(work / "h", 1)
        default = {k: v for k, v in pinned.items() if k not in H.THREAD_VARS}
        rows = int(args.gb * 2**30 / (FEATURES * 8))
        data = work / "data"
        generate_dataset(
            f"synthetic:blobs?features={FEATURES}&centers={CENTERS}&seed=0",
            data,
            rows=rows,
            files=max(2, -(-rows // ROWS_PER_FILE)),
        )
        res = {}
        n = [0]
        for kind, model in SPECS.items():
            spec = work / f"{kind}.yaml"
            spec.write_text(
                yaml.safe_dump(
                    {
                        "name": f"tp-{kind}",
                        "kind": kind,
                        "data": {"source": str(data), "exclude": ["target"]},
                        "model": model,
                    }
                )
            )

            def side(env: dict, spec: Path = spec) -> dict:
                n[0] += 1
                return _run(spec, env, work / "out" / str(n[0]))

            got = H.alternate(
                {"default_env": lambda: side(default), "pinned_env": lambda: side(pinned)},
                args.reps,
                1,
                H.log,
            )
            job = {s: [x["job_s"] for x in v] for s, v in got.items()}
            ratio = statistics.median(job["default_env"]) / statistics.median(job["pinned_env"])
            same = {x["metrics"] for v in got.values() for x in v}
            res[kind] = {
                "job_s": {s: H.stats(v) for s, v in job.items()},
                "wall_s": {s: H.stats([x["wall_s"] for x in v]) for s, v in got.items()},
                "passes_s": {s: v[-1]["passes_s"] for s, v in got.items()},
                "default_over_pinned": round(ratio, 4),
                "meets_target": ratio <= TARGET,
                "equal": len(same) == 1,
            }
            H.log(f"{kind}: default env / pinned, job_s medians: {ratio:.3f}")
    out = {
        "name": "probe_thread_pools",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "reps": args.reps,
        "gb": args.gb,
        "rows": rows,
        "target_default_over_pinned": TARGET,
        "machine": {**H.machine(), "loadavg": list(load), "loadavg_after": list(os.getloadavg())},
        "versions": H.versions(),
        "results": res,
        "meets_target": all(r["meets_target"] for r in res.values()),
        "equal": all(r["equal"] for r in res.values()),
    }
    H.write_json_atomic(H.RESULTS / "probe_thread_pools.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
