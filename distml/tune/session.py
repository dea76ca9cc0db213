"""The trial side of a search: what runs inside a Tune trial process.

:func:`trial_fn` is the function trainable: it rebuilds the trial's spec (the base spec with the
sampled values applied), builds the kind's Job and calls ``job.tune_trial(data, session)``; a kind
reports through the :class:`TrialSession` it is handed. The session sends a report to Tune every
``report_every`` iterations (each report is a round trip through the driver that blocks the
trial, so by default trials send only what the scheduler reads: see
:func:`distml.tune.tuner.report_schedule`), keeps the best value over *every*
iteration, attaches checkpoints (``state.json`` plus the kind's files, e.g. the booster) and hands
a retried trial its last checkpoint through :meth:`TrialSession.restored`.

An exception raised by the kind's fit (bad parameter combination, numerical failure) is recorded
as a failed trial with its message and is not retried: it would fail again. Tune retries
(``tune.max_failures``) trials whose *process* died, from their last checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from distml.errors import first_line

#: testing hook (RELIABILITY.md T1), read on the driver and handed to trials explicitly:
#: "MARKER_PATH:ITERATION" makes the first trial process that reaches ITERATION call
#: os._exit(1) there, once (the marker file records that it happened).
FAULT_ENV = "DISTML_TUNE_FAULT"
#: the key every report carries the searched metric under (Tune's metric)
OBJECTIVE = "objective"
CHECKPOINT_INTERVAL_S = 10.0


def fault_from_env() -> Any:
    """The trial fault asked for (``DISTML_FAULT=tune.iteration:K``, or FAULT_ENV); None."""
    from distml.runtime.faults import from_env

    return from_env("tune.iteration")


@dataclass
class TrialPlan:
    """Everything a trial needs besides the shared data (small; travels through the store)."""

    kind: str
    base: dict  # the resolved spec without its tune section
    space: Any  # distml.tune.space.Space
    metric: str
    mode: str
    report_every: int | None = None
    checkpoint_every: int | None = None
    fault: Any = None  # a distml.runtime.faults.Fault (tests)
    scratch: str | None = None  # a folder for kinds that run their own pipeline in a trial
    #: the trial's job trains in a Ray Train worker group (num_workers > 1, GPUs, or data over
    #: one worker's budget): the trial process only drives it (see :func:`train_callbacks`)
    worker_group: bool = False
    #: the search runs on a cluster distml started on this machine (the driver's
    #: :func:`~distml.runtime.cluster.fixed_size`): a trial's Train group skips what only an
    #: autoscaled cluster uses, as the driver's own group would
    fixed_cluster: bool = False
    cluster_resources: dict | None = None
    iterations: int | None = None
    #: where the best trial's output is kept (:mod:`distml.tune.kept`); None: keep nothing
    keep_dir: str | None = None
    #: names the shared data (its object ref): a trial process reuses the object an earlier
    #: trial of the search got, with what the kind cached on it (``TuneData.cache``)
    data_key: str | None = None

    def overrides(self, config: dict) -> dict[str, Any]:
        return self.space.decode(config)

    def trial_spec(self, overrides: dict[str, Any]):
        from distml.spec.load import load_spec

        return load_spec(self.base, overrides)


@dataclass
class Restored:
    """A retried trial's last checkpoint."""

    iteration: int
    state: dict
    files: dict[str, bytes] = field(default_factory=dict)


