"""The interface every job kind implements.

Lifecycle of a run (driven by :func:`distml.api.run`):

1. ``Job(spec)`` — the kind's typed spec, already validated.
2. ``job.check_data()`` — on the driver, before any cluster work: the data checks of
   :func:`distml.runtime.data.validate_data` plus the kind's own rules; returns a ``DataInfo``.
3. ``job.run(ctx)`` — on the driver with Ray connected: schedules the work (one Ray task, a
   batch of tasks, a Train worker group…) and returns a :class:`JobOutput`.
4. The driver writes the output to the run directory (atomic files, ``_SUCCESS`` last).

Jobs never parse CLI arguments or YAML and never write outside what ``JobOutput`` carries, so the
same kind runs unchanged on a laptop or a remote cluster (where workers do not share the driver's
disk).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from distml.runtime.data import DataInfo, validate_data
from distml.spec.base import JobSpec


@dataclass
class JobOutput:
    """What a job hands back to the driver to be written."""

    metrics: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)  # name -> pandas.DataFrame
    files: dict[str, bytes] = field(default_factory=dict)  # relative path -> bytes
    texts: dict[str, str] = field(default_factory=dict)  # relative path -> text
    info: dict[str, Any] = field(default_factory=dict)  # extra manifest fields
    best_config: dict[str, Any] | None = None


@dataclass
class RunContext:
    """Everything a job may use while it runs."""

    spec: JobSpec
    data: DataInfo
    run_dir: Any  # distml.runtime.artifacts.RunDir
    cluster: Any  # distml.runtime.cluster.ClusterInfo
    log: logging.Logger
    resume: bool = False


class Job:
    """Base class of a job kind: subclasses implement :meth:`run` and declare their abilities.

    Everything above the kinds asks the job, through the registry, what it can do — nothing above
    names a kind. The defaults here say "not able"; a kind overrides what it offers:

    - **checks**: :meth:`check_spec` (spec rules that need the kind's libraries, run before any
      cluster work, also for every searched value), :meth:`check_data`.
    - **tune hooks** (:mod:`distml.tune`): :meth:`tune_metric_names`, :meth:`tune_iterations`,
      :meth:`tune_iteration_metrics`, :meth:`tune_final_overrides`; a kind that runs a trial
      itself sets :attr:`tune_trial_hook` and implements ``tune_prepare`` / ``tune_trial`` /
      ``tune_refit`` (see :class:`distml.jobs._supervised.SupervisedJob`). Without them a trial
      runs the kind's whole pipeline.
    - **resources**: :meth:`train_execution` — the Train worker-group decision for this spec (None:
      the kind runs as Ray tasks).
    - **predictor**: :meth:`load_predictor` (None: the kind does not predict).
    - **report**: :meth:`report_sections` — extra ``report.html`` sections beyond the generic,
      table-driven ones.
    """

    #: whether ``data.target`` is required
    needs_target: bool = True
    #: distributions the kind relies on beyond distml's own (their versions go in the manifest)
    libraries: tuple[str, ...] = ()
    #: whether the kind runs one search trial itself (``tune_prepare``/``tune_trial``/
    #: ``tune_refit``); False: a trial runs :meth:`run` as a whole
    tune_trial_hook: bool = False

    def __init__(self, spec: JobSpec):
        self.spec = spec

    def check_spec(self) -> None:
        """Spec rules beyond the pydantic model (SpecError naming the field); default none."""

    def check_data(self) -> DataInfo:
        """Validate the data before the cluster starts (override to add kind-specific rules)."""
        return validate_data(self.spec.data, needs_target=self.needs_target)

    def run(self, ctx: RunContext) -> JobOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def worker_modules(self) -> tuple[str, ...]:
        """Modules this spec's worker tasks import (the kind's task code and its libraries).
        The workers a per-run cluster starts beside the driver import them while the driver
        plans (Ray's ``preload_python_modules``), so the first tasks do not. Default none:
        every worker process of the run pays the list, Train controllers and Tune trial
        actors included, so a kind names modules only where its first tasks wait on them."""
        return ()

    def driver_modules(self) -> tuple[str, ...]:
        """Modules this spec's driver side imports to run the job (the fit's libraries). They
        are imported in a background thread while the cluster starts, so the job does not wait
        for them. Default none."""
        return ()

    # ------------------------------------------------------------------ tune abilities

    def tune_metric_names(self) -> set[str] | None:
        """The metric names a trial of this kind reports (None: not known before it runs)."""
        return None

    def tune_iterations(self) -> int | None:
        """Iterations a trial reports (None: one shot, so no scheduler can stop it early)."""
        return None

    def tune_iteration_metrics(self) -> set[str] | None:
        """The metrics the kind computes every iteration (None: all of its metrics)."""
        return None

    def tune_final_overrides(self, result: dict) -> dict[str, Any]:
        """Spec overrides that make the refit of the best trial reproduce it."""
        return {}

    # ------------------------------------------------------------------ resources

    def train_execution(self, data: DataInfo, resources: dict) -> Any | None:
        """The Train worker-group decision (``distml.runtime`` ``Decision``) when this spec
        would train in a worker group on a cluster with ``resources``; None for Ray tasks."""
        return None

    def object_store_bytes(self, data: DataInfo, resources: dict) -> int | None:
        """The object store size a run's own cluster should have for this spec on a machine
        with ``resources`` (what the job streams through the store at once); None: Ray's."""
        return None

    # ------------------------------------------------------------------ predictor, report

    @classmethod
    def load_predictor(
        cls, run_dir: Path, manifest: dict, allow_module: tuple[str, ...] = ()
    ) -> Any | None:
        """The predictor of a finished run of this kind (see :mod:`distml.jobs.predictors`),
        or None when the kind does not predict. Raises DataError naming the run dir and the
        file when its model files are missing, damaged or not what the kind saves."""
        return None

    @classmethod
    def report_sections(cls) -> list[Callable[[Any], Any]]:
        """Extra ``report.html`` section builders ``f(RunView) -> Section | None``."""
        return []

    def fit_predict_fold(self, train: Any, test: Any) -> dict:
        """Fit on the rows of ``train`` and predict the rows of ``test`` (two pandas DataFrames
        holding the target and the columns the kind uses); the ability the ``ladder`` kind needs
        of a candidate. Returns ``{"task", "y_true", "pred", "proba", "classes"}``: for
        classification ``y_true``/``pred`` are codes into ``classes`` and ``proba`` is
        ``(len(test), len(classes))`` or None; for regression values and ``classes`` None."""
        raise NotImplementedError(
            f"kind {self.spec.kind} cannot fit and predict a fold (the "
            "ladder kind needs this ability of a candidate)"
        )
