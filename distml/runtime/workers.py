"""The one worker-group launcher (Ray Train V2), what the xgboost and torch kinds share: the
right-sizing decision (DESIGN.md §5), the Train run configuration (checkpoints, failures, the
callbacks a caller such as a Tune trial adds: :func:`use_train_callbacks`), running and
releasing a trainer, and how long a worker stopped by the fault hook
(:mod:`distml.runtime.faults`, RELIABILITY.md T3) waits before it exits.

Right-sizing: a worker group costs ~13 s to start here, so a job runs in one Ray task unless
``resources.num_workers > 1``, GPUs are requested, or the data would not fit one worker's memory
budget (then the group gets as many workers as the budget asks for, bounded by the cluster's
CPUs). The decision and its reason go to ``manifest.json`` ``execution``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Iterator

#: overrides the memory budget of one worker, in bytes (default: a share of the cluster's
#: memory per CPU, see :func:`worker_budget`)
BUDGET_ENV = "DISTML_WORKER_MEMORY_BUDGET"
#: in-memory bytes per value while training (the frame, the typed copy and the training matrix)
BYTES_PER_VALUE = 24
EXPERIMENT = "train"


#: Train V2's poll of its workers; every report, a finished group and a failed worker are seen
#: only when the controller polls (Ray's default is 2 s: up to 2 s idle after the last epoch)
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
#: distml's poll when ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` is not set (:func:`fit` passes it
#: on to the controller and the workers); a poll is one small actor call per worker
POLL_S = 0.25
#: the least seconds between two reports with checkpoints (:class:`Cadence`): what keeps their
#: cost a small share of the loop, whatever the poll
CHECKPOINT_INTERVAL_S = 2.0


def poll_interval_s() -> float:
    """Seconds between two polls of a Train controller distml starts."""
    return float(os.environ.get(POLL_ENV, POLL_S))


def crash_delay_s() -> float:
    """How long a Train worker stopped by the fault hook (:mod:`distml.runtime.faults`) waits
    before exiting: Train V2 collects reports (and their checkpoints) when it polls the workers
    (:func:`poll_interval_s`); waiting for the last one to be registered makes the restart
    provably resume from it rather than from whatever was polled before."""
    return 2.5 * poll_interval_s()


def report_interval_s() -> float:
    """Seconds between two Train reports: at least :data:`CHECKPOINT_INTERVAL_S`, and never
    less than a poll (a report made before the previous one was taken blocks until it is)."""
    return max(CHECKPOINT_INTERVAL_S, poll_interval_s())


class Cadence:
    """When to report (and checkpoint) from a training loop: at the first step, then once at
    least :func:`report_interval_s` passed, so reports never stall training. Every worker must
    report at the same steps; ``agree(flag) -> bool`` makes rank 0's clock decide for all
    (an allreduce of the flag)."""

    def __init__(self, agree, interval_s: float | None = None):
        self.agree = agree
        self.interval = report_interval_s() if interval_s is None else interval_s
        self.last = -math.inf
        self.reports = 0

    def due(self) -> bool:
        import time

        now = time.monotonic()
        if self.agree(now - self.last >= self.interval):
            self.last = now
            self.reports += 1
            return True
        return False


@dataclass
class Execution:
    """Which path a job takes and why (the ``execution`` record of the manifest)."""

    path: str  # single_task | train_worker_group
    workers: int
    reason: str
    data_bytes: int | None = None
    budget_bytes: int | None = None

    @property
    def worker_group(self) -> bool:
        return self.path == "train_worker_group"

    def record(self, **extra: Any) -> dict:
        out: dict[str, Any] = {"path": self.path, "workers": self.workers, "reason": self.reason}
        if self.data_bytes is not None:
            out["data_bytes_estimate"] = self.data_bytes
            out["worker_budget_bytes"] = self.budget_bytes
        out.update(extra)
        return out


def data_bytes(info) -> int | None:
    """Estimated memory to train on the data of ``info`` (a DataInfo), or None if unknown."""
    rows = info.source.rows
    if rows is None:  # CSV: no row count without reading; decoded size ~ 2× the text
        return int(2 * sum(info.source.sizes)) if info.source.sizes else None
    return int(rows) * (len(info.features) + 1) * BYTES_PER_VALUE


def worker_budget(cluster_resources: dict, cpus_per_worker: float) -> int | None:
    """Memory one worker may use: half the cluster's memory per CPU times its CPUs."""
    if os.environ.get(BUDGET_ENV):
        return int(float(os.environ[BUDGET_ENV]))
    memory, cpus = cluster_resources.get("memory"), cluster_resources.get("CPU")
    if not memory or not cpus:
        return None
    return int(0.5 * float(memory) / float(cpus) * cpus_per_worker)


