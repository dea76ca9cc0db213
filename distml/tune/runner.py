"""The driver side of a search: shared data, the Tuner (new or restored), the trials table, the
best trial's refit. Imported only when a search runs (it imports Ray Tune); how the Tuner is
built is in :mod:`distml.tune.tuner`.
"""

from __future__ import annotations

import math
import shutil
import time
from typing import Any

from ray import tune

from distml.errors import DistmlError, JobFailed, error_text
from distml.jobs.base import JobOutput, RunContext
from distml.registry import kind_module
from distml.runtime import cluster, threads, warm_workers
from distml.runtime.artifacts import run_fingerprint
from distml.tune.kept import KeptStore
from distml.tune.session import TrialPlan, fault_from_env, lookup_metric, trial_fn
from distml.tune.space import Space
from distml.tune.table import TrialRecord, best_record, failure_summary, trials_table
from distml.tune.tuner import (
    EXPERIMENT,
    Progress,
    concurrency_for,
    make_scheduler,
    make_tuner,
    quiet_logs,
    report_schedule,
    tune_env,
)

#: the run's model must reproduce the best trial's metric to this relative tolerance (a kept
#: output reproduces it exactly; a refit of a stopped trial to the kind's per-round figure)
REFIT_RTOL = 1e-6


def run_search(job, ctx: RunContext) -> JobOutput:
    """Search ``ctx.spec.tune``; return the best configuration's run output plus the trials."""
    spec, t = ctx.spec, ctx.spec.tune
    space = Space(t)
    base = spec.to_dict()
    base.pop("tune", None)
    res = spec.resources
    total = t.num_samples * t.n_grid
    iterations = job.tune_iterations()
    report_every, grace = report_schedule(
        iterations, t.report_every, t.grace_period, t.scheduler, bool(t.time_budget_s)
    )
    group = _worker_group(job, ctx)
    if group is not None:  # each trial drives its own Ray Train run of group.workers workers
        workers = group.workers
    else:
        workers = 1 if job.tune_trial_hook else res.num_workers  # whole-job trials: all
    # Trials at once: what the cluster holds of the workers of a trial, so concurrent worker
    # groups never wait on each other's resources (no deadlock).
    concurrency = concurrency_for(
        ctx.cluster.resources,
        res.cpus_per_worker * workers,
        res.gpus_per_worker * workers,
        t.max_concurrent,
        total,
    )
    # On the warm cluster, its idle processes (those Ray prestarted for no job, which the first
    # run after `cluster start` takes, or those started for this search as it connected: at
    # most one per CPU) are the trials': the data are prepared here meanwhile, not in a task
    # that would take one of them, and the trials wait until they are ready
    # (warm_workers.await_prestarted says why).
    in_driver = ctx.cluster.mode == "warm"
    shared_ref = None if group is not None else _start_prepare(job, ctx, in_driver)
    ready, waited = warm_workers.await_prestarted()
    if group is not None:
        ctx.log.info(
            "search: each trial trains in a Ray Train worker group of %d (%s)",
            group.workers,
            group.reason,
        )
    ctx.log.info(
        "search: %d trials (%s%s, seed %d), %d at a time, %s CPU each; %s (%s); data %s",
        total,
        t.search,
        "" if t.scheduler == "none" else f" + {t.scheduler}",
        t.seed,
        concurrency,
        res.cpus_per_worker,
        t.metric,
        t.mode,
        "read once and shared"
        if shared_ref is not None
        else "read by each trial (the kind has no shared-data hook)",
    )
    plan = TrialPlan(
        kind=spec.kind,
        base=base,
        space=space,
        metric=t.metric,
        mode=t.mode,
        report_every=report_every,
        checkpoint_every=t.checkpoint_every,
        fault=fault_from_env(),
        worker_group=group is not None,
        fixed_cluster=cluster.fixed_size(),
        cluster_resources=dict(ctx.cluster.resources),
        iterations=iterations,
    )
    plan.keep_dir = str(kept_dir(ctx.run_dir))
    plan.data_key = shared_ref.hex() if shared_ref is not None else None
    trial_resources = dict(TRAIN_DRIVER) if group is not None else _trial_resources(job, res)
    trainable = tune.with_resources(
        tune.with_parameters(
            trial_fn, plan=plan, data=shared_ref if shared_ref is not None else ctx.data
        ),
        trial_resources,
    )
    with tune_env(), quiet_logs():
        tuner, resumed = _tuner(ctx, trainable, space, base, concurrency, iterations, grace, total)
        t0, fit_at = time.perf_counter(), time.time()
        try:
            grid = tuner.fit()
        except DistmlError:
            raise
        except Exception as e:
            raise JobFailed(f"the search stopped: {error_text(e)}") from e
        search_s = time.perf_counter() - t0

    records = _records(grid, space)
    table = trials_table(records, space.paths, t.metric)
    counts = {
        s: int((table["status"] == s).sum()) for s in ("completed", "stopped", "failed", "not_run")
    }
    best = _best_or_fail(records, counts, t, shared_ref, spec.kind)
    ctx.log.info(
        "search done in %.1fs: %s; best %s with %s=%.6g",
        search_s,
        ", ".join(f"{n} {s}" for s, n in counts.items() if n),
        best.trial_id,
        t.metric,
        best.value,
    )

    t1 = time.perf_counter()
    store = KeptStore(plan.keep_dir, t.mode)
    out, model = _best_output(best, store)
    best_config = dict(best.params)
    if out is None:  # the fallback: refit the best configuration
        best_config.update(job.tune_final_overrides(best.metrics))
        out, fit_exec = _refit(spec, base, best_config, ctx, shared_ref, model["reason"])
        model["execution"] = fit_exec
    else:
        model["execution"] = out.info.pop("execution", {})
        ctx.log.info("the run's model is %s's own (kept; no refit)", best.trial_id)
    finish_s = time.perf_counter() - t1
    model_value = lookup_metric(out.metrics, t.metric)
    matches = isinstance(model_value, (int, float)) and math.isclose(
        model_value, best.value, rel_tol=REFIT_RTOL, abs_tol=1e-12
    )
    if not matches:
        ctx.log.warning(
            "the run's model (%s of %s) gives %s=%s, the trial reported %.6g (a stopped "
            "trial's value comes from the kind's per-iteration figure)",
            model["from"],
            best.trial_id,
            t.metric,
            model_value,
            best.value,
        )
    model["matches_trial"] = bool(matches)
    out.tables["trials"] = table
    out.best_config = best_config
    out.metrics["tune"] = {
        "metric": t.metric,
        "mode": t.mode,
        "best_trial": best.trial_id,
        "best_value": best.value,
        "model_value": model_value,
        "model_from": model["from"],
        "trials": len(records),
        **counts,
    }
    out.info["tune"] = {
        "search": t.search,
        "scheduler": t.scheduler,
        "seed": t.seed,
        "trials": len(records),
        "concurrency": concurrency,
        "resources_per_trial": _describe(trial_resources),
        "worker_group": group.record() if group is not None else None,
        "report_every": report_every,
        "grace_period": grace if t.scheduler != "none" else None,
        "resumed": resumed,
        "best_trial": best.trial_id,
        "model": {k: v for k, v in model.items() if k != "execution"},
        "data": "shared" if shared_ref is not None else "per_trial",
        **(
            {"data_prepared_in": "driver" if in_driver else "task"}
            if shared_ref is not None
            else {}
        ),
        **counts,
        # the trial processes the warm cluster started as the run connected, ready when the
        # search began (docs/clusters.md, "A run's workers start as it connects")
        **({"workers_ready": ready} if ready or waited else {}),
        "timings_s": {
            "search_s": round(search_s, 4),
            # Tuner.fit to the first trial's own start (Tune's start-up and the trial process)
            "first_trial_s": _first_trial_s(records, fit_at),
            # waiting for the trial processes the warm cluster started as the run connected
            **({"workers_wait_s": waited} if ready or waited else {}),
            # the kept output's loading, or the refit (the fallback)
            ("refit_s" if model["from"] == "refit" else "model_s"): round(finish_s, 4),
        },
    }
    out.info["execution"] = {
        "path": "tune",
        "trials": len(records),
        "concurrency": concurrency,
        "model_from": model["from"],
        "model": model["execution"],
        "reason": "tune section: trials are Tune function trainables in reused actors; the "
        + (
            "best trial's own model is the run's (kept by the trial, no refit)"
            if model["from"] == "best_trial"
            else f"best configuration is refitted for the run's model ({model['reason']})"
        ),
    }
    return out


