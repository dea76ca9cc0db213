"""Building the Tuner every distml search uses (and that benchmark B1 times).

Speed choices (DESIGN.md §5, measured on 2 cores): function trainables in reused actors
(``reuse_actors=True``: ~50 trivial trials/s against ~1/s without); Tune's per-result
CSV/JSON/TensorBoard loggers off (distml keeps its own trials table; they cost about a third of
the trial rate); iterative trials report every ``report_every`` iterations (each report blocks
the trial for a round trip through the driver).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from typing import Iterator

import ray
from ray import tune

from distml.errors import MissingDependency
from distml.tune.session import OBJECTIVE

EXPERIMENT = "tune"
#: Tune settings fixed while a search runs (Tune reads them from the driver's environment).
TUNE_ENV = {
    # distml writes its own trials table; Tune's per-result CSV/JSON/TensorBoard files cut the
    # trial rate from ~46/s to ~31/s on 2 cores.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # Save the experiment state every second (Tune's default: every 10 s or more), so a driver
    # killed mid-search loses at most the last second of progress on --resume.
    "TUNE_GLOBAL_CHECKPOINT_S": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Trials keep the job's working directory (relative paths of whole-job trials still work).
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    # Tune's newer console output prints an experiment box to stdout even when silent; the
    # older one prints nothing at verbose=0 (distml logs its own progress lines).
    "RAY_AIR_NEW_OUTPUT": "0",
}


@contextlib.contextmanager
def tune_env() -> Iterator[None]:
    """Apply :data:`TUNE_ENV` for the duration of a search, then restore the environment; the
    search also ends without waiting for its idle actors to stop (:func:`quick_end`), and its
    trial actors start as plain Ray workers (:func:`env_in_trial_actors`)."""
    old = {k: os.environ.get(k) for k in TUNE_ENV}
    os.environ.update(TUNE_ENV)
    try:
        with quick_end(), env_in_trial_actors():
            yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def quick_end() -> Iterator[None]:
    """Within the block, a Tune run whose every trial has ended (finished or failed) removes
    its actors at once: they are idle (``reuse_actors`` keeps them for trials that will not
    come), and Tune's own end asks each to stop and waits for it (0.6-0.7 s of every search
    here, after its last result). A run ending otherwise (interrupted, trials still running)
    keeps Tune's graceful end. Private Tune API, looked up defensively."""
    try:
        from ray.tune.execution.tune_controller import TuneController
        from ray.tune.experiment import Trial
    except ImportError:
        yield
        return
    original = getattr(TuneController, "_cleanup_trials", None)
    needed = ("_actor_to_trial", "_schedule_trial_stop", "_cleanup_cached_actors")
    if original is None or not all(hasattr(TuneController, n) for n in needed[1:]):
        yield
        return

    def cleanup_trials(self) -> None:
        ended = (Trial.TERMINATED, Trial.ERROR)
        if not hasattr(self, needed[0]) or any(t.status not in ended for t in self.get_trials()):
            return original(self)
        for tracked_actor in list(self._actor_to_trial):
            self._schedule_trial_stop(self._actor_to_trial[tracked_actor])
        self._cleanup_cached_actors(force_all=True)
        groups = _placement_groups(self._actor_manager)
        self._actor_manager.cleanup()  # kills what is left and frees its resources
        _wait_removed(groups)

    TuneController._cleanup_trials = cleanup_trials
    try:
        yield
    finally:
        TuneController._cleanup_trials = original


def _placement_groups(actor_manager) -> list[str]:
    """The hex ids of the placement groups Tune's resource manager holds (private Tune API,
    looked up defensively: none when it changed)."""
    pgs = getattr(getattr(actor_manager, "_resource_manager", None), "_pg_to_request", None)
    return [pg.id.hex() for pg in pgs or () if hasattr(pg, "id")]


def _wait_removed(groups: list[str], timeout_s: float = 2.0) -> None:
    """Wait (at most ``timeout_s``) until the cluster no longer lists the bundles of
    ``groups``: Ray removes a placement group asynchronously, and a placement group asked for
    before its CPUs are back waits for the GCS's next retry (up to 1 s) — the next search on
    a warm cluster, or the next Tuner in one driver, would start that much later. Here the
    removal takes 10-90 ms."""
    if not groups:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        names = ray.cluster_resources()
        if not any(name.endswith(g) for name in names for g in groups):
            return
        time.sleep(0.005)
    logging.getLogger(__name__).debug(
        "the search's placement groups were still listed %.1f s after their removal", timeout_s
    )