def choose(spec, info, cluster_resources: dict | None) -> Execution:
    """Right-size a job (DESIGN.md §5): one Ray task unless more is needed."""
    res = spec.resources
    if res.num_workers > 1:
        return Execution(
            "train_worker_group", res.num_workers, f"resources.num_workers is {res.num_workers}"
        )
    if res.gpus_per_worker > 0:
        return Execution(
            "train_worker_group",
            1,
            f"resources.gpus_per_worker is {res.gpus_per_worker:g}: GPU training "
            "runs in a Ray Train worker",
        )
    size = data_bytes(info)
    budget = worker_budget(cluster_resources or {}, res.cpus_per_worker)
    if size is not None and budget and size > budget:
        cpus = float((cluster_resources or {}).get("CPU") or 1)
        fit = max(1, int(cpus // res.cpus_per_worker))
        want = math.ceil(size / budget)
        if fit >= 2:
            n = min(want, fit)
            return Execution(
                "train_worker_group",
                n,
                f"the data (~{size / 2**20:.0f} MiB in memory) exceed one worker's "
                f"budget (~{budget / 2**20:.0f} MiB): {n} workers share it",
                size,
                budget,
            )
        return Execution(
            "single_task",
            1,
            f"the data (~{size / 2**20:.0f} MiB) exceed one worker's budget "
            f"(~{budget / 2**20:.0f} MiB) but the cluster has room for one worker "
            "only",
            size,
            budget,
        )
    return Execution(
        "single_task",
        1,
        "resources.num_workers is 1 and the data fit one worker"
        + (
            f" (~{size / 2**20:.1f} MiB of a ~{budget / 2**20:.0f} MiB budget)"
            if size is not None and budget
            else ""
        ),
        size,
        budget,
    )


def scaling_config(res, workers: int):
    from ray.train import ScalingConfig

    per_worker = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker:
        per_worker["GPU"] = res.gpus_per_worker
    return ScalingConfig(
        num_workers=workers, use_gpu=res.gpus_per_worker > 0, resources_per_worker=per_worker
    )


def run_config(ctx, max_failures: int):
    """Checkpoints under the run directory; ``--resume`` reuses them (Train V2 restores from the
    same ``RunConfig(name, storage_path)``), a fresh run starts from an empty folder."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    from distml.runtime.artifacts import run_fingerprint

    storage = ctx.run_dir.file("checkpoints")
    if not ctx.resume:
        shutil.rmtree(storage / EXPERIMENT, ignore_errors=True)
    elif (storage / EXPERIMENT).exists():  # resume only the run of this very spec and data
        ctx.run_dir.check_resume(run_fingerprint(ctx.spec, ctx.data))
    else:
        ctx.run_dir.write_fingerprint(run_fingerprint(ctx.spec, ctx.data))  # starts afresh
    storage.mkdir(parents=True, exist_ok=True)
    return RunConfig(
        name=EXPERIMENT,
        storage_path=str(storage),
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        callbacks=train_callbacks(),
    )  # a Tune trial's forwarding, else none


_CALLBACKS: Callable[[], list] | None = None  # set by use_train_callbacks


@contextlib.contextmanager
def use_train_callbacks(factory: Callable[[], list]) -> Iterator[None]:
    """Within the block, Train runs this process starts get the callbacks ``factory()`` returns
    (a Tune trial that drives a worker group forwards its reports to Tune this way)."""
    global _CALLBACKS
    previous, _CALLBACKS = _CALLBACKS, factory
    try:
        yield
    finally:
        _CALLBACKS = previous


def train_callbacks() -> list:
    """The Ray Train callbacks of :func:`use_train_callbacks` for a run starting now, else []."""
    return list(_CALLBACKS()) if _CALLBACKS is not None else []


def fit(trainer, fixed_cluster: bool | None = None):
    """``trainer.fit()`` with Train's poll at :func:`poll_interval_s` (Train passes the variable
    on to its controller and workers; the process's own environment is restored after), then
    release the Train controller actor: Train V2 keeps its handle in a SIGINT handler it
    installs on the main thread, which would keep the controller (and the dataset actors it
    owns) alive after the job (RELIABILITY.md promise 5).

    On a cluster distml started on this machine (``fixed_cluster``, default
    :func:`distml.runtime.cluster.fixed_size`) the group skips what only an autoscaled cluster
    uses: the autoscaler requests (:func:`fixed_cluster_train`) and the preemption watcher (an
    actor that polls for nodes being drained)."""
    import gc
    import signal
    import threading

    from distml.runtime import cluster

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    fixed = cluster.fixed_size() if fixed_cluster is None else fixed_cluster
    own = {POLL_ENV: str(POLL_S)}
    if fixed:
        own[PREEMPTION_ENV] = "0"
    own = {k: v for k, v in own.items() if k not in os.environ}
    os.environ.update(own)
    try:
        with fixed_cluster_train() if fixed else contextlib.nullcontext():
            return trainer.fit()
    finally:
        for k in own:
            os.environ.pop(k, None)
        if main and previous is not None:
            signal.signal(signal.SIGINT, previous)
        gc.collect()


#: Train's preemption watcher (an actor per group polling Ray for drained nodes); passed on to
#: the controller like the poll
PREEMPTION_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


@contextlib.contextmanager
def fixed_cluster_train() -> Iterator[None]:
    """Within the block, Train runs this process starts use
    :class:`distml.runtime._train_policy.LocalFixedScalingPolicy` (no autoscaler requests)
    where Train would use its fixed policy, start no ``DatasetManager`` when given no datasets
    (:class:`~distml.runtime._train_policy.DatasetsOnlyWhenGiven`) and do not wait for the
    placement-group cleaner to stop
    (:class:`~distml.runtime._train_policy.CleanerStoppedInBackground`). Private Ray API, looked
    up defensively: where it moved, Train runs as it ships."""
    try:
        from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy
        from ray.train.v2.api import data_parallel_trainer as trainer_module

        from distml.runtime._train_policy import (
            CleanerStoppedInBackground,
            DatasetsOnlyWhenGiven,
            LocalFixedScalingPolicy,
        )
    except ImportError:
        yield
        return
    original = getattr(trainer_module, "create_scaling_policy", None)
    replaced = {"DatasetsCallback": DatasetsOnlyWhenGiven}
    replaced["PlacementGroupCleanerCallback"] = CleanerStoppedInBackground
    saved = {name: getattr(trainer_module, name, None) for name in replaced}
    if original is None or None in saved.values():
        yield
        return

    def create_scaling_policy(scaling_config):
        policy = original(scaling_config)
        if type(policy) is FixedScalingPolicy:
            return LocalFixedScalingPolicy(scaling_config=scaling_config)
        return policy

    trainer_module.create_scaling_policy = create_scaling_policy
    for name, cls in replaced.items():
        setattr(trainer_module, name, cls)
    try:
        yield
    finally:
        trainer_module.create_scaling_policy = original
        for name, cls in saved.items():
            setattr(trainer_module, name, cls)


def discard_checkpoints(ctx) -> None:
    """Checkpoints are for restarts and ``--resume``; a finished run keeps only its model."""
    storage = ctx.run_dir.file("checkpoints")
    shutil.rmtree(storage / EXPERIMENT, ignore_errors=True)
    try:
        storage.rmdir()  # only when empty (a search keeps its experiment there)
    except OSError:
        pass


def read_json_file(checkpoint, name: str) -> dict:
    with checkpoint.as_directory() as d:
        with open(os.path.join(d, name), encoding="utf-8") as fh:
            return json.load(fh)
