"""B1 — Tune overhead: trivial trials per second, and 1-second trials against the ideal time.

Clusters are started as ``distml run`` starts a search's own (:func:`distml.runtime.cluster.cluster`
with the search's preload, :data:`distml.tune.TRIAL_MODULES`: the workers the raylet starts with it
import Ray Tune). One serves the trivial-trial and ``distml_run`` sides (its start is reported
apart, ``ray_init_s``); each cold sample of the 1-second trials gets a fresh one, as each run's
search does: its ``Tuner.fit`` starts ``SETTLE_S`` after the cluster is up (what a run's driver
spends planning in between), on the workers started with it. (On a cluster that already ran a
search, its trial actors' processes are gone and Ray starts new ones for the next search's: a
search there pays a worker start that no run's search pays.) Sides, alternated after a warm-up:

* ``distml`` — the Tuner every distml search uses (:func:`distml.tune.runner.make_tuner` under
  :func:`distml.tune.runner.tune_env`: function trainable, ``reuse_actors=True``, Tune's
  per-result log files off, seeded random search, 1 CPU per trial, as many trials at once as
  CPUs), on a trainable that only reports (``trivial``, 200 trials, and 400 to split the fixed
  start-up of the trial processes from the marginal rate), then on 20 trials that sleep
  1 s, 2 at a time (``sleep``: the ideal is 20 × 1 s / 2 = 10 s), and 40 such trials, which
  splits the fixed start-up (trial processes: a fresh Python importing Ray Tune) from the
  marginal cost per trial (``sleep.marginal_ratio``).
* ``tune_default`` — a plain ``tune.Tuner`` with Tune's defaults (``reuse_actors=False``, log
  files on; seeded the same way so both sample the same configurations), 20 trivial trials.
* ``serial_loop`` — the same trivial function called in a Python loop (what the trials do,
  without Tune): the floor.
* ``distml_run`` — ``distml.run`` of a real search, 100 one-shot sklearn trials
  (``DummyClassifier`` on iris: each trial rebuilds its spec, fits, evaluates, reports); the
  search phase only (``manifest.tune.timings_s.search_s``), so the rate includes distml's own
  per-trial work.
* the warm column — a warm local cluster (``distml cluster start`` once before the timed runs,
  with its own state folder; stopped after), alternated with the sides above:
  ``distml_run_warm`` is the same search as ``distml_run`` through the CLI (``distml run SPEC
  --json``, a process of its own that connects to the warm cluster; its ``search_s`` again), and
  ``distml_sleep_warm`` / ``distml_sleep_2x_warm`` are the 1-second trials run by the same
  Tuner in a driver of their own (``python -m benchmarks.b1_tune_overhead --warm-sleep``) that
  gets its cluster as ``distml run`` does for a search (:func:`distml.runtime.cluster.cluster`,
  declaring Tune's modules, so that its trial processes are started as it connects; not the
  warm list, the libraries of a kind, which these trials do not have),
  timing ``Tuner.fit`` only (which starts at once: no planning hides their start). (``distml run`` has no kind whose trials take a set time, so the sleeping
  trials cannot go through it.) Every warm-side sample must say ``cluster.mode: warm``; this
  process's own Ray and the cold sides never look for the warm cluster (another state folder).

Equality: every trial of every side completed, distml and the Tune default sampled the same
configurations (same seed, same variant generator), and so did the 1-second trials cold and warm.
Targets (BENCHMARKS.md): ≥ 40 trivial trials/s; observed/ideal ≤ 1.1 for the 1-second trials.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks import _harness as H

TITLE = "B1 Tune overhead: trivial trials/s and 20 x 1 s trials 2 at a time vs the ideal"
PACKAGES = H.DEFAULT_PACKAGES + ("optuna",)
TARGET_RATE = 40.0
TARGET_SLEEP_RATIO = 1.1
#: between a search's cluster start and its Tuner.fit in ``distml run`` (the driver's planning:
#: 0.8-0.9 s for jobs/tune_sklearn.yaml here); the cold 1-second trials wait as long
SETTLE_S = 0.8


def _trivial(config):
    from ray import tune

    tune.report({"objective": config["x"]})


def _sleeper(config):
    from ray import tune

    time.sleep(config["sleep_s"])
    tune.report({"objective": config["x"]})


def _fit_distml(fn, n: int, workdir, concurrency: int, extra: dict | None = None) -> dict:
    from ray import tune

    from distml.tune.tuner import make_tuner, tune_env

    space = {"x": tune.uniform(0, 1), **(extra or {})}
    trainable = tune.with_resources(fn, {"cpu": 1})
    with tune_env():
        tuner = make_tuner(
            trainable,
            space,
            mode="min",
            num_samples=n,
            concurrency=concurrency,
            storage_path=str(workdir),
            seed=0,
            name=f"b1-{time.time_ns()}",
        )
        t0 = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "completed": sum(r.error is None and "objective" in r.metrics for r in grid),
        "configs": sorted(round(r.config["x"], 12) for r in grid),
    }


def _fresh(cpus: int, fit: Callable[[], dict]) -> Callable[[], dict]:
    """``fit`` on a cluster of its own, started as a run's search starts one, ``SETTLE_S``
    after it is up; the start is recorded (``cluster_start_s``), not timed."""
    from distml.runtime.cluster import cluster
    from distml.tune import TRIAL_MODULES

    def call() -> dict:
        t0 = time.perf_counter()
        with cluster(None, num_cpus=cpus, preload=TRIAL_MODULES) as info:
            if info.mode != "local":
                raise H.BenchmarkError(f"a cold sample ran on a {info.mode!r} cluster")
            started = time.perf_counter() - t0
            time.sleep(SETTLE_S)
            return {**fit(), "cluster_start_s": round(started, 3)}

    return call


def _fit_default(n: int, workdir) -> dict:
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    tuner = tune.Tuner(
        _trivial,
        param_space={"x": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(
            num_samples=n,
            metric="objective",
            mode="min",
            search_alg=BasicVariantGenerator(random_state=0),
        ),
        run_config=tune.RunConfig(
            storage_path=str(workdir), name=f"b1d-{time.time_ns()}", verbose=0
        ),
    )
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Tune's console box; stdout is the summary's
        grid = tuner.fit()
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "completed": sum("objective" in r.metrics for r in grid),
        "configs": sorted(round(r.config["x"], 12) for r in grid),
    }


def _serial(n: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    t0 = time.perf_counter()
    for _ in range(n):
        config = {"x": float(rng.uniform())}
        out.append({"objective": config["x"]})  # what the trivial trainable reports
    return {"wall_s": time.perf_counter() - t0, "completed": len(out)}


def _run_spec(n: int) -> dict:
    return {
        "name": "b1-run",
        "kind": "sklearn",
        "data": {"source": "builtin:iris", "target": "target", "split": {"valid": 0.3}},
        "model": {"estimator": "sklearn.dummy.DummyClassifier"},
        "tune": {
            "metric": "valid.accuracy",
            "num_samples": n,
            "seed": 0,
            "space": {"model.params.strategy": {"choice": ["prior", "stratified", "uniform"]}},
        },
    }


def _distml_run(n: int, workdir) -> dict:
    import distml

    r = distml.run(_run_spec(n), output=workdir)
    manifest = json.loads((r.run_dir / "manifest.json").read_text())
    t = r.tables["trials"]
    return {
        "wall_s": manifest["tune"]["timings_s"]["search_s"],
        "completed": int((t["status"] == "completed").sum()),
        "run_total_s": manifest["timings"]["total_s"],
    }


def _distml_run_warm(n: int, opts: H.Options, env: dict[str, str], counter: list[int]):
    """``distml run`` of the same search as :func:`_distml_run`, a CLI process on the warm
    cluster; ``wall_s`` is the search phase again (``manifest.tune.timings_s.search_s``)."""

    def call() -> dict:
        counter[0] += 1
        work = opts.workdir / f"run-warm-{counter[0]}"
        work.mkdir(parents=True, exist_ok=True)
        spec = work / "spec.json"
        spec.write_text(json.dumps(_run_spec(n)))
        t = H.run_timed(
            [H.bin_path("distml"), "run", str(spec), "--json", "--output", str(work / "runs")], env
        )
        res = H.last_json(t.stdout)
        if res.get("status") != "succeeded":
            raise H.BenchmarkError(f"distml run did not succeed: {t.stdout[-1000:]}")
        manifest = json.loads(Path(res["run_dir"], "manifest.json").read_text())
        mode = manifest.get("cluster", {}).get("mode")
        if mode != "warm":
            raise H.BenchmarkError(f"the warm side ran on a {mode!r} cluster, not the warm one")
        import pandas as pd

        table = pd.read_parquet(Path(res["run_dir"], "tables", "trials.parquet"))
        return {
            "wall_s": manifest["tune"]["timings_s"]["search_s"],
            "completed": int((table["status"] == "completed").sum()),
            "run_total_s": manifest["timings"]["total_s"],
            "process_wall_s": t.wall_s,
            "cluster_start_s": manifest["timings"].get("cluster_start_s"),
            "cluster_mode": mode,
        }

    return call


def _sleep_warm(n: int, sleep_s: float, concurrency: int, opts: H.Options, env: dict[str, str]):
    """The 1-second trials in a driver of their own on the warm cluster (:func:`warm_main`)."""

    def call() -> dict:
        cmd = [H.PYTHON, "-m", "benchmarks.b1_tune_overhead", "--warm-sleep"]
        cmd += ["--trials", str(n), "--sleep", str(sleep_s), "--concurrency", str(concurrency)]
        t = H.run_timed([*cmd, "--store", str(opts.workdir / "tune-warm")], env)
        res = H.last_json(t.stdout)
        if res.get("cluster_mode") != "warm":
            raise H.BenchmarkError(f"the warm side ran on a {res.get('cluster_mode')!r} cluster")
        return {**res, "process_wall_s": t.wall_s}

    return call


def warm_main(argv: list[str] | None = None) -> int:
    """The warm sleeping-trials side: connect as ``distml run`` does (the warm cluster of
    ``DISTML_STATE_DIR``), run the same Tuner on the same trials, print one JSON line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--warm-sleep", action="store_true")
    ap.add_argument("--trials", type=int, required=True)
    ap.add_argument("--sleep", type=float, required=True)
    ap.add_argument("--concurrency", type=int, required=True)
    ap.add_argument("--store", required=True)
    args = ap.parse_args(argv)
    from distml.runtime.cluster import cluster
    from distml.tune import TRIAL_MODULES

    # as a run's search declares (distml.api._execute), less the libraries of its kind, which
    # these trials do not have (the warm list: xgboost, scikit-learn, pandas): its trial
    # processes import Tune's modules, and are started as it connects
    with cluster(run_preload=TRIAL_MODULES) as info:
        r = _fit_distml(
            _sleeper, args.trials, args.store, args.concurrency, {"sleep_s": args.sleep}
        )
    print(
        json.dumps(
            {
                **r,
                "cluster_mode": info.mode,
                "connect_s": round(info.start_s, 4),
                "prestarted": (info.warm or {}).get("prestarted"),
            }
        )
    )
    return 0


