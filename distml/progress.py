"""Progress of a run while it works: one abstraction for every kind.

Three displays, chosen by the caller (the CLI: ``--progress auto|rich|plain|off``; ``auto`` is
``rich`` when stderr is a terminal, ``plain`` when it is not, ``off`` under ``--json``):

* ``rich``  — a live panel on stderr (the ``rich`` library): the current stage and one line per
  counter (partitions, groups, rounds, trials) with a bar, ``done/total`` and the latest figure;
* ``plain`` — log lines through the ``distml`` logger (stderr and ``run.log``): one per stage,
  and per counter at most every :data:`LINE_INTERVAL_S` seconds plus a last line when it ends;
* ``off``   — nothing (the default of the Python API, and of ``--json``).

The driver holds the display; code reports to :func:`current`, which is a no-op object when
progress is off, so reporting costs one attribute lookup::

    from distml import progress

    p = progress.current()
    p.stage("train", "many-models")               # validate, read, train, evaluate, write, report
    groups = p.counter("groups", total=n_groups, unit="groups")
    groups.advance(len(batch), info=f"{failed} failed")
    groups.done()

**Inside a Ray task** (epochs, boosting rounds) the driver's display is out of reach. The driver
asks for a :class:`WorkerReporter` *before* submitting the task and passes it along (it pickles;
it is ``None`` when progress is off, so the task pays nothing)::

    reporter = progress.worker_reporter()          # driver; None when progress is off
    ray.remote(train).remote(..., reporter)

    def train(..., reporter):                       # worker
        for epoch in range(epochs):
            ...
            if reporter is not None:
                reporter.update("epochs", epoch + 1, total=epochs, info=f"valid-loss={v:.4g}")
        if reporter is not None:
            reporter.update("epochs", epochs, final=True)

``reporter.stage(name)`` moves the stage from the worker (``read`` → ``train`` → ``evaluate``);
each stage is shown once per run and in :data:`STAGES` order (see :meth:`Progress.stage`).
Updates are throttled on the worker (at most one message per :data:`WORKER_INTERVAL_S`, the
final one always sent) and sent fire-and-forget to a small actor that a driver thread drains;
a reporter whose channel is gone goes silent — reporting never fails a run. xgboost kinds use
:func:`xgboost_callback`; the supervised pipeline puts the reporter on the job as ``_progress``
for the single-task fit (``distml/jobs/_supervised.py``). The driver closes the channel before
the cluster goes away (:meth:`Progress.close_channel`, called by :mod:`distml.api`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Any, Iterator

#: plain mode: at most one line per counter every this many seconds (plus its last line)
LINE_INTERVAL_S = float(os.environ.get("DISTML_PROGRESS_INTERVAL", "10"))
#: worker side: at most one message per reporter every this many seconds (final ones always)
WORKER_INTERVAL_S = 0.2
#: driver side: how often the worker channel is drained
DRAIN_INTERVAL_S = 0.25
STAGES = ("validate", "cluster", "read", "train", "evaluate", "write", "report")
MODES = ("auto", "rich", "plain", "off")


def _stage_rank(name: str | None) -> int | None:
    """Position of a stage in :data:`STAGES` (None for a kind's own word)."""
    return STAGES.index(name) if name in STAGES else None


_log = logging.getLogger("distml.progress")


class Counter:
    """One line of progress: ``done/total unit`` plus a short figure (``info``)."""

    def __init__(self, owner: "Progress | None", key: str, total: float | None, unit: str):
        self.owner, self.key, self.total, self.unit = owner, key, total, unit
        self.completed: float = 0
        self.info = ""
        self.finished = False

    def advance(self, n: float = 1, info: str | None = None) -> None:
        self.update(completed=self.completed + n, info=info)

    def update(
        self, completed: float | None = None, total: float | None = None, info: str | None = None
    ) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if info is not None:
            self.info = info
        if self.total is not None and self.completed >= self.total:
            self.done()  # reaching the total ends it
        elif self.owner is not None:
            self.owner._show(self, final=False)

    def done(self, info: str | None = None) -> None:
        """The counter ended (possibly short of its total: early stopping)."""
        if info is not None:
            self.info = info
        if self.owner is not None and not self.finished:
            self.finished = True
            self.owner._show(self, final=True)

    def text(self) -> str:
        total = "?" if self.total is None else f"{self.total:g}"
        info = f"  {self.info}" if self.info else ""
        return f"{self.key}: {self.completed:g}/{total} {self.unit}".rstrip() + info


class Progress:
    """The display of one run; ``Progress("off")`` (what :func:`current` returns by default)
    does nothing."""

    def __init__(self, mode: str = "off", stream: Any = None):
        if mode not in ("rich", "plain", "off"):
            raise ValueError(f"progress mode must be rich, plain or off; got {mode!r}")
        self.mode = mode
        self.stream = stream if stream is not None else sys.stderr
        self.stage_name: str | None = None
        self._seen: set[str] = set()  # stages announced in this run
        self.counters: dict[str, Counter] = {}
        self._lock = threading.RLock()
        self._last_line: dict[str, float] = {}
        self._rich: Any = None
        self._stage_task: Any = None
        self._tasks: dict[str, Any] = {}
        self._handlers: list[tuple[logging.StreamHandler, Any]] = []
        self._channel: _Channel | None = None

    @property
    def active(self) -> bool:
        return self.mode != "off"

    # ------------------------------------------------------------------ driver-side reporting

    def stage(self, name: str, detail: str = "") -> None:
        """Enter stage ``name`` (see :data:`STAGES`; kinds may add their own words).

        Each stage is announced once per run and never after a later one: the driver enters
        ``train`` before a task reports its own ``read``/``train``, and a k-means pass re-enters
        ``train``; such a call only shows its detail under the current stage (plain mode:
        ``train: <detail>``). ``validate`` starts a new run (several runs in one block).
        """
        if not self.active:
            return
        with self._lock:
            if name == STAGES[0]:
                self._seen.clear()
                self.stage_name = None
            now, cur = _stage_rank(name), _stage_rank(self.stage_name)
            if name in self._seen or (now is not None and cur is not None and now < cur):
                if detail and self.stage_name is not None:
                    if self.mode == "plain":
                        _log.info("%s: %s", self.stage_name, detail)
                    elif self._rich is not None:
                        self._rich.update(self._stage_task, info=detail)
                return
            self._seen.add(name)
            self.stage_name = name
            if self.mode == "plain":
                _log.info("stage: %s%s", name, f" ({detail})" if detail else "")
            elif self._rich is not None:
                self._rich.update(self._stage_task, description=f"stage: {name}", info=detail)

    def counter(self, key: str, total: float | None = None, unit: str = "") -> Counter:
        """The counter named ``key`` (created, or reset when it exists: a new pass)."""
        if not self.active:
            return Counter(None, key, total, unit)
        with self._lock:
            c = Counter(self, key, total, unit)
            self.counters[key] = c
            self._last_line.pop(key, None)
            if self._rich is not None:
                if key in self._tasks:
                    self._rich.reset(self._tasks[key], total=total, description=key, info="")
                else:
                    self._tasks[key] = self._rich.add_task(key, total=total, info="")
            return c

    def _show(self, c: Counter, final: bool) -> None:
        with self._lock:
            if self.mode == "plain":
                now = time.monotonic()
                last = self._last_line.get(c.key)
                if final or last is None or now - last >= LINE_INTERVAL_S:
                    self._last_line[c.key] = now
                    _log.info("%s%s", c.text(), " (done)" if final else "")
            elif self._rich is not None and c.key in self._tasks:
                total, info = c.total, c.info
                if final and (total is None or c.completed < total):  # ended early: fill it
                    if total is not None:
                        info = f"{info}  (ended at {c.completed:g} of {total:g})".strip()
                    total = c.completed or 1
                self._rich.update(self._tasks[c.key], completed=c.completed, total=total, info=info)

    # ------------------------------------------------------------------ worker-side reporting

    def worker_reporter(self) -> "WorkerReporter | None":
        """A picklable reporter for a Ray task (None when progress is off). Needs Ray."""
        if not self.active:
            return None
        with self._lock:
            if self._channel is None:
                try:
                    self._channel = _Channel(self)
                except Exception as e:  # progress must never fail a run
                    _log.debug("no worker progress channel: %s", e)
                    return None
            return WorkerReporter(self._channel.sink)

    def _apply(self, msg: tuple) -> None:
        if msg[0] == "stage":
            self.stage(msg[1], msg[2])
            return
        _, key, completed, total, unit, info, final = msg
        c = self.counters.get(key)
        if c is None or (c.finished and not final):  # first message, or a new fit/pass
            c = self.counter(key, total, unit)
        if c.finished:  # the final message of a counter that reached its total
            return
        c.update(completed=completed, total=total, info=info)
        if final:
            c.done()

    def close_channel(self) -> None:
        """Drain and stop the worker channel (before the cluster shuts down)."""
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "Progress":
        if self.mode != "rich":
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgress

        console = Console(file=self.stream)
        self._rich = RichProgress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False, style="bold"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}", markup=False),
            console=console,
            refresh_per_second=4,
            redirect_stdout=False,
            redirect_stderr=self.stream is sys.stderr,
        )
        self._stage_task = self._rich.add_task("stage: starting", total=None, info="")
        self._rich.start()
        # distml's log lines print above the live panel instead of through it
        for h in logging.getLogger("distml").handlers:
            if type(h) is logging.StreamHandler and h.stream is self.stream:
                self._handlers.append((h, h.stream))
                h.setStream(_ConsoleWriter(console))
        return self

    def stop(self, ok: bool = True) -> None:
        self.close_channel()
        if self._rich is not None:
            with self._lock:
                if ok and self._stage_task is not None:
                    self._rich.update(
                        self._stage_task, description="stage: done", total=1, completed=1
                    )
                self._rich.stop()
                self._rich = None
            for h, stream in self._handlers:
                h.setStream(stream)
            self._handlers.clear()


