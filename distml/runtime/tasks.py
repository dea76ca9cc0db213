"""The one task runner of distml (DESIGN.md §12): Ray tasks over partitions, a fixed merge
tree, retries, and results collected as tasks finish.

Tasks are pure functions of their inputs, so Ray retries a task whose worker or node died
(``max_retries``) and the result is unchanged; a Python error inside a task is not retried (it
would fail again). The fault hook (:mod:`distml.runtime.faults`) is read on the driver and handed
to the tasks as an argument.

- :meth:`Runner.map` schedules ``fn(part, *args)`` for every partition (at most ``cap`` at
  once when the spec caps concurrency).
- :meth:`Runner.reduce` merges partial states with a fixed tree of merge tasks
  (:data:`FAN_IN` at a time), so the driver receives one merged state and the floating-point
  result does not depend on which task finished first (RELIABILITY.md T4).
- :meth:`Runner.stream` yields results as tasks finish and cancels the rest when the caller
  stops (an error, a fault), so their CPUs are free again (RELIABILITY.md promise 5).
- :meth:`Runner.get` is ``ray.get`` that re-raises a task's own distml error as itself.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

from distml.errors import DistmlError, JobFailed, one_line
from distml.runtime import threads

#: merge tasks take this many partial results each
FAN_IN = 8


def merge_all(*parts):
    """Merge partial states left to right (the body of every merge task); a state whose class
    has ``merge_many(parts)`` merges them all in one call instead (one copy, not one per
    part), with the same result."""
    many = getattr(type(parts[0]), "merge_many", None)
    if callable(many):
        return many(list(parts))
    return functools.reduce(lambda a, b: a.merge(b), parts)


class Runner:
    """Schedules the Ray tasks of one job over its partitions.

    Each task reserves ``resources.cpus_per_worker`` CPUs and is retried ``max_retries`` times:
    ``resources.max_failures`` when the spec sets it, else 3, and at least ``min_retries``.
    With ``limit_concurrency``, ``resources.num_workers`` (when the spec sets it) caps how many
    partition tasks of a :meth:`map` run at once (default: as many as the cluster fits).
    """

    def __init__(
        self, resources, log=None, *, min_retries: int = 0, limit_concurrency: bool = True
    ):
        self.log = log
        explicit = resources.model_fields_set
        retries = resources.max_failures if "max_failures" in explicit else 3
        self.opts = dict(
            num_cpus=resources.cpus_per_worker,
            max_retries=max(min_retries, retries),
            retry_exceptions=False,
        )
        self.cap = (
            resources.num_workers if limit_concurrency and "num_workers" in explicit else None
        )
        self.tasks = 0
        self._remotes: dict[tuple, Any] = {}
        self._watch = None

    def remote(self, fn: Callable, **options):
        """``fn`` as a Ray remote function with the runner's options (plus ``options``)."""

        key = (fn, tuple(sorted(options.items())))
        if key not in self._remotes:
            self._remotes[key] = threads.remote(fn, **self.opts, **options)
        return self._remotes[key]

    def put(self, value):
        import ray

        return ray.put(value)

    def map(self, fn: Callable, parts: list, *args, num_returns: int = 1) -> list:
        """``fn(part, *args)`` for every partition, as object refs in partition order (a list
        of ``num_returns`` refs per partition when it is more than 1)."""
        import ray

        remote = self.remote(fn, **({"num_returns": num_returns} if num_returns != 1 else {}))
        refs: list = []
        pending: list = []
        for p in parts:
            if self.cap is not None and len(pending) >= self.cap:
                _, pending = ray.wait(pending, num_returns=1)
            ref = remote.remote(p, *args)
            refs.append(ref)
            pending.append(ref if num_returns == 1 else ref[0])
        self.tasks += len(parts)
        self._watch = (fn.__name__.strip("_").removesuffix("_task"), refs, parts)
        return refs

    def map_yields(self, fn: Callable, parts: list, *args) -> list[list]:
        """``fn(part, *args)``, a generator, as one Ray streaming-generator task per partition:
        the refs of what each task yielded, in order, per partition. Each yielded value is an
        object of its own, owned by the caller and kept while its ref lives, so a task holds
        one at a time; a retried task's values are not repeated. A task's error is its last
        ref (``get`` raises it)."""
        remote = self.remote(fn)
        gens: list = []
        out: list[list] = []
        for p in parts:
            if self.cap is not None and len(gens) - len(out) >= self.cap:
                out.append(list(gens[len(out)]))  # the oldest task's values: it is done
            gens.append(remote.remote(p, *args))
        out += [list(g) for g in gens[len(out) :]]
        self.tasks += len(parts)
        return out

    def _track(self, refs: list) -> None:
        """Count the partitions (and rows) of the last map as its tasks finish, on distml's
        progress display; nothing when progress is off."""
        import ray

        from distml import progress

        show = progress.current()
        watch, self._watch = self._watch, None
        if not show.active or watch is None or watch[1] is not refs:
            return
        name, refs, parts = watch
        rows_of = {r: getattr(p, "rows", None) for r, p in zip(refs, parts)}
        known = sum(rows_of[r] or 0 for r in refs)
        counter = show.counter(f"{name} pass", total=len(parts), unit="partitions")
        pending, done_rows = list(refs), 0
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0, fetch_local=False)
            done_rows += sum(rows_of[r] or 0 for r in done)
            counter.update(
                completed=len(refs) - len(pending),
                info=f"{done_rows:,} of {known:,} rows" if known else None,
            )
        counter.done()

    def reduce(self, refs: list, fan_in: int = FAN_IN, merge: Callable = merge_all):
        """Merge partial states with a fixed tree of merge tasks; returns the merged value."""
        task = self.remote(merge)
        leaves = refs
        while len(refs) > 1:
            groups = [refs[i : i + fan_in] for i in range(0, len(refs), fan_in)]
            refs = [task.remote(*g) if len(g) > 1 else g[0] for g in groups]
            self.tasks += sum(len(g) > 1 for g in groups)
        self._track(leaves)
        return self.get(refs[0])

    def stream(self, refs: list, batch: int = 4) -> Iterator[tuple[list, int]]:
        """``(results, n_pending)`` as tasks finish, up to ``batch`` at a time, so results
        arrive while other tasks run; when the caller stops early (an error, a fault) the
        unfinished tasks are cancelled. Use it in ``contextlib.closing``."""
        import ray

        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(
                    pending, num_returns=min(len(pending), batch), timeout=None
                )
                yield ray.get(done), len(pending)
        finally:
            if pending:  # a lost task failed the job: free the CPUs of the others
                cancel_all(pending)

    def get(self, refs, what: str = "an out-of-core task"):
        """``ray.get`` that re-raises a task's own DataError/SpecError as itself."""
        import ray

        if isinstance(refs, list):
            self._track(refs)
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, DistmlError):
                raise cause from None
            raise JobFailed(
                f"{what} failed: {type(cause or e).__name__}: {one_line(cause or e, 500)}"[:500]
            ) from e
        except ray.exceptions.RayError as e:
            text = str(e).strip().splitlines()
            raise JobFailed(
                f"{what} failed after {self.opts['max_retries']} retries: "
                f"{type(e).__name__}: {text[0] if text else ''}"[:500]
            ) from e