def _first_trial_s(records: list[TrialRecord], fit_at: float) -> float | None:
    """Seconds from ``Tuner.fit`` to the first trial's start (its report's ``finished_at``
    less its ``elapsed_s``); None when no trial reported (or the search was resumed)."""
    starts = [
        r.metrics["finished_at"] - r.metrics["elapsed_s"]
        for r in records
        if isinstance(r.metrics.get("finished_at"), (int, float))
        and isinstance(r.metrics.get("elapsed_s"), (int, float))
        and r.metrics["finished_at"] >= fit_at
    ]
    return round(min(starts) - fit_at, 4) if starts else None


def kept_dir(run_dir):
    """Where the trials keep the best trial's output (:mod:`distml.tune.kept`)."""
    return run_dir.file("checkpoints") / "kept"


def _best_output(best: TrialRecord, store: KeptStore) -> tuple[JobOutput | None, dict]:
    """The best trial's kept output, or None and why it must be refitted; with the manifest's
    record of where the run's model comes from (``from``: best_trial or refit)."""
    record = {"from": "refit", "trial": best.trial_id}
    if best.status != "completed":
        reason = (
            f"{best.trial_id} was stopped by the scheduler at iteration "
            f"{best.metrics.get('iteration')}: its value is the kind's per-iteration figure "
            "and no model was kept at that iteration"
        )
        return None, {**record, "reason": reason}
    kept = store.value_of(best.trial_id)
    if kept is None:
        reason = (
            f"no output of {best.trial_id} was kept (its kind keeps none, or the trial ran "
            "on another node, whose disk the driver does not see)"
        )
        return None, {**record, "reason": reason}
    if kept != best.value:
        reason = (
            f"the output kept for {best.trial_id} has {kept!r}, its final report "
            f"{best.value!r} (a later attempt of the trial)"
        )
        return None, {**record, "reason": reason}
    out = store.load(best.trial_id)
    if out is None:
        return None, {**record, "reason": f"the output kept for {best.trial_id} is unreadable"}
    return out, {"from": "best_trial", "trial": best.trial_id, "reason": None}