#: The variables Tune gives its trial actors that only the trial process itself reads in a
#: distml search: set there by :func:`env_in_trial_actors`. ``PL_DISABLE_FORK`` is for
#: Lightning, which no distml kind runs; ``RAY_CHDIR_TO_TRIAL_DIR`` is read by Tune's trainable
#: and by a Train V2 run's start, both in the trial process.
TRIAL_PROCESS_ONLY = frozenset({"PL_DISABLE_FORK", "RAY_CHDIR_TO_TRIAL_DIR"})


@contextlib.contextmanager
def env_in_trial_actors() -> Iterator[None]:
    """Within the block, Tune's trial actors get the environment variables Tune gives them
    (``PL_DISABLE_FORK``, and what it propagates from the driver: ``RAY_CHDIR_TO_TRIAL_DIR``,
    Train's settings, AWS credentials) as the actor's first step, not as a ``runtime_env``,
    when they are only those of :data:`TRIAL_PROCESS_ONLY` (distml's own searches).

    A ``runtime_env`` makes Ray start each trial worker through its setup script — a Python
    that imports Ray, then execs the worker, which imports it again — after a round trip to
    the runtime-env agent: 0.3 s more before the first trial of every search on 2 cores (1.1-1.2
    s to 0.85 s), and such a worker cannot be one the cluster started ahead. The variables
    in :data:`TRIAL_PROCESS_ONLY` are read only in the trial process once the trainable runs
    (Tune's chdir at its setup), so setting them first in ``__init__`` is the same to the
    trial. Any other variable Tune would pass — AWS credentials, Train's settings — must also
    reach what the trial starts (a runtime_env is inherited by a task's children; some, like
    ``RAY_TRAIN_V2_ENABLED``, are read when the worker imports Ray Train, before ``__init__``):
    when the driver has one, the search keeps Tune's ``runtime_env``. A job-level
    ``runtime_env`` (``distml submit``) still applies: the actor inherits it. Private Tune API,
    looked up defensively: when it changed, Tune's own way runs."""
    try:
        from ray.tune.execution import class_cache
    except ImportError:
        yield
        return
    cache = getattr(class_cache, "_ActorClassCache", None)
    original = getattr(cache, "get", None)
    defaults = getattr(class_cache, "DEFAULT_ENV_VARS", None)
    propagate = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if original is None or defaults is None or propagate is None:
        yield
        return

    def get(self, trainable_cls):
        if trainable_cls not in getattr(self, "_cache", {}):
            env = dict(defaults)
            env.update({k: os.environ[k] for k in propagate if k in os.environ})
            if not set(env) <= TRIAL_PROCESS_ONLY:
                return original(self, trainable_cls)  # children need them too: Tune's way
            self._cache[trainable_cls] = ray.remote(_with_env(trainable_cls, env))
        return self._cache[trainable_cls]

    cache.get = get
    try:
        yield
    finally:
        cache.get = original


def _with_env(trainable_cls: type, env: dict[str, str]) -> type:
    """``trainable_cls`` whose instances first set ``env`` in their process (same name)."""

    def __init__(self, *args, **kwargs):
        os.environ.update(env)
        trainable_cls.__init__(self, *args, **kwargs)

    return type(
        trainable_cls.__name__,
        (trainable_cls,),
        {
            "__init__": __init__,
            "__qualname__": trainable_cls.__qualname__,
            "__module__": trainable_cls.__module__,
        },
    )


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _trial_name_random(trial) -> str:
    return _name(trial, 0)


def _trial_name_searcher(trial) -> str:
    return _name(trial, 1)


def make_searcher(search: str, seed: int, concurrency: int):
    """random/grid: Tune's variant generator, seeded; optuna: TPE, seeded, which learns the
    trials a scheduler stopped as pruned (:mod:`distml.tune._optuna`); both capped."""
    if search == "optuna":
        try:
            import optuna  # noqa: F401
            from ray.tune.search import ConcurrencyLimiter

            from distml.tune._optuna import OptunaTPE
        except ImportError:
            raise MissingDependency.for_extra("optuna", "tune", "tune.search: optuna") from None
        return ConcurrencyLimiter(OptunaTPE(seed=seed), max_concurrent=concurrency)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed, max_concurrent=concurrency)


