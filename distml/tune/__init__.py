"""Hyperparameter search with Ray Tune for every trainable kind (DESIGN.md §2, §5).

A search runs trials; a trial is the kind's own single fit on the spec with the sampled values
applied (``model.params.eta=0.05``…). The driver reads and prepares the data **once** in a Ray
task and hands the object ref to every trial (``tune.with_parameters``); trials are function
trainables in reused actors (``reuse_actors=True``), each with ``resources.cpus_per_worker`` CPUs,
at most as many at once as the cluster holds. The best trial's own output — its model, trained on
the run's split, with the metrics and tables a single fit writes — is the run's, next to
``tables/trials.parquet``: each trial that finishes with the best value so far keeps it
(:mod:`distml.tune.kept`). When it was not kept (the best trial was stopped by the scheduler, or
ran on another node) the best configuration is refitted deterministically instead (same data,
split, seed and iteration count).

A kind takes part by giving its ``Job`` these hooks (see :class:`distml.jobs._supervised.SupervisedJob`):

``tune_prepare(info) -> (shared, summary)``
    run once in a Ray task: read and prepare the data (``shared`` stays in the object store);
    ``summary`` is small: ``{"metrics": [names a trial reports]}``.
``tune_trial(shared, session)``
    one trial: fit ``self.spec`` and report through the :class:`~distml.tune.session.TrialSession`
    (every iteration for iterative kinds; ``final=True`` at the end); resume from
    ``session.restored`` when a retried trial has a checkpoint. Before the final report it
    offers the run's output of its model: ``session.keep(report, build)`` (``build()`` runs only
    when the trial is the best so far).
``tune_refit(ctx, shared_ref) -> JobOutput``
    the fallback: the run's model from the best spec (default: ``job.run(ctx)``).
``tune_iterations() -> int | None``, ``tune_metric_names()``, ``tune_iteration_metrics()``
    what the spec checks need: iterations a trial reports (None: one shot, no scheduler), metric
    names the kind produces, and those it can compute every iteration.
``tune_final_overrides(result) -> dict``
    spec overrides that make the refit reproduce a trial (e.g. the rounds an early-stopped
    xgboost trial reached).

A kind without ``tune_trial`` is still searchable: each trial runs the kind's whole pipeline
(``job.run``) in its placement group, reports the run's metrics once and keeps its output.

This package imports nothing heavy at import time (``distml validate`` stays instant).
"""

from __future__ import annotations

from typing import Any

from distml.spec.tune import TuneSpec

__all__ = ["TuneSpec", "run_search", "discard_experiment", "worker_modules"]

#: What a trial process imports before its first trial: Ray Tune (its function trainable; 0.47 s
#: in a fresh worker here) and distml's trial session.
TRIAL_MODULES = ("ray.tune", "distml.tune.session")


def worker_modules(job: Any) -> tuple[str, ...]:
    """The modules a search's own cluster preloads in its workers (Ray's
    ``preload_python_modules``): its trial processes' and the kind's
    (:meth:`~distml.jobs.base.Job.worker_modules`). The prestarted workers become the first
    trials' actors, which then start with Tune imported: Tuner.fit to the first trial 1.6-1.8 s
    -> 1.25-1.29 s in the 6-trial ``jobs/tune_sklearn.yaml`` here (docs/tuning.md)."""
    return (*TRIAL_MODULES, *(m for m in job.worker_modules() if m not in TRIAL_MODULES))


#: what a search's driver imports to run it (Ray Tune, 0.7 s), while its cluster starts
DRIVER_MODULES = ("distml.tune.runner",)


def driver_modules(job: Any) -> tuple[str, ...]:
    """The modules a search's driver imports while the cluster starts
    (:func:`distml.runtime.cluster.preimport`): Tune's runner, then the kind's
    (:meth:`~distml.jobs.base.Job.driver_modules`)."""
    return (*DRIVER_MODULES, *job.driver_modules())


def run_search(job: Any, ctx: Any):
    """Run the search of ``ctx.spec.tune`` and return the run's JobOutput (see module doc)."""
    from distml.tune.runner import run_search as _run

    return _run(job, ctx)


def discard_experiment(run_dir: Any) -> None:
    """Remove the search's Tune experiment (trial checkpoints, experiment state) and the kept
    best trial's output from ``checkpoints/`` once the run is complete: a complete run is never
    resumed."""
    import shutil

    folder = run_dir.path / "checkpoints"
    shutil.rmtree(folder / "tune", ignore_errors=True)
    shutil.rmtree(folder / "kept", ignore_errors=True)
    (folder / "search.json").unlink(missing_ok=True)
    try:
        folder.rmdir()  # only if nothing else (another kind's checkpoints) is left
    except OSError:
        pass
