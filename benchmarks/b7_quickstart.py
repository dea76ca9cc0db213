"""B7 — small job end to end: ``distml run jobs/quickstart.yaml`` vs a plain script.

Both sides are separate processes timed by wall clock, interpreter start and imports included:

* distml: ``distml run jobs/quickstart.yaml --json --output TMP`` (starts and stops a local
  single-node Ray cluster, fits in one Ray task, writes the run directory). Its
  ``manifest.json`` stage timings are kept so the JSON shows where the fixed cost goes.
* distml_warm: the same command on a warm local cluster (``distml cluster start`` once before
  the timed runs, with its own state folder; stopped after): the run connects instead of
  starting Ray, and its task lands on a worker that has distml and xgboost imported.
* baseline: ``python benchmarks/b7_plain_fit.py`` — load, the same stratified split, the same
  ``xgboost.train`` (params, rounds, early stopping, ``nthread``, ``seed``), predict, metrics,
  save the model.

Two sizes separate fixed from marginal cost: ``small`` is the quickstart itself (breast_cancer,
569 rows); ``large`` is the same spec on a 200k × 20 synthetic classification parquet file
(written once before timing, read by both sides). ``--quick`` runs ``small`` only, once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import _harness as H

TITLE = "B7 small job end to end: distml run jobs/quickstart.yaml vs a plain script"
PACKAGES = H.DEFAULT_PACKAGES
SPEC = H.ROOT / "jobs" / "quickstart.yaml"
PLAIN = Path(__file__).resolve().parent / "b7_plain_fit.py"
LARGE_SOURCE = "synthetic:classification?rows=200000&features=20&seed=1"
TARGET_RATIO = 3.0  # BENCHMARKS.md: distml ≤ 3× the plain script
TOL = 1e-9
EQUAL_KEYS = [
    "valid.roc_auc",
    "valid.logloss",
    "test.roc_auc",
    "train.roc_auc",
    "best_iteration",
    "num_boosted_rounds",
]
STAGES = ("validate_s", "cluster_start_s", "job_s", "cluster_stop_s", "write_s", "total_s")
PLAIN_STAGES = ("import_s", "read_split_s", "fit_s", "eval_save_s", "in_process_s")


def _sizes(opts: H.Options) -> list[dict[str, Any]]:
    sizes = [
        {
            "size": "small",
            "workload": "builtin:breast_cancer (569 rows × 30), jobs/quickstart.yaml unchanged",
            "source": None,
            "rows": 569,
        }
    ]
    if not opts.quick:
        from distml.runtime.datasets import generate_dataset

        data = opts.workdir / "large"
        gen = generate_dataset(LARGE_SOURCE, data)
        sizes.append(
            {
                "size": "large",
                "workload": f"{LARGE_SOURCE} written to one parquet file; "
                "jobs/quickstart.yaml with data.source set to it",
                "source": gen["files"][0],
                "rows": gen["rows"],
                "bytes": gen["bytes"],
            }
        )
    return sizes


def _distml_side(size: dict, opts: H.Options, env: dict[str, str], counter: list[int]):
    def call() -> dict:
        counter[0] += 1
        out = opts.workdir / "distml-out" / f"{size['size']}-{counter[0]}"
        cmd = [H.bin_path("distml"), "run", str(SPEC), "--json", "--output", str(out)]
        if size["source"]:
            cmd += ["--set", f"data.source={size['source']}", "--set", "name=b7-large"]
        if opts.threads != 1:
            cmd += ["--set", f"resources.cpus_per_worker={opts.threads}"]
        t = H.run_timed(cmd, env)
        res = H.last_json(t.stdout)
        if res.get("status") != "succeeded":
            raise H.BenchmarkError(f"distml run did not succeed: {t.stdout[-1000:]}")
        man = json.loads(Path(res["run_dir"], "manifest.json").read_text())
        timings = man.get("timings", {})
        return {
            "wall_s": t.wall_s,
            "metrics": res["metrics"],
            "stages": timings,
            "worker": man.get("worker_timings_s", {}),
            "outside_run_s": t.wall_s - timings.get("total_s", 0.0),
            "execution": man.get("execution", {}).get("path"),
            "warm_runner": man.get("execution", {}).get("warm_runner"),
            "cluster_mode": man.get("cluster", {}).get("mode"),
            "cluster_resources": man.get("cluster", {}).get("resources"),
        }

    return call


def _plain_side(size: dict, opts: H.Options, env: dict[str, str], counter: list[int]):
    def call() -> dict:
        counter[0] += 1
        out = opts.workdir / "plain-out" / f"{size['size']}-{counter[0]}"
        cmd = [H.PYTHON, str(PLAIN), "--out", str(out), "--nthread", str(opts.threads)]
        if size["source"]:
            cmd += ["--source", size["source"]]
        t = H.run_timed(cmd, env)
        res = H.last_json(t.stdout)
        if not (out / "model.ubj").exists():
            raise H.BenchmarkError("the plain script saved no model")
        return {"wall_s": t.wall_s, "metrics": res["metrics"], "stages": res["timings"]}

    return call


def _deterministic(samples: list[dict]) -> bool:
    vals = {json.dumps(s["metrics"].get("valid"), sort_keys=True) for s in samples}
    return len(vals) == 1


def _one_size(
    size: dict, opts: H.Options, env: dict[str, str], warm_env: dict[str, str] | None = None
) -> dict[str, Any]:
    H.log(f"[b7] size {size['size']}: {size['workload']}")
    n_d, n_b, n_w = [0], [0], [0]
    sides = {
        "distml": _distml_side(size, opts, env, n_d),
        "baseline": _plain_side(size, opts, env, n_b),
    }
    if warm_env is not None:
        sides["distml_warm"] = _distml_side(size, opts, warm_env, n_w)
    runs = H.alternate(sides, opts.reps, opts.warmup, H.log)
    d, b = runs["distml"], runs["baseline"]
    d_wall = H.stats([s["wall_s"] for s in d])
    b_wall = H.stats([s["wall_s"] for s in b])
    paired = [x["wall_s"] - y["wall_s"] for x, y in zip(d, b)]
    eq = H.compare(d[-1]["metrics"], b[-1]["metrics"], EQUAL_KEYS, TOL)
    eq["deterministic"] = {"distml": _deterministic(d), "baseline": _deterministic(b)}
    d_stages = {k: H.median_of(d, "stages", k) for k in STAGES}
    d_worker = {k: H.median_of(d, "worker", k) for k in ("read", "fit")}
    b_stages = {k: H.median_of(b, "stages", k) for k in PLAIN_STAGES}
    warm: dict[str, Any] = {}
    if "distml_warm" in runs:
        w = runs["distml_warm"]
        w_wall = H.stats([s["wall_s"] for s in w])
        warm = {
            "distml_warm": {
                "wall_s": w_wall,
                "stages_median_s": {k: H.median_of(w, "stages", k) for k in STAGES},
                "worker_median_s": {k: H.median_of(w, "worker", k) for k in ("read", "fit")},
                "outside_run_median_s": H.median_of(w, "outside_run_s"),
                "cluster_mode": w[-1]["cluster_mode"],
                "warm_runner": [s.get("warm_runner") for s in w],  # each timed run's
            },
            "ratio_warm": H.ratio(w_wall["median"], b_wall["median"]),
            "equality_warm": H.compare(w[-1]["metrics"], b[-1]["metrics"], EQUAL_KEYS, TOL),
        }
    return {
        **warm,
        "workload": size["workload"],
        "rows": size["rows"],
        **({"bytes": size["bytes"]} if "bytes" in size else {}),
        "distml": {
            "wall_s": d_wall,
            "stages_median_s": d_stages,
            "stages_s": [s["stages"] for s in d],
            "worker_median_s": d_worker,
            "outside_run_median_s": H.median_of(d, "outside_run_s"),
            "execution_path": d[-1]["execution"],
            "cluster_resources": d[-1]["cluster_resources"],
        },
        "baseline": {
            "wall_s": b_wall,
            "stages_median_s": b_stages,
            "stages_s": [s["stages"] for s in b],
        },
        "ratio": H.ratio(d_wall["median"], b_wall["median"]),
        "overhead_s": H.stats(paired),
        "fit_ratio": H.ratio(d_worker["fit"], b_stages["fit_s"]),
        "equality": eq,
        "metrics": {"distml": d[-1]["metrics"], "baseline": b[-1]["metrics"]},
    }


def run(opts: H.Options) -> dict[str, Any]:
    env = H.isolated_env(opts.workdir / "home", opts.threads)
    env["DISTML_STATE_DIR"] = str(opts.workdir / "no-warm")  # the cold side never finds one
    warm_env = {**env, "DISTML_STATE_DIR": str(opts.workdir / "warm-state")}
    sizes = _sizes(opts)
    cluster = [H.bin_path("distml"), "cluster"]
    started = H.run_timed([*cluster, "start", "--json"], warm_env)
    try:
        # the first run after `cluster start` (untimed in the ratios: what a user meets first)
        first = _distml_side(sizes[0], opts, warm_env, [1000])()
        if first["cluster_mode"] != "warm":
            raise H.BenchmarkError(f"the first warm run ran on a {first['cluster_mode']!r} cluster")
        results = {s["size"]: _one_size(s, opts, env, warm_env) for s in sizes}
    finally:
        H.run_timed([*cluster, "stop", "--json"], warm_env)
    small = results["small"]
    out: dict[str, Any] = {
        "sides": {
            "distml": f"distml run {SPEC.relative_to(H.ROOT)} --json --output TMP "
            "(local single-node Ray cluster started and stopped by the run)",
            "distml_warm": "the same on a warm cluster (`distml cluster start` before)",
            "baseline": f"python {PLAIN.relative_to(H.ROOT)} --out TMP "
            "(plain xgboost/sklearn script, no distml, no Ray)",
        },
        "xgboost_nthread": opts.threads,
        "sizes": results,
        "warm_cluster_start_s": round(started.wall_s, 4),
        "workers_ready": H.last_json(started.stdout).get("workers_ready"),
        "first_warm_run": {
            "wall_s": round(first["wall_s"], 4),
            "stages_s": first["stages"],
            "warm_runner": first["warm_runner"],
            "ratio": H.ratio(first["wall_s"], results["small"]["baseline"]["wall_s"]["median"]),
        },
    }
    fixed = small["overhead_s"]["median"]
    split: dict[str, Any] = {
        "fixed_overhead_s": fixed,
        "fixed_overhead_breakdown_s": _breakdown(small),
    }
    if "large" in results:
        large = results["large"]
        dl, ds = large["distml"]["wall_s"]["median"], small["distml"]["wall_s"]["median"]
        bl, bs = large["baseline"]["wall_s"]["median"], small["baseline"]["wall_s"]["median"]
        split.update(
            large_overhead_s=large["overhead_s"]["median"],
            marginal_overhead_s=round(large["overhead_s"]["median"] - fixed, 4),
            marginal_ratio=H.ratio(dl - ds, bl - bs),
            rows_small=small["rows"],
            rows_large=large["rows"],
        )
    out["fixed_vs_marginal"] = split
    stages = {
        k: v
        for k, v in small["distml"]["stages_median_s"].items()
        if k != "total_s" and v is not None
    }
    out["summary"] = {
        "ratio_small": small["ratio"],
        "target_ratio": TARGET_RATIO,
        "meets_target": small["ratio"] is not None and small["ratio"] <= TARGET_RATIO,
        "ratio_small_warm": small.get("ratio_warm"),
        "target_ratio_warm": 1.5,
        "first_warm_run_ratio": out["first_warm_run"]["ratio"],
        "warm_cluster_start_s": out["warm_cluster_start_s"],
        "ratio_large": results.get("large", {}).get("ratio"),
        "fit_ratio_large": results.get("large", {}).get("fit_ratio"),
        "distml_median_s": {k: v["distml"]["wall_s"]["median"] for k, v in results.items()},
        "baseline_median_s": {k: v["baseline"]["wall_s"]["median"] for k, v in results.items()},
        "fixed_overhead_s": fixed,
        "marginal_overhead_s": split.get("marginal_overhead_s"),
        "dominant_stage_small": max(stages, key=stages.get) if stages else None,
        "equal": all(
            r["equality"]["ok"] and r.get("equality_warm", {"ok": True})["ok"]
            for r in results.values()
        ),
        "valid_roc_auc": {k: v["equality"]["values"]["valid.roc_auc"] for k, v in results.items()},
    }
    return out


def _breakdown(small: dict) -> dict[str, Any]:
    """Where distml's extra seconds go at the small size (medians)."""
    st = small["distml"]["stages_median_s"]
    w = small["distml"]["worker_median_s"]
    job = st.get("job_s") or 0.0
    return {
        "process_start_imports_exit_s": small["distml"]["outside_run_median_s"],
        "validate_s": st.get("validate_s"),
        "cluster_start_s": st.get("cluster_start_s"),
        "job_s": job,
        "job_in_worker_read_s": w.get("read"),
        "job_in_worker_fit_s": w.get("fit"),
        "job_scheduling_and_rest_s": round(job - (w.get("read") or 0) - (w.get("fit") or 0), 4),
        "cluster_stop_s": st.get("cluster_stop_s"),
        "write_s": st.get("write_s"),
        "baseline_total_s": small["baseline"]["wall_s"]["median"],
    }


if __name__ == "__main__":  # pragma: no cover - use ``python -m benchmarks b7``
    raise SystemExit("run: python -m benchmarks b7 [--quick]")