#: how long :func:`cancel_all` lets tasks that are ending anyway end before it cancels the rest
SETTLE_S = 0.2


def cancel_all(refs: list, grace_s: float = 2.0, settle_s: float = SETTLE_S) -> None:
    """Cancel ``refs`` and make it stick: a cancel that races a task's hand-over to its worker
    can be lost (the task then runs to its end, holding its CPU), so the tasks not ended after
    ``grace_s`` are cancelled again, then force-cancelled (their worker process is killed).

    The tasks that end within ``settle_s`` are not cancelled at all. In Ray 2.60 a cancel that
    meets the task's own completion can abort the cancelling process (``task_manager.cc``
    "Tried to complete task that was not pending", the race of ray-project/ray#54798), and
    the moment a caller stops is when its other short tasks are ending and queued ones are
    being handed to the workers they free; after the pause only tasks well inside their run
    (or still queued) are cancelled."""
    import ray

    if settle_s > 0 and refs:
        _, refs = ray.wait(refs, num_returns=len(refs), timeout=settle_s, fetch_local=False)
    for force in (False, False, True):
        for ref in refs:
            try:
                ray.cancel(ref, force=force)
            except Exception:  # noqa: BLE001 - already finished or gone: nothing to free
                pass
        _, refs = ray.wait(refs, num_returns=len(refs), timeout=grace_s / 2, fetch_local=False)
        if not refs:
            return