def _start_prepare(job, ctx: RunContext, in_driver: bool = False):
    """Read, type and split the data once, in one Ray task, while Tune starts its trial
    processes; every trial gets the object ref (and waits for it on first use). None for a kind
    without the hook (its trials read the data themselves).

    The task reserves no CPU: it runs on the CPUs of the first trials, which wait for its
    result. Reserving one, the placement group Tune requested for the second trial while it ran
    never became ready on a 2-CPU cluster in 2 of 4 runs, and the whole 64-trial search ran one
    trial at a time (search 16.5 s against 9.4-9.8 s; 4 of 4 runs concurrent without).

    ``in_driver``: prepared here, in the driver, and put in the object store (the same ref to
    the trials): on the warm cluster, whose processes started for the search are its trials'."""

    if not job.tune_trial_hook:
        return None
    if in_driver:  # (a DataError stays one: exit 2)
        import ray

        try:
            return ray.put(job.tune_prepare(ctx.data))
        except DistmlError:
            raise
        except Exception as e:
            raise JobFailed(f"{ctx.spec.kind} data preparation failed: {error_text(e)}") from e
    res = ctx.spec.resources
    return threads.remote(
        _prepare, num_cpus=0, max_retries=res.max_failures, retry_exceptions=False
    ).remote(job, ctx.data)


def _tuner(
    ctx: RunContext,
    trainable,
    space: Space,
    base: dict,
    concurrency: int,
    iterations: int | None,
    grace: int,
    total: int,
) -> tuple[tune.Tuner, bool]:
    """A restored Tuner (``--resume`` with an experiment in ``checkpoints/``) or a new one."""
    t = ctx.spec.tune
    storage = ctx.run_dir.file("checkpoints")
    exp_dir = storage / EXPERIMENT
    fingerprint = run_fingerprint(ctx.spec, ctx.data)  # the spec (search included) and data
    if ctx.resume and tune.Tuner.can_restore(str(exp_dir)):
        # a missing fingerprint is a refusal: nothing proves what the experiment belongs to
        ctx.run_dir.check_resume(fingerprint)
        ctx.log.info("resuming the search from %s (finished trials are kept)", exp_dir)
        return tune.Tuner.restore(
            str(exp_dir),
            trainable=trainable,
            param_space=space.param_space(),
            resume_unfinished=True,
            resume_errored=False,
        ), True
    if ctx.resume:
        ctx.log.info("--resume: no search to restore in %s; starting it", exp_dir)
    shutil.rmtree(exp_dir, ignore_errors=True)
    shutil.rmtree(kept_dir(ctx.run_dir), ignore_errors=True)  # a fresh search keeps afresh
    storage.mkdir(parents=True, exist_ok=True)
    ctx.run_dir.write_fingerprint(fingerprint)
    return make_tuner(
        trainable,
        space.param_space(),
        mode=t.mode,
        num_samples=t.num_samples,
        concurrency=concurrency,
        storage_path=str(storage),
        search=t.search,
        seed=t.seed,
        scheduler=make_scheduler(t.scheduler, iterations, grace),
        time_budget_s=t.time_budget_s,
        max_failures=t.max_failures,
        callbacks=[Progress(t.metric, t.mode, total, t.search)],
    ), False