def make_scheduler(name: str, max_t: int | None, grace: int):
    """ASHA or the median stopping rule on ``iteration`` (what distml trials report)."""
    if name == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # stop_last_trials=False: a trial that reaches max_t ends by itself, after its final
        # report (with it, Tune would stop the trial on its last per-iteration report).
        return ASHAScheduler(
            time_attr="iteration",
            max_t=max(max_t or 1, grace),
            grace_period=grace,
            reduction_factor=3,
            stop_last_trials=False,
        )
    if name == "median":
        from ray.tune.schedulers import MedianStoppingRule

        return MedianStoppingRule(time_attr="iteration", grace_period=grace, min_samples_required=3)
    return None


def make_tuner(
    trainable,
    param_space: dict,
    *,
    mode: str,
    num_samples: int,
    concurrency: int,
    storage_path: str,
    search: str = "random",
    seed: int = 0,
    scheduler=None,
    time_budget_s: float | None = None,
    max_failures: int = 0,
    callbacks: list | None = None,
    name: str = EXPERIMENT,
) -> tune.Tuner:
    """The Tuner every distml search uses (also what benchmark B1 times with trivial trials).

    ``trainable`` reports ``objective``; ``concurrency`` caps trials at once.
    """
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE,
            mode=mode,
            search_alg=make_searcher(search, seed, concurrency),
            scheduler=scheduler,
            num_samples=num_samples,
            time_budget_s=time_budget_s,
            reuse_actors=True,
            trial_dirname_creator=_trial_dirname,
            # distml's trial names (trial_0000…, the trials table's), which a trial reads from
            # its context: the kept best trial's output is named by it (distml.tune.kept)
            trial_name_creator=_trial_name_random
            if search in ("random", "grid")
            else _trial_name_searcher,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=callbacks or [],
        ),
    )


