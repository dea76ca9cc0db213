"""The one fault-injection hook (RELIABILITY.md T1, T3, T4, T6): a test makes distml fail at a
named place, once, deterministically (as Ray's own ``fail_iters`` tests do).

``DISTML_FAULT=WHERE:K`` (or ``WHERE:K:P`` for a partition task, and ``...@MARKER`` to name the
marker file) is read on the driver (:func:`from_env`) and handed to tasks and workers explicitly.
WHERE names, and what K counts there:

==========================  =================================================================
``train.iteration``         a training loop exits its process at round/epoch K (1-based):
                            xgboost and torch, single task and worker group (there the last
                            rank exits). ``train.round`` and ``train.epoch`` say the same.
``manymodels.groups``       the many-models driver stops (exit 4) once K groups are collected,
                            after checkpointing them.
``kmeans.pass``             the k-means driver stops (exit 4) after pass K, after checkpointing.
``pca.moments``,            the task of partition P (default 0) of that pca/k-means pass exits
``pca.incremental``,        its process before batch K (0-based); Ray retries the task.
``pca.transform``,
``kmeans.sample``,
``kmeans.minibatch``,
``kmeans.lloyd``,
``kmeans.final``
``pca.dask``, ``kmeans.dask``  ``engine: dask``: the Dask task checking chunk P of data pass K
                            (0-based) exits its process; Ray retries it.
``tune.iteration``          a Tune trial process exits at iteration K (1-based).
==========================  =================================================================

*Once*: the first process that fails creates the marker file (``O_EXCL``); a process that finds
it does not fail again (the retry, the restarted group, the resumed run). MARKER defaults to a
file in the temporary folder named after the driver's process and the fault.

The variables of earlier versions keep working (tests use them): ``DISTML_TRAIN_FAULT=MARKER:K``
(``train.iteration``, ``manymodels.groups`` and ``kmeans.pass``), ``DISTML_FAULT_INJECT=
MARKER:STAGE:P:K`` (``pca.STAGE`` / ``kmeans.STAGE``), ``DISTML_TUNE_FAULT=MARKER:K``
(``tune.iteration``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass

from distml.errors import SpecError

ENV = "DISTML_FAULT"
#: earlier names, kept as aliases: env var -> the WHERE names it covers
TRAIN_ENV, STAGE_ENV, TUNE_ENV = "DISTML_TRAIN_FAULT", "DISTML_FAULT_INJECT", "DISTML_TUNE_FAULT"
TRAIN_SITES = ("train.iteration", "manymodels.groups", "kmeans.pass")
STAGES = {
    "pca": ("moments", "incremental", "transform", "dask"),
    "kmeans": ("sample", "minibatch", "lloyd", "final", "dask"),
}
SITES = frozenset(
    TRAIN_SITES
    + ("tune.iteration",)
    + tuple(f"{kind}.{s}" for kind, stages in STAGES.items() for s in stages)
)
SYNONYMS = {"train.round": "train.iteration", "train.epoch": "train.iteration"}


@dataclass(frozen=True)
class Fault:
    """Fail at ``step`` of any place in ``where`` (and partition ``partition``, for tasks)."""

    where: frozenset[str]
    step: int
    marker: str
    partition: int | None = None

    def at(self, where: str, step: int, partition: int | None = None) -> bool:
        return (
            where in self.where
            and step == self.step
            and (self.partition is None or partition is None or partition == self.partition)
        )


def parse(text: str) -> Fault:
    """``"WHERE:K[:P][@MARKER]"`` -> :class:`Fault`; a SpecError names what is wrong."""
    body, _, marker = text.strip().partition("@")
    bits = body.split(":")
    where = SYNONYMS.get(bits[0].strip(), bits[0].strip())
    if where not in SITES:
        raise SpecError(
            f"{ENV}: unknown place {bits[0]!r}; known: {', '.join(sorted(SITES | set(SYNONYMS)))}"
        )
    try:
        numbers = [int(b) for b in bits[1:]]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or (len(numbers) == 2 and where.split(".")[0] not in STAGES):
        raise SpecError(
            f"{ENV} must be WHERE:K (WHERE:K:PARTITION for a pca/kmeans task), "
            f"optionally @MARKER; got {text!r}"
        )
    marker = marker or os.path.join(
        tempfile.gettempdir(), f"distml-fault-{os.getpid()}-{body.replace(':', '-')}"
    )
    partition = numbers[1] if len(numbers) == 2 else (0 if where.split(".")[0] in STAGES else None)
    return Fault(frozenset({where}), numbers[0], marker, partition)


def _legacy(env: str, raw: str) -> Fault:
    if env == STAGE_ENV:
        marker, stage, part, batch = raw.rsplit(":", 3)
        return Fault(frozenset(f"{k}.{stage}" for k in STAGES), int(batch), marker, int(part))
    marker, step = raw.rsplit(":", 1)
    sites = TRAIN_SITES if env == TRAIN_ENV else ("tune.iteration",)
    return Fault(frozenset(sites), int(step), marker)


def from_env(*where: str) -> Fault | None:
    """The fault asked for in the environment, if it names one of the places ``where``
    (:data:`ENV` first, then the earlier variables); None otherwise. Read on the driver."""
    found = []
    if os.environ.get(ENV):
        found.append(parse(os.environ[ENV]))
    for env in (TRAIN_ENV, STAGE_ENV, TUNE_ENV):
        if os.environ.get(env):
            found.append(_legacy(env, os.environ[env]))
    wanted = set(where)
    return next((f for f in found if f.where & wanted), None)


def _claim(
    fault: Fault, where: str, step: int, partition: int | None = None, rank: int = 0
) -> bool:
    """Create the marker file, recording where the fault happened (a task stage's ``stage``,
    ``partition`` and ``batch``; else ``iteration`` and ``rank``); False when it exists (this
    is the retry)."""
    try:
        fd = os.open(fault.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    kind, _, name = where.partition(".")
    record = (
        {"stage": name, "partition": partition, "batch": step}
        if name in STAGES.get(kind, ())
        else {"iteration": step, "rank": rank}
    )
    os.write(fd, json.dumps({"pid": os.getpid(), "where": where, "step": step, **record}).encode())
    os.close(fd)
    return True


def crash(
    fault: Fault | None,
    where: str,
    step: int,
    *,
    partition: int | None = None,
    rank: int = 0,
    world: int = 1,
    delay_s: float = 0.0,
) -> None:
    """Exit this process (``os._exit(1)``) at ``where``/``step``, the first time only; in a
    group of ``world`` processes only the last rank exits. ``delay_s``: wait before exiting
    (a Train worker lets its last report be collected first)."""
    if fault is None or not fault.at(where, step, partition) or rank != world - 1:
        return
    if not _claim(fault, where, step, partition, rank):
        return
    if delay_s:
        time.sleep(delay_s)
    os._exit(1)


def once(fault: Fault | None, where: str, step: int) -> bool:
    """True the first time ``step`` reaches the fault's step at ``where`` (for a driver, which
    raises rather than exits); the marker records it, so a rerun does not fault again."""
    if fault is None or where not in fault.where or step < fault.step:
        return False
    return _claim(fault, where, step)