class _ConsoleWriter:
    """A file-like object that prints through a rich Console (above its live display)."""

    def __init__(self, console):
        self.console = console

    def write(self, text: str) -> int:
        if text.strip():
            self.console.print(text.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        pass


class WorkerReporter:
    """Sent into a Ray task; reports stages and counters to the driver's display.

    Throttled (one message per :data:`WORKER_INTERVAL_S` per key; stages and final updates
    always go); fire-and-forget; silent for good once its channel fails.
    """

    def __init__(self, sink: Any):
        self._sink = sink
        self._last: dict[str, float] = {}
        self._dead = False

    def __getstate__(self) -> dict:
        return {"_sink": self._sink, "_last": {}, "_dead": False}

    def stage(self, name: str, detail: str = "") -> None:
        self._send(("stage", name, detail))

    def update(
        self,
        key: str,
        completed: float,
        total: float | None = None,
        info: str | None = None,
        unit: str = "",
        final: bool = False,
    ) -> None:
        """Counter ``key`` is at ``completed`` (of ``total``); ``final`` when it ended."""
        if self._dead:
            return
        now = time.monotonic()
        if not final and now - self._last.get(key, -1e9) < WORKER_INTERVAL_S:
            return
        self._last[key] = now
        self._send(("counter", key, completed, total, unit or key, info, final), wait=final)

    def _send(self, msg: tuple, wait: bool = False) -> None:
        """Fire and forget; a counter's final message waits (up to 5 s) until the sink has it,
        so it is there when the driver drains the sink after the task."""
        if self._dead:
            return
        try:
            ref = self._sink.push.remote(msg)
            if wait:
                import ray

                ray.get(ref, timeout=5)
        except Exception:  # the driver or its actor is gone: never fail the task for it
            self._dead = True


class _Sink:
    """The actor between workers and the driver: a list the driver empties."""

    def __init__(self):
        self.items: list = []

    def push(self, msg: tuple) -> None:
        self.items.append(msg)

    def drain(self) -> list:
        out, self.items = self.items, []
        return out


class _Channel:
    """The driver end: the sink actor and the thread that drains it into the display."""

    def __init__(self, progress: Progress):
        import ray

        self.progress = progress
        self.sink = ray.remote(_Sink).options(num_cpus=0, max_restarts=0).remote()
        self._pending = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="distml-progress", daemon=True)
        self._thread.start()

    def _drain(self, timeout: float) -> bool:
        """Apply what the sink holds; False once the channel is gone for good. A slow answer
        (the sink actor still starting on a busy machine) is not that: the next drain asks
        again and the sink keeps every message meanwhile."""
        import ray

        if self._pending is None:  # (a call that timed out is waited on again, not lost)
            self._pending = self.sink.drain.remote()
        try:
            msgs = ray.get(self._pending, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            return True
        except Exception as e:
            _log.debug("worker progress channel: %s", e)
            return False
        self._pending = None
        try:
            for msg in msgs:
                self.progress._apply(msg)
            return True
        except Exception as e:
            _log.debug("worker progress channel: %s", e)
            return False

    def _loop(self) -> None:
        while not self._stop.wait(DRAIN_INTERVAL_S):
            if not self._drain(timeout=5):
                break

    def close(self) -> None:
        import ray

        self._stop.set()
        self._thread.join(timeout=10)
        if ray.is_initialized():
            # the last updates: the sink may still be starting on a busy machine (seen: > 2 s)
            self._drain(timeout=10)
            with contextlib.suppress(Exception):
                ray.kill(self.sink)


_NULL = Progress("off")
_current: Progress = _NULL


def current() -> Progress:
    """The active display (a no-op one when progress is off)."""
    return _current


def worker_reporter() -> WorkerReporter | None:
    """Shortcut for ``current().worker_reporter()``: None when progress is off."""
    return _current.worker_reporter()


def resolve_mode(mode: str = "auto", *, json_output: bool = False, stream: Any = None) -> str:
    """``auto`` → ``off`` under ``--json``, ``rich`` on a terminal, else ``plain``."""
    if mode != "auto":
        return mode
    if json_output:
        return "off"
    stream = stream if stream is not None else sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "rich" if tty and os.environ.get("TERM") != "dumb" else "plain"


@contextlib.contextmanager
def activate(mode: str = "plain", stream: Any = None) -> Iterator[Progress]:
    """Show progress (``rich``, ``plain`` or ``off``) for the runs inside the block::

    with distml.progress.activate("plain"):
        distml.run("jobs/quickstart.yaml")
    """
    global _current
    p = Progress(mode, stream).start()
    previous, _current = _current, p
    ok = False
    try:
        yield p
        ok = True
    finally:
        _current = previous
        p.stop(ok)


def epoch_callback(reporter: WorkerReporter | None, total: int, then=None):
    """An ``on_epoch(epoch, figures, state, stopped)`` hook for torch's loop that reports epochs
    and the latest valid figure (then calls ``then`` with the same arguments); ``then`` itself
    without a reporter."""
    if reporter is None:
        return then

    def on_epoch(epoch, figures, state, stopped):
        shown = [
            k for k in ("valid.loss", "valid.accuracy", "valid.rmse", "train.loss") if k in figures
        ]
        info = ", ".join(f"{k}={float(figures[k]):.5g}" for k in shown[:2]) or None
        reporter.update(
            "epochs", epoch, total=total, info=info, final=bool(stopped) or epoch >= total
        )
        if then is not None:
            then(epoch, figures, state, stopped)

    return on_epoch


def xgboost_callback(reporter: WorkerReporter | None, total: int):
    """An xgboost ``TrainingCallback`` reporting rounds and the latest eval metric (the last
    metric of the last eval set: the one early stopping watches); None without a reporter."""
    if reporter is None:
        return None
    import xgboost as xgb

    class RoundProgress(xgb.callback.TrainingCallback):
        info: str | None = None

        def after_iteration(self, model, epoch, evals_log) -> bool:
            info = ""
            if evals_log:
                split, by_metric = list(evals_log.items())[-1]
                if by_metric:
                    name, values = list(by_metric.items())[-1]
                    if len(values):
                        value = values[-1]
                        value = value[0] if isinstance(value, tuple) else value
                        info = f"{split}-{name}={float(value):.5g}"
            self.info = info or None
            reporter.update("rounds", epoch + 1, total=total, info=self.info)
            return False

        def after_training(self, model):
            reporter.update(
                "rounds", model.num_boosted_rounds(), total=total, info=self.info, final=True
            )
            return model

    return RoundProgress()


__all__ = [
    "Progress",
    "Counter",
    "WorkerReporter",
    "current",
    "worker_reporter",
    "activate",
    "resolve_mode",
    "xgboost_callback",
    "STAGES",
    "MODES",
]