def report_schedule(
    iterations: int | None,
    report_every: int | None,
    grace_period: int | None,
    scheduler: str = "median",
    time_budget: bool = False,
) -> tuple[int | None, int]:
    """(report every N iterations, scheduler grace period) for trials of ``iterations``.

    Each report blocks the trial for a round trip through the driver, so trials send only what
    the scheduler reads (``report_every`` when set):

    * ``asha`` decides at a trial's first report at or after each rung (grace × 3^k): trials
      report every ``grace`` iterations, so every rung is hit exactly (100 rounds: at 50; the
      trial is stopped at 50, not a few rounds later);
    * ``median`` compares running figures: about 10 reports per trial;
    * ``none``: no periodic reports (0): only the final one, and those that carry a
      checkpoint (:class:`distml.tune.session.TrialSession`); with a ``time_budget`` about 10,
      so a trial the budget interrupts has a figure.

    The grace period defaults to a quarter of the iterations, rounded down (at least 1), and
    for ``asha`` to half of them (one rung, at the middle): compared at a quarter of their
    rounds, ASHA kept the configurations that learn fastest, not those that end best — on B2
    (20k rows, 100 rounds, 6 seeds) its best loss was 0.3347 (median) at a quarter against
    0.3305 at half, Optuna serial's 0.3315 (docs/tuning.md).

    >>> report_schedule(100, None, None, "median"), report_schedule(100, None, None, "asha")
    ((10, 25), (50, 50))
    >>> report_schedule(100, None, None, "none")
    (0, 25)
    """
    if not iterations:
        return report_every, grace_period or 1
    grace = grace_period or max(1, iterations // (2 if scheduler == "asha" else 4))
    if report_every:
        return report_every, grace
    if scheduler == "asha":
        return grace, grace
    if scheduler == "none" and not time_budget:
        return 0, grace
    return max(1, iterations // 10), grace


def concurrency_for(
    resources: dict, cpus: float, gpus: float, asked: int | None, trials: int
) -> int:
    """Trials at once: what the cluster's CPUs (and GPUs) hold, capped by ``asked`` and by the
    number of trials; at least 1."""
    cap = trials
    if cpus > 0:
        cap = min(cap, int(resources.get("CPU", 0) // cpus))
    if gpus > 0:
        cap = min(cap, int(resources.get("GPU", 0) // gpus))
    if asked:
        cap = min(cap, asked)
    return max(1, cap)


class Progress(tune.Callback):
    """Logs a line as each trial ends (trial, metric, best so far); counts retried failures."""

    def __init__(
        self, metric: str, mode: str, total: int, search: str = "random", logger: str = "distml"
    ):
        self.metric, self.mode, self.total, self.logger = metric, mode, total, logger
        self.first = 0 if search in ("random", "grid") else 1
        self.failures: dict[str, int] = {}
        self.ended = 0
        self.best: tuple[float, str] | None = None
        self.running: set[str] = set()

    def _log(self) -> logging.Logger:
        return logging.getLogger(self.logger)

    def _show(self, trial=None) -> None:
        """Trials finished/running and the best so far on distml's progress display."""
        from distml import progress

        if trial is not None:
            self.running.discard(trial.trial_id)
        p = progress.current()  # looked up each time: the callback itself stays picklable
        counter = p.counters.get("trials") or p.counter("trials", total=self.total, unit="trials")
        best = f"; best {self.metric}={self.best[0]:.6g} ({self.best[1]})" if self.best else ""
        counter.update(
            completed=self.ended, total=self.total, info=f"{len(self.running)} running{best}"
        )

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended += 1
        result = trial.last_result or {}
        name = _name(trial, self.first)
        value = result.get(OBJECTIVE)
        if result.get("failed"):
            self._show(trial)
            self._log().warning(
                "trial %d/%d %s failed: %s", self.ended, self.total, name, result.get("error")
            )
            return
        status = "completed" if result.get("final") else "stopped"
        if isinstance(value, (int, float)) and math.isfinite(value):
            if self.best is None or (
                value < self.best[0] if self.mode == "min" else value > self.best[0]
            ):
                self.best = (float(value), name)
        best = f"{self.best[0]:.6g} ({self.best[1]})" if self.best else "none yet"
        self._show(trial)
        self._log().info(
            "trial %d/%d %s %s at iteration %s: %s=%.6g; best %s",
            self.ended,
            self.total,
            name,
            status,
            result.get("iteration"),
            self.metric,
            value if isinstance(value, (int, float)) else math.nan,
            best,
        )

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.failures[trial.trial_id] = self.failures.get(trial.trial_id, 0) + 1
        self._log().warning(
            "%s: its process died; retrying from its last checkpoint (retry %d)",
            _name(trial, self.first),
            self.failures[trial.trial_id],
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended += 1
        self.failures[trial.trial_id] = self.failures.get(trial.trial_id, 0) + 1
        self._show(trial)
        self._log().warning(
            "trial %d/%d %s failed: its process died and no retries are left (tune.max_failures)",
            self.ended,
            self.total,
            _name(trial, self.first),
        )

    def get_state(self) -> dict:
        return {"failures": self.failures, "ended": self.ended, "best": self.best}

    def set_state(self, state: dict) -> None:
        self.failures = dict(state.get("failures", {}))
        self.ended = int(state.get("ended", 0))
        self.best = tuple(state["best"]) if state.get("best") else None


def _name(trial, first: int) -> str:
    """distml's name of a trial (the trials table's trial_id): its creation order, from the
    counter Tune's searchers put first in the experiment tag (``first``: 0 for Tune's variant
    generator, 1 for the other searchers)."""
    head = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return f"trial_{int(head) - first:04d}" if head.isdigit() else trial.trial_id


class _NoMetricFiles(logging.Filter):
    """Tune warns that it found no per-trial result files: distml turned them off on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to fetch metrics")


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Tune's warning about the per-trial files distml turned off, and Optuna's INFO line per
    told trial, are noise next to distml's own progress lines."""
    analysis = logging.getLogger("ray.tune.analysis.experiment_analysis")
    quiet = _NoMetricFiles()
    analysis.addFilter(quiet)
    try:
        import optuna
    except ImportError:
        optuna = None
    level = optuna.logging.get_verbosity() if optuna else None
    if optuna:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        if optuna:
            optuna.logging.set_verbosity(level)
        analysis.removeFilter(quiet)