class TrialSession:
    """Reporting and checkpoints for one trial (one attempt of it)."""

    def __init__(
        self, plan: TrialPlan, restored: Restored | None = None, trial_id: str | None = None
    ):
        self.plan = plan
        self.trial_id = trial_id
        self.kept = False
        self.restored = restored
        self.metric = plan.metric
        self.mode = plan.mode
        self._t0 = time.perf_counter()
        self._last_checkpoint = time.monotonic()
        prior = restored.state if restored else {}
        self._elapsed_before = float(prior.get("elapsed_s", 0.0))
        self.best = prior.get("best")
        self.best_iteration = prior.get("best_iteration")
        self.resumed_from = restored.iteration if restored else 0
        self.finished = False
        self.last: dict[str, Any] = {}
        self.wait_s = float(prior.get("wait_s", 0.0))

    @property
    def split(self) -> str | None:
        return self.metric.split(".", 1)[0] if "." in self.metric else None

    @property
    def metric_name(self) -> str:
        return self.metric.rsplit(".", 1)[-1]

    def elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._t0

    def _better(self, value: float) -> bool:
        if self.best is None or not math.isfinite(self.best):
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def due(self, iteration: int) -> bool:
        """Whether :meth:`report` at ``iteration`` would reach Tune (kinds may skip work if not).
        ``report_every`` 0: no periodic reports (no scheduler reads them), only those that
        carry a checkpoint."""
        every = self.plan.report_every
        if every == 0:
            return self._checkpoint_due(iteration)
        return iteration % (every or 1) == 0

    def report(
        self,
        iteration: int,
        metrics: dict[str, Any],
        *,
        final: bool = False,
        files: Callable[[], dict[str, bytes]] | None = None,
        state: dict | None = None,
        send: bool = True,
    ) -> None:
        """Record iteration ``iteration`` (1-based) with flat ``metrics`` (``valid.logloss``…).

        Reaches Tune when ``final`` or every ``report_every`` iterations (never with
        ``send=False``: the final report follows at once); a checkpoint (``files()`` and
        ``state``) goes with a report every ``checkpoint_every`` iterations, or, by default, once
        10 s passed since the last one.
        """
        if final and self.metric not in metrics:
            known = ", ".join(k for k in metrics if "." in k) or "nothing"
            raise ValueError(
                f"tune.metric {self.metric} is not computed for this job (its trial "
                f"reports {known})"
            )
        value = metrics.get(self.metric)
        value = float(value) if isinstance(value, (int, float)) else math.nan
        if math.isfinite(value) and self._better(value):
            self.best, self.best_iteration = value, iteration
        self._maybe_crash(iteration)
        if not (final or (send and self.due(iteration))):
            return
        # The kind's figures first: the session's bookkeeping keys win over same-named ones
        # (xgboost's 0-based ``best_iteration`` is not the iteration of the best value).
        result = {
            **{k: (math.nan if v is None else v) for k, v in metrics.items()},
            OBJECTIVE: value,
            "iteration": iteration,
            "final": final,
            "best": self.best if self.best is not None else math.nan,
            "best_iteration": self.best_iteration if self.best_iteration is not None else -1,
            "elapsed_s": self.elapsed(),
            "resumed_from": self.resumed_from,
            "finished_at": time.time(),
            "failed": False,
            "error": "",
            "wait_s": self.wait_s,
        }
        self.last = result
        self.finished = final
        checkpoint = None
        if files is not None and not final and self._checkpoint_due(iteration):
            checkpoint = self._write_checkpoint(iteration, files(), state or {})
        from ray import tune

        t = time.perf_counter()
        try:
            tune.report(result, checkpoint=checkpoint)
        finally:
            self.wait_s += time.perf_counter() - t
            if checkpoint is not None:
                shutil.rmtree(checkpoint.path, ignore_errors=True)

    def keep(self, metrics: dict[str, Any], build: Callable[[], Any]) -> bool:
        """Offer this trial's output (``build()``, a JobOutput of the model it trained) to be
        the run's, before the final report whose ``metrics`` it was scored with: it is kept
        when the searched metric beats every trial kept so far (:mod:`distml.tune.kept`), and
        the run then needs no refit. Call it only with the model the final report describes."""
        from distml.tune.kept import KeptStore

        value = metrics.get(self.metric)
        if self.plan.keep_dir is None or self.trial_id is None:
            return False
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        store = KeptStore(self.plan.keep_dir, self.mode)
        self.kept = store.offer(self.trial_id, float(value), build)
        return self.kept

    def fail(self, error: BaseException) -> None:
        """Report the trial as failed with the error's message (the searcher sees no value)."""
        from ray import tune

        text = f"{type(error).__name__}: {first_line(error)}"[:500]
        result = {
            OBJECTIVE: math.nan,
            "iteration": self.last.get("iteration", 0),
            "final": True,
            "best": math.nan,
            "best_iteration": -1,
            "elapsed_s": self.elapsed(),
            "resumed_from": self.resumed_from,
            "finished_at": time.time(),
            "failed": True,
            "error": text,
        }
        self.finished = True
        tune.report(result)

    # ---------------------------------------------------------------- checkpoints

    def _checkpoint_due(self, iteration: int) -> bool:
        every = self.plan.checkpoint_every
        if every:
            return iteration % every == 0
        return time.monotonic() - self._last_checkpoint >= CHECKPOINT_INTERVAL_S

    def _write_checkpoint(self, iteration: int, files: dict[str, bytes], state: dict):
        from ray import tune

        self._last_checkpoint = time.monotonic()
        d = tempfile.mkdtemp(prefix="distml-ckpt-")
        for name, data in files.items():
            with open(os.path.join(d, name), "wb") as fh:
                fh.write(data)
        meta = {
            "iteration": iteration,
            "elapsed_s": self.elapsed(),
            "best": self.best,
            "best_iteration": self.best_iteration,
            "files": sorted(files),
            **state,
        }
        with open(os.path.join(d, "state.json"), "w", encoding="utf-8") as fh:
            json.dump(meta, fh)
        return tune.Checkpoint.from_directory(d)

    def _maybe_crash(self, iteration: int) -> None:
        from distml.runtime import faults

        faults.crash(self.plan.fault, "tune.iteration", iteration)


