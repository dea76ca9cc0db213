"""B5, the Dask columns: ``engine: dask`` against the plain dask-ml script a Dask user writes.

``python -m benchmarks b5_dask [--quick]`` runs only these columns, at ``DISTML_B5_GB`` GB
(default 1 here); the full ``python -m benchmarks b5`` adds them beside the native figures.
Same data as B5 (``synthetic:blobs?features=64&centers=12&seed=0``, parquet files of 200,000
rows), same chunks (``BATCH`` rows), same cores (the Ray cluster's 2 CPUs; Dask's threaded
scheduler with 2 workers).

Sides, each a fresh process timed by wall clock, A/B alternated after a warm-up:

* ``distml_dask``: ``distml run SPEC --json`` with ``engine: dask`` (pca: ``n_components: 8``;
  kmeans: ``n_clusters: 12, n_init: 3, max_passes: 1, tol: 0``), a local 2-CPU Ray cluster.
* ``plain_dask``: ``python benchmarks/b5_dask.py plain KIND DIR`` — no Ray:
  ``dd.read_parquet(DIR).to_dask_array(lengths=True)`` re-chunked to ``BATCH`` rows, then
  ``dask_ml.decomposition.IncrementalPCA(8, batch_size=BATCH, svd_solver="full").fit(X)`` (as
  the engine: dask-ml's ``auto`` would pick an unseeded randomised SVD for these batches) or
  ``Incremental(MiniBatchKMeans(12, batch_size=BATCH, n_init=3, random_state=0),
  shuffle_blocks=False).fit(X)`` under ``dask.config.set(scheduler="threads",
  num_workers=2)``; for k-means also the full-data inertia (as distml reports it).

Reported: time ratio ``distml_dask / plain_dask`` (target <= 1.25, in job and end to end), peak
memory of each side's process tree against B5's 1 GB cap, and equality (explained variance to
1e-6 relative; k-means inertia ratio).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import _harness as H
from benchmarks import b5_out_of_core as B5

TITLE = "B5 Dask columns: engine: dask on Ray vs a plain dask-ml script (threaded scheduler)"
PACKAGES = B5.PACKAGES + ("dask-ml",)
TARGET = 1.25  # BENCHMARKS.md: the dask engine within 1.25x the plain dask-ml script's time
WORKERS = 2  # the cores of the local Ray cluster
SELF = Path(__file__).resolve()


def _spec(kind: str, data: Path) -> dict:
    model = (
        {"n_components": 8, "batch_size": B5.BATCH}
        if kind == "pca"
        else {
            "n_clusters": 12,
            "batch_size": B5.BATCH,
            "n_init": 3,
            "max_passes": 1,
            "tol": 0.0,
            "seed": 0,
        }
    )
    return {
        "name": f"b5-dask-{kind}",
        "kind": kind,
        "engine": "dask",
        "data": {"source": str(data), "exclude": ["target"]},
        "model": model,
    }


def _distml_side(kind: str, data: Path, rows: int, opts: H.Options, env: dict):
    import yaml

    spec = opts.workdir / f"b5-dask-{kind}.yaml"
    spec.write_text(yaml.safe_dump(_spec(kind, data)))
    n = [0]

    def call() -> dict:
        n[0] += 1
        out = opts.workdir / "distml-dask-out" / f"{kind}-{n[0]}"
        r = B5.run_sampled(
            [H.bin_path("distml"), "run", str(spec), "--json", "--output", str(out)], env
        )
        res = H.last_json(r["stdout"])
        if res.get("status") != "succeeded":
            raise H.BenchmarkError(f"distml run did not succeed: {r['stdout'][-1000:]}")
        man = json.loads(Path(res["run_dir"], "manifest.json").read_text())
        job_s = man["timings"]["job_s"]
        return {
            "wall_s": r["wall_s"],
            "in_job_s": job_s,
            "metrics": res["metrics"],
            "memory": r["memory"],
            "task_memory": man.get("memory"),
            "execution": {k: man["execution"].get(k) for k in ("chunks", "tasks", "timings_s")},
            "rows_per_s_in_job": rows / job_s,
            "rows_per_s_end_to_end": rows / r["wall_s"],
        }

    return call


def _size(opts: H.Options) -> dict:
    """The largest B5 size (``DISTML_B5_GB``; 0.01 with ``--quick``), written once, untimed."""
    from distml.runtime.datasets import generate_dataset

    gb = 0.01 if opts.quick else float(os.environ.get("DISTML_B5_GB", "1"))
    rows = max(20_000, int(gb * 2**30 / (len(B5.FEATURES) * 8)))
    files = max(2, -(-rows // B5.ROWS_PER_FILE))
    d = opts.workdir / f"data-{gb}"
    info = generate_dataset(B5.SOURCE, d, rows=rows, files=files)
    return {"gb": gb, "rows": rows, "files": files, "parquet_bytes": info["bytes"], "dir": d}


def _plain_side(kind: str, data: Path, rows: int, env: dict):
    def call() -> dict:
        r = B5.run_sampled([H.PYTHON, str(SELF), "plain", kind, str(data)], env)
        res = H.last_json(r["stdout"])
        return {
            "wall_s": r["wall_s"],
            "in_job_s": res["fit_s"],
            "result": res,
            "memory": r["memory"],
            "rows_per_s_in_job": rows / res["fit_s"],
            "rows_per_s_end_to_end": rows / r["wall_s"],
        }

    return call


def columns(kind: str, size: dict, opts: H.Options, env: dict) -> dict[str, Any]:
    """The two Dask columns of B5 for ``kind`` at ``size`` (a B5 size record)."""
    H.log(f"[b5-dask] {kind} at {size['gb']} GB")
    distml_side = _distml_side(kind, size["dir"], size["rows"], opts, env)
    runs = H.alternate(
        {
            "distml_dask": distml_side,
            "plain_dask": _plain_side(kind, size["dir"], size["rows"], env),
        },
        opts.reps,
        opts.warmup,
        H.log,
    )
    out: dict[str, Any] = {}
    for side, samples in runs.items():
        out[side] = {
            "wall_s": H.stats([s["wall_s"] for s in samples]),
            "in_job_s": H.stats([s["in_job_s"] for s in samples]),
            "rows_per_s_in_job": H.median_of(samples, "rows_per_s_in_job"),
            "rows_per_s_end_to_end": H.median_of(samples, "rows_per_s_end_to_end"),
            "memory": {k: max(s["memory"][k] for s in samples) for k in samples[0]["memory"]},
        }
    d, p = runs["distml_dask"][-1], runs["plain_dask"][-1]
    out["distml_dask"]["task_memory"] = d["task_memory"]
    out["distml_dask"]["execution"] = d["execution"]
    out["time_ratio_in_job"] = H.ratio(
        out["distml_dask"]["in_job_s"]["median"], out["plain_dask"]["in_job_s"]["median"]
    )
    out["time_ratio_end_to_end"] = H.ratio(
        out["distml_dask"]["wall_s"]["median"], out["plain_dask"]["wall_s"]["median"]
    )
    out["meets_target_in_job"] = (out["time_ratio_in_job"] or 1e9) <= TARGET
    out["under_cap"] = out["distml_dask"]["memory"]["max_process_rss_mb"] <= B5.CAP_MB
    if kind == "pca":
        a, b = d["metrics"]["explained_variance"], p["result"]["explained_variance"]
        rel = max(abs(x - y) / abs(y) for x, y in zip(a, b))
        out["equality"] = {"ok": rel <= B5.EV_TOL, "max_rel_diff_explained_variance": rel}
    else:
        ratio = d["metrics"]["inertia"] / p["result"]["inertia"]
        out["equality"] = {"ok": abs(ratio - 1) <= B5.INERTIA_TOL, "inertia_ratio": ratio}
    return out


def run(opts: H.Options) -> dict[str, Any]:
    env = H.isolated_env(opts.workdir / "home", opts.threads)
    size = _size(opts)
    body = {kind: columns(kind, size, opts, env) for kind in ("pca", "kmeans")}
    return {
        "workload": {
            "source": B5.SOURCE,
            "rows": size["rows"],
            "files": size["files"],
            "size_gb": size["gb"],
            "batch_size": B5.BATCH,
            "dask_workers": WORKERS,
        },
        "columns": body,
        "summary": {
            kind: {
                "time_ratio_in_job": body[kind]["time_ratio_in_job"],
                "time_ratio_end_to_end": body[kind]["time_ratio_end_to_end"],
                "meets_target_in_job": body[kind]["meets_target_in_job"],
                "under_cap": body[kind]["under_cap"],
                "equal": body[kind]["equality"]["ok"],
            }
            for kind in body
        },
    }


# ------------------------------------------------------------------ subprocess entry point


def plain_main(kind: str, data: str) -> dict:
    """The plain dask-ml script (no Ray): Dask's threaded scheduler, ``WORKERS`` threads."""
    import resource

    import dask
    import dask.dataframe as dd
    import numpy as np

    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=WORKERS):
        frame = dd.read_parquet(data, columns=B5.FEATURES, split_row_groups=True)
        X = frame.astype("float64").to_dask_array(lengths=True).rechunk({0: B5.BATCH, 1: -1})
        if kind == "pca":
            from dask_ml.decomposition import IncrementalPCA

            model = IncrementalPCA(n_components=8, batch_size=B5.BATCH, svd_solver="full")
            model = model.fit(X)
            out = {"explained_variance": np.asarray(model.explained_variance_).tolist()}
        else:
            from dask_ml.wrappers import Incremental
            from sklearn.cluster import MiniBatchKMeans

            est = MiniBatchKMeans(n_clusters=12, batch_size=B5.BATCH, n_init=3, random_state=0)
            inc = Incremental(est, shuffle_blocks=False).fit(X)
            centers = inc.estimator_.cluster_centers_

            def inertia(block):
                d = (block * block).sum(1)[:, None] - 2 * block @ centers.T
                d += (centers * centers).sum(1)
                return np.array([np.maximum(d.min(axis=1), 0).sum()])

            total = X.map_blocks(inertia, drop_axis=1, chunks=(1,), dtype=float).sum()
            out = {"inertia": float(total.compute())}
    fit_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"kind": kind, "fit_s": fit_s, "peak_rss_mb": peak / 2**20, **out}


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "plain":
        print(json.dumps(plain_main(sys.argv[2], sys.argv[3])))
    else:
        raise SystemExit("run: python -m benchmarks b5_dask [--quick]  (DISTML_B5_GB, default 1)")
