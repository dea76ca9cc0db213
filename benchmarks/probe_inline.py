"""What ``distml run jobs/quickstart.yaml`` would cost without starting a Ray cluster.

A probe behind the B7 findings, not a benchmark: it runs the real ``distml`` CLI in a process
where ``distml.runtime.cluster.cluster`` yields an "inline" cluster (no ``ray.init``) and
``ray.remote(f).options(...).remote(*a)`` calls ``f(*a)`` in the driver, so the job's own code
path (validate, read, split, fit, evaluate, write the run directory) is unchanged and only the
cluster is gone. ``ray`` is still imported (to patch it), so the estimate is conservative.

Three sides alternate (distml as is, distml inline, the plain B7 script), warm-up + ``--reps``;
results (medians, ratios to the plain script, metrics equality) go to
``benchmarks/results/probe_inline.json``. Nothing in distml is modified on disk.

    python -m benchmarks.probe_inline [--reps 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks import _harness as H
from benchmarks.b7_quickstart import EQUAL_KEYS, PLAIN, SPEC, TOL


def _child(argv: list[str]) -> int:
    """Run the distml CLI with the cluster replaced by in-process execution."""
    import ray

    import distml.runtime.cluster as C

    @contextlib.contextmanager
    def inline_cluster(address=None, **_kw):
        yield C.ClusterInfo("inline", None, None, {"CPU": float(os.cpu_count() or 1)}, 0.0)

    class _Remote:
        def __init__(self, fn):
            self.fn = fn

        def options(self, **_kw):
            return self

        def remote(self, *args, **kwargs):
            return self.fn(*args, **kwargs)

    C.cluster = inline_cluster
    ray.remote = _Remote
    ray.get = lambda refs, **_kw: refs
    from distml.cli import main

    return main(argv)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.probe_inline")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    if args.child is not None:
        return _child(args.child)

    work = Path(tempfile.mkdtemp(prefix="dml-inl-"))
    env = H.isolated_env(work / "home", 1)
    n = [0]

    def distml_side(inline: bool):
        def call():
            n[0] += 1
            out = work / f"out-{n[0]}"
            run = ["run", str(SPEC), "--json", "--output", str(out)]
            cmd = (
                [H.PYTHON, "-m", "benchmarks.probe_inline", "--child", *run]
                if inline
                else [H.bin_path("distml"), *run]
            )
            t = H.run_timed(cmd, env)
            res = H.last_json(t.stdout)
            man = json.loads(Path(res["run_dir"], "manifest.json").read_text())
            return {"wall_s": t.wall_s, "metrics": res["metrics"], "stages": man["timings"]}

        return call

    def plain():
        n[0] += 1
        t = H.run_timed([H.PYTHON, str(PLAIN), "--out", str(work / f"plain-{n[0]}")], env)
        return {"wall_s": t.wall_s, "metrics": H.last_json(t.stdout)["metrics"]}

    try:
        runs = H.alternate(
            {"distml": distml_side(False), "distml_inline": distml_side(True), "baseline": plain},
            args.reps,
            1,
            H.log,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = H.median_of(runs["baseline"], "wall_s")
    res = {}
    for side, samples in runs.items():
        res[side] = {
            "wall_s": H.stats([s["wall_s"] for s in samples]),
            "ratio_vs_baseline": H.ratio(H.median_of(samples, "wall_s"), base),
        }
        if "stages" in samples[0]:
            res[side]["stages_median_s"] = {
                k: H.median_of(samples, "stages", k) for k in samples[0]["stages"]
            }
        res[side]["equality_vs_baseline"] = H.compare(
            samples[-1]["metrics"], runs["baseline"][-1]["metrics"], EQUAL_KEYS, TOL
        )["ok"]
    out = {
        "name": "probe_inline",
        "reps": args.reps,
        "machine": H.machine(),
        "versions": H.versions(),
        "sides": res,
    }
    H.write_json_atomic(H.RESULTS / "probe_inline.json", out)
    print(
        json.dumps(
            {
                k: {
                    "median": v["wall_s"]["median"],
                    "ratio": v["ratio_vs_baseline"],
                    "equal": v["equality_vs_baseline"],
                }
                for k, v in res.items()
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