def load_checkpoint(checkpoint) -> Restored | None:
    """Read a checkpoint written by :class:`TrialSession` (None for no checkpoint)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        with open(os.path.join(d, "state.json"), encoding="utf-8") as fh:
            state = json.load(fh)
        files = {}
        for name in state.get("files", []):
            with open(os.path.join(d, name), "rb") as fh:
                files[name] = fh.read()
    return Restored(int(state["iteration"]), state, files)


def trial_fn(config: dict, *, plan: TrialPlan, data: Any = None) -> None:
    """The function trainable of every distml search (runs in a Tune trial process)."""
    from ray import tune

    from distml.registry import kind_module
    from distml.runtime.threads import fit_pools

    fit_pools()  # the trial's CPUs (its process may have imported libraries before)

    session = TrialSession(
        plan, load_checkpoint(tune.get_checkpoint()), tune.get_context().get_trial_name()
    )
    data = _reuse_shared(plan.data_key, data)
    try:
        spec = plan.trial_spec(plan.overrides(config))
        job = kind_module(plan.kind).Job(spec)
        if job.tune_trial_hook and not plan.worker_group:
            job.tune_trial(data, session)
        else:
            _run_whole_job(job, data, session, plan)
        if not session.finished:  # the kind did not send its final report: its last one is
            session.report(
                session.last.get("iteration", 1),
                {k: v for k, v in session.last.items() if "." in k},
                final=True,
            )
    except Exception as e:  # noqa: BLE001 - a failed fit is a failed trial, not a crash
        session.fail(e)


_SHARED: tuple[str, Any] | None = None  # (data_key, data) of this trial process's search


def _reuse_shared(key: str | None, data: Any) -> Any:
    """The shared data object an earlier trial in this process got for the same search (Tune
    hands every trial a fresh copy from the object store; reusing the first keeps what kinds
    cached on it), else ``data``, remembered for the next trial."""
    global _SHARED
    if key is None:
        return data
    if _SHARED is not None and _SHARED[0] == key:
        return _SHARED[1]
    _SHARED = (key, data)
    return data


def _run_whole_job(job, info, session: TrialSession, plan: TrialPlan) -> None:
    """Kinds without ``tune_trial``, and worker-group trials: run the kind's own pipeline,
    report its metrics at the end.

    The kind schedules its own Ray tasks; they run inside the trial's placement group. A
    worker-group trial builds its Ray Train run here (Ray 2.60 has no ``Tuner(trainer)``); the
    Train run's per-iteration reports reach Tune through :func:`train_callbacks`.
    """
    import logging

    from distml.jobs.base import RunContext
    from distml.runtime.artifacts import RunDir
    from distml.runtime.cluster import ClusterInfo, runs_on
    from distml.runtime.workers import use_train_callbacks

    global _ACTIVE
    scratch = tempfile.mkdtemp(prefix="distml-trial-", dir=plan.scratch)
    _ACTIVE = plan if plan.worker_group else None
    try:
        run_dir = RunDir(scratch, job.spec.name)
        run_dir.prepare()
        ctx = RunContext(
            job.spec,
            info,
            run_dir,
            ClusterInfo("existing", None, None, dict(plan.cluster_resources or {})),
            logging.getLogger("distml.trial"),
        )
        # the Train run's reports reach Tune; its group is set up for the driver's cluster
        with use_train_callbacks(train_callbacks), runs_on(plan.fixed_cluster):
            out = job.run(ctx)
    finally:
        _ACTIVE = None
        shutil.rmtree(scratch, ignore_errors=True)
    flat = flatten_metrics(out.metrics)
    value = lookup_metric(out.metrics, plan.metric)
    if value is not None:
        flat[plan.metric] = value
    session.keep(flat, lambda: out)  # the whole job's output is the run's, as it stands
    session.report(max(1, plan.iterations or 1) if plan.worker_group else 1, flat, final=True)


_ACTIVE: TrialPlan | None = None  # the worker-group trial running in this process, if any


def train_callbacks() -> list:
    """Ray Train callbacks for a Train run started inside a worker-group trial (else ``[]``):
    they forward each report of the workers (``iteration`` plus metrics) to Tune, shaped like a
    :class:`TrialSession` report, so ASHA or the median rule can stop the trial. The worker-group
    launcher asks for them through :func:`distml.runtime.workers.use_train_callbacks`."""
    if _ACTIVE is None:
        return []
    every = _ACTIVE.report_every
    return [_TrainToTune(_ACTIVE.metric, _ACTIVE.mode, 1 if every is None else every)]


def _train_to_tune_class():
    from ray.train import UserCallback
    from ray.tune.integration.ray_train import TuneReportCallback

    class TrialQueue:
        """``put(report)`` hands one report to the trial through Ray's public Train→Tune bridge
        (``TuneReportCallback``, made in the trial process: it holds the trial's queue)."""

        def __init__(self):
            self.bridge = TuneReportCallback()

        def put(self, report: dict) -> None:
            self.bridge.after_report(None, [report], None)  # no checkpoint: only metrics

    class TrainToTune(UserCallback):
        """Runs in the Train controller; sends each worker report to the trial, translated to
        distml's trial report."""

        def __init__(self, metric: str, mode: str, every: int):
            self.metric, self.mode, self.every = metric, mode, every
            self.best: float | None = None
            self.best_iteration = -1
            self.t0 = time.time()
            self.queue = TrialQueue()

        def after_report(self, run_context, metrics, checkpoint):
            flat = flatten_metrics(metrics[0] if metrics else {})
            iteration = int(flat.get("iteration") or flat.get("epoch") or 0)
            value = lookup_metric(metrics[0] if metrics else {}, self.metric)
            if not iteration or value is None or not math.isfinite(value):
                return
            if self.best is None or (
                value < self.best if self.mode == "min" else value > self.best
            ):
                self.best, self.best_iteration = float(value), iteration
            if not self.every or iteration % self.every:  # every 0: no scheduler reads them
                return
            self.queue.put(
                {
                    **flat,
                    OBJECTIVE: float(value),
                    "iteration": iteration,
                    "final": False,
                    "best": self.best,
                    "best_iteration": self.best_iteration,
                    "elapsed_s": time.time() - self.t0,
                    "resumed_from": 0,
                    "finished_at": time.time(),
                    "failed": False,
                    "error": "",
                    "wait_s": 0.0,
                }
            )

    return TrainToTune


def _TrainToTune(metric: str, mode: str, every: int):  # noqa: N802 - a class, built lazily
    return _train_to_tune_class()(metric, mode, every)


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """``{"valid": {"rmse": 1.0}, "aic": 3}`` → ``{"valid.rmse": 1.0, "aic": 3}`` (numbers only).

    >>> flatten_metrics({"valid": {"rmse": 1.5, "note": "x"}, "n_rows": 10})
    {'valid.rmse': 1.5, 'n_rows': 10}
    """
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_metrics(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = v
    return out


def lookup_metric(metrics: dict, metric: str) -> float | None:
    """The value of ``metric`` (``valid.logloss``, ``cv.accuracy``, ``aic``) in a run's metrics
    (cross-validation keeps its means under ``cv.mean``).

    >>> lookup_metric({"cv": {"mean": {"accuracy": 0.9}}}, "cv.accuracy")
    0.9
    """
    flat = flatten_metrics(metrics)
    if metric in flat:
        return flat[metric]
    split, _, name = metric.partition(".")
    return flat.get(f"{split}.mean.{name}") if name else None
