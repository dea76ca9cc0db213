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
from typing import Any

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
    """Base class of a job kind; subclasses implement :meth:`run` (and may extend the checks)."""

    #: whether ``data.target`` is required
    needs_target: bool = True

    def __init__(self, spec: JobSpec):
        self.spec = spec

    def check_data(self) -> DataInfo:
        """Validate the data before the cluster starts (override to add kind-specific rules)."""
        return validate_data(self.spec.data, needs_target=self.needs_target)

    def run(self, ctx: RunContext) -> JobOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def fit_predict_fold(self, train: Any, test: Any) -> dict:
        """Fit on the rows of ``train`` and predict the rows of ``test`` (two pandas DataFrames
        holding the target and the columns the kind uses); the ability the ``ladder`` kind needs
        of a candidate. Returns ``{"task", "y_true", "pred", "proba", "classes"}``: for
        classification ``y_true``/``pred`` are codes into ``classes`` and ``proba`` is
        ``(len(test), len(classes))`` or None; for regression values and ``classes`` None."""
        raise NotImplementedError(f"kind {self.spec.kind} cannot fit and predict a fold (the "
                                  "ladder kind needs this ability of a candidate)")