def run(opts: H.Options) -> dict[str, Any]:
    for v in H.THREAD_VARS:
        os.environ[v] = str(opts.threads)
    home = opts.workdir / "h"
    (home / "t").mkdir(parents=True, exist_ok=True)
    os.environ.update(
        RAY_TMPDIR=str(home / "t"), RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0"
    )
    os.environ.pop("RAY_ADDRESS", None)
    os.environ["DISTML_STATE_DIR"] = str(opts.workdir / "no-warm")  # the cold side never finds one
    warm_env = H.isolated_env(opts.workdir / "h", opts.threads)
    warm_env["DISTML_STATE_DIR"] = str(opts.workdir / "warm-state")
    from distml.runtime.cluster import cluster as distml_cluster
    from distml.tune import TRIAL_MODULES

    n_trivial, n_default, n_sleep, sleep_s, n_run = (
        (40, 6, 6, 0.5, 20) if opts.quick else (200, 20, 20, 1.0, 100)
    )
    cpus = os.cpu_count() or 1
    concurrency = min(2, cpus)
    ideal = n_sleep * sleep_s / concurrency
    store = opts.workdir / "tune"
    cluster = [H.bin_path("distml"), "cluster"]
    started = H.run_timed([*cluster, "start", "--json"], warm_env)
    try:
        t0 = time.perf_counter()
        with distml_cluster(None, num_cpus=cpus, preload=TRIAL_MODULES) as info:
            ray_init_s = time.perf_counter() - t0
            if info.mode != "local":
                raise H.BenchmarkError(f"the benchmark's cluster is {info.mode!r}, not its own")
            runs = H.alternate(
                {
                    "distml": lambda: _fit_distml(_trivial, n_trivial, store, concurrency),
                    "distml_2x": lambda: _fit_distml(_trivial, 2 * n_trivial, store, concurrency),
                    "tune_default": lambda: _fit_default(n_default, store),
                    "serial_loop": lambda: _serial(n_trivial),
                    "distml_run": lambda: _distml_run(n_run, opts.workdir / "runs"),
                    "distml_run_warm": _distml_run_warm(n_run, opts, warm_env, [0]),
                },
                opts.reps,
                opts.warmup,
                H.log,
            )
        long = H.alternate(
            {
                "distml_sleep": _fresh(
                    cpus,
                    lambda: _fit_distml(
                        _sleeper, n_sleep, store, concurrency, {"sleep_s": sleep_s}
                    ),
                ),
                "distml_sleep_2x": _fresh(
                    cpus,
                    lambda: _fit_distml(
                        _sleeper, 2 * n_sleep, store, concurrency, {"sleep_s": sleep_s}
                    ),
                ),
                "distml_sleep_warm": _sleep_warm(n_sleep, sleep_s, concurrency, opts, warm_env),
                "distml_sleep_2x_warm": _sleep_warm(
                    2 * n_sleep, sleep_s, concurrency, opts, warm_env
                ),
            },
            opts.reps,
            0,
            H.log,
        )
    finally:
        H.run_timed([*cluster, "stop", "--json"], warm_env)
    sleeps, sleeps2 = long["distml_sleep"], long["distml_sleep_2x"]
    w_sleeps, w_sleeps2 = long["distml_sleep_warm"], long["distml_sleep_2x_warm"]

    def rate(samples: list[dict], n: int) -> dict:
        return H.stats([n / s["wall_s"] for s in samples])

    distml_rate = rate(runs["distml"], n_trivial)
    trivial_wall = H.stats([s["wall_s"] for s in runs["distml"]])
    trivial2_wall = H.stats([s["wall_s"] for s in runs["distml_2x"]])
    # 2n trials less n trials: the rate once the trial processes are up (fixed start-up apart).
    marginal_rate = (
        round(n_trivial / (trivial2_wall["median"] - trivial_wall["median"]), 2)
        if trivial2_wall["median"] > trivial_wall["median"]
        else None
    )
    default_rate = rate(runs["tune_default"], n_default)
    run_rate = rate(runs["distml_run"], n_run)
    sleep_wall = H.stats([s["wall_s"] for s in sleeps])
    sleep_ratio = H.ratio(sleep_wall["median"], ideal)
    # Twice the trials split the fixed cost (trial processes starting: a fresh Python with
    # Ray Tune imported) from the marginal one: (wall(2n) - wall(n)) / (ideal(2n) - ideal(n)).
    sleep2_wall = H.stats([s["wall_s"] for s in sleeps2])
    marginal = H.ratio(sleep2_wall["median"] - sleep_wall["median"], ideal)
    fixed = round(sleep_wall["median"] - ideal * (marginal or 1.0), 3)
    warm = _warm_column(runs["distml_run_warm"], w_sleeps, w_sleeps2, n_run, ideal)
    warm["warm_cluster_start_s"] = round(started.wall_s, 3)
    complete = (
        all(s["completed"] == n_trivial for s in runs["distml"])
        and all(s["completed"] == 2 * n_trivial for s in runs["distml_2x"])
        and all(s["completed"] == n_default for s in runs["tune_default"])
        and all(s["completed"] == n_run for s in runs["distml_run"])
        and all(s["completed"] == n_sleep for s in sleeps)
        and all(s["completed"] == 2 * n_sleep for s in sleeps2)
        and all(s["completed"] == n_run for s in runs["distml_run_warm"])
        and all(s["completed"] == n_sleep for s in w_sleeps)
        and all(s["completed"] == 2 * n_sleep for s in w_sleeps2)
    )
    # Same seed, same generator: the default's configurations are the first of distml's.
    same_configs = set(runs["tune_default"][-1]["configs"]) <= set(runs["distml"][-1]["configs"])
    # The same seeded Tuner on either cluster: the same configurations, cold and warm.
    same_configs_warm = (
        w_sleeps[-1]["configs"] == sleeps[-1]["configs"]
        and w_sleeps2[-1]["configs"] == sleeps2[-1]["configs"]
    )
    return {
        "workloads": {
            "trivial_trials": n_trivial,
            "tune_default_trials": n_default,
            "sleep_trials": n_sleep,
            "sleep_s": sleep_s,
            "concurrency": concurrency,
            "distml_run_trials": n_run,
        },
        "ray_init_s": round(ray_init_s, 3),
        "cluster": {
            "preload": list(TRIAL_MODULES),
            "sleep_settle_s": SETTLE_S,
            "sleep_cluster_start_s": H.stats([s["cluster_start_s"] for s in sleeps + sleeps2]),
        },
        "trivial": {
            "distml": {
                "trials_per_s": distml_rate,
                "wall_s": trivial_wall,
                "wall_2x_s": trivial2_wall,
                "marginal_trials_per_s": marginal_rate,
            },
            "tune_default": {
                "trials_per_s": default_rate,
                "wall_s": H.stats([s["wall_s"] for s in runs["tune_default"]]),
            },
            "serial_loop": {"trials_per_s": rate(runs["serial_loop"], n_trivial)},
            "speedup_vs_tune_default": H.ratio(distml_rate["median"], default_rate["median"]),
        },
        "distml_run": {
            "trials_per_s": run_rate,
            "search_s": H.stats([s["wall_s"] for s in runs["distml_run"]]),
            "run_total_s": H.stats([s["run_total_s"] for s in runs["distml_run"]]),
        },
        "sleep": {
            "wall_s": sleep_wall,
            "ideal_s": ideal,
            "ratio": sleep_ratio,
            "wall_2x_s": sleep2_wall,
            "ideal_2x_s": 2 * ideal,
            "ratio_2x": H.ratio(sleep2_wall["median"], 2 * ideal),
            "marginal_ratio": marginal,
            "fixed_start_s": fixed,
        },
        "warm": warm,
        "equality": {
            "all_trials_completed": complete,
            "same_configs_as_tune": same_configs,
            "same_configs_cold_warm": same_configs_warm,
        },
        "summary": {
            "trivial_trials_per_s": distml_rate["median"],
            "trivial_marginal_trials_per_s": marginal_rate,
            "target_trials_per_s": TARGET_RATE,
            "tune_default_trials_per_s": default_rate["median"],
            "distml_run_trials_per_s": run_rate["median"],
            "sleep_observed_over_ideal": sleep_ratio,
            "sleep_marginal_over_ideal": marginal,
            "sleep_fixed_start_s": fixed,
            "target_sleep_ratio": TARGET_SLEEP_RATIO,
            "meets_target": (
                distml_rate["median"] >= TARGET_RATE
                and sleep_ratio is not None
                and sleep_ratio <= TARGET_SLEEP_RATIO
            ),
            "equal": complete and same_configs and same_configs_warm,
            "distml_run_trials_per_s_warm": warm["distml_run"]["trials_per_s"]["median"],
            "sleep_observed_over_ideal_warm": warm["sleep"]["ratio"],
            "sleep_marginal_over_ideal_warm": warm["sleep"]["marginal_ratio"],
            "sleep_fixed_start_s_warm": warm["sleep"]["fixed_start_s"],
            "warm_cluster_start_s": warm["warm_cluster_start_s"],
        },
    }