def _best_or_fail(
    records: list[TrialRecord], counts: dict, t, shared_ref, kind: str
) -> TrialRecord:
    """The best trial; JobFailed (or the data preparation's own error) when there is none."""
    best = best_record(records, t.mode)
    if best is not None:
        return best
    _raise_prepare_error(shared_ref, kind)
    if t.time_budget_s and counts["not_run"] == len(records):
        raise JobFailed(
            f"tune.time_budget_s ({t.time_budget_s:g} s) ran out before any "
            f"trial reported {t.metric}; raise it"
        )
    raise JobFailed(
        f"every trial of the search failed or reported no {t.metric} "
        f"({len(records)} trials): {failure_summary(records)}"
    )


def _prepare(job, info):
    return job.tune_prepare(info)


def _raise_prepare_error(shared_ref, kind: str) -> None:
    """When no trial produced a value, a failed data preparation is the cause to report (a
    DataError stays one: exit 2)."""
    import ray

    if shared_ref is None or not ray.wait([shared_ref], timeout=0)[0]:
        return
    try:
        ray.get(shared_ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, DistmlError):
            raise cause from None
        raise JobFailed(f"{kind} data preparation failed: {error_text(e)}") from e


#: what a worker-group trial's own process reserves: it only drives a Ray Train run, whose workers
#: reserve their own resources (Train V2 places them in a placement group of its own, outside the
#: trial's). No CPU, so 2 workers × 1 CPU fit a 2-CPU machine; Tune cannot schedule a trial that
#: reserves nothing at all, hence one byte of memory.
TRAIN_DRIVER = {"cpu": 0, "memory": 1}


def _worker_group(job, ctx: RunContext):
    """The right-sizing decision (DESIGN.md §5) for the kind's Train path, when the trials of
    this search would each train in a worker group; None for single-task trials."""
    return job.train_execution(ctx.data, ctx.cluster.resources)


def _trial_resources(job, res) -> dict:
    if job.tune_trial_hook:
        return {"cpu": res.cpus_per_worker, "gpu": res.gpus_per_worker}
    # A whole-job trial only drives the kind's own tasks: the trial itself takes nothing (an
    # empty head bundle) and the tasks run in the trial's placement group bundles, which bounds
    # what concurrent trials take.
    bundles = [
        {"CPU": res.cpus_per_worker, "GPU": res.gpus_per_worker} for _ in range(res.num_workers)
    ]
    return tune.PlacementGroupFactory([{}] + [{k: v for k, v in b.items() if v} for b in bundles])


def _describe(resources) -> Any:
    """Trial resources for the manifest (a placement group as its list of bundles)."""
    return resources if isinstance(resources, dict) else {"bundles": resources.bundles}


def _records(grid, space: Space) -> list[TrialRecord]:
    """One record per trial, in the order the searcher created them.

    Tune keeps trials in no fixed order (a retried trial moves); its experiment tag starts with
    the creation counter. Process deaths are counted in a trial's run metadata (kept across
    --resume), which the ResultGrid does not expose, hence the guarded look at its trials.
    """
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    if len(trials) != len(grid):
        trials = [None] * len(grid)
    rows = []
    for pos, (result, trial) in enumerate(zip(grid, trials)):
        metrics = dict(result.metrics or {})
        tag = str(metrics.get("experiment_tag") or getattr(trial, "experiment_tag", "") or "")
        head = tag.split("_", 1)[0]
        order = (int(head), pos) if head.isdigit() else (1 << 62, pos)
        failures = int(getattr(getattr(trial, "run_metadata", None), "num_failures", 0) or 0)
        error = error_text(result.error) if result.error is not None else None
        rows.append((order, space.decode(result.config or {}), metrics, error, failures))
    rows.sort(key=lambda r: r[0])
    return [
        TrialRecord(i, params, metrics, error, failures)
        for i, (_, params, metrics, error, failures) in enumerate(rows)
    ]


def _refit(
    spec, base: dict, best_config: dict, ctx: RunContext, shared_ref, why: str
) -> tuple[JobOutput, dict]:
    """Fit the best configuration for the run's model, metrics and tables (the fallback when
    the best trial's own output was not kept: ``why``)."""
    from distml.spec.load import load_spec

    best_spec = load_spec(base, best_config)
    best_job = kind_module(spec.kind).Job(best_spec)
    best_ctx = RunContext(best_spec, ctx.data, ctx.run_dir, ctx.cluster, ctx.log, False)
    ctx.log.info(
        "refitting the best configuration (%s): %s",
        why,
        ", ".join(f"{k}={v!r}" for k, v in best_config.items()),
    )
    from distml import progress

    progress.current().stage("train", "refit of the best configuration")
    if shared_ref is not None and best_job.tune_trial_hook:
        out = best_job.tune_refit(best_ctx, shared_ref)
    else:
        out = best_job.run(best_ctx)
    if out is None:
        raise JobFailed(f"{spec.kind} refit of the best configuration returned no output")
    return out, out.info.pop("execution", {})


__all__ = ["run_search"]