def _warm_column(
    run_samples: list[dict], sleeps: list[dict], sleeps2: list[dict], n_run: int, ideal: float
) -> dict[str, Any]:
    """The warm-cluster figures, shaped as the cold ones (``distml_run`` and ``sleep``)."""
    sleep_wall = H.stats([s["wall_s"] for s in sleeps])
    sleep2_wall = H.stats([s["wall_s"] for s in sleeps2])
    marginal = H.ratio(sleep2_wall["median"] - sleep_wall["median"], ideal)
    return {
        "distml_run": {
            "trials_per_s": H.stats([n_run / s["wall_s"] for s in run_samples]),
            "search_s": H.stats([s["wall_s"] for s in run_samples]),
            "run_total_s": H.stats([s["run_total_s"] for s in run_samples]),
            "process_wall_s": H.stats([s["process_wall_s"] for s in run_samples]),
            "cluster_start_median_s": H.median_of(run_samples, "cluster_start_s"),
            "cluster_mode": run_samples[-1]["cluster_mode"],
        },
        "sleep": {
            "wall_s": sleep_wall,
            "ideal_s": ideal,
            "ratio": H.ratio(sleep_wall["median"], ideal),
            "wall_2x_s": sleep2_wall,
            "ideal_2x_s": 2 * ideal,
            "ratio_2x": H.ratio(sleep2_wall["median"], 2 * ideal),
            "marginal_ratio": marginal,
            "fixed_start_s": round(sleep_wall["median"] - ideal * (marginal or 1.0), 3),
            "connect_median_s": H.median_of(sleeps + sleeps2, "connect_s"),
            "process_wall_s": H.stats([s["process_wall_s"] for s in sleeps]),
            "cluster_mode": sleeps[-1]["cluster_mode"],
        },
    }


if __name__ == "__main__":  # pragma: no cover - use ``python -m benchmarks b1``
    if "--warm-sleep" in sys.argv:
        raise SystemExit(warm_main())
    raise SystemExit("run: python -m benchmarks b1 [--quick]")
