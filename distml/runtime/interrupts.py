"""SIGTERM as an interruption while a run works: what Airflow, cron wrappers and ``kill`` send
becomes the KeyboardInterrupt that Ctrl-C raises in the main thread, so the manifest says
``interrupted``, a local cluster the run started is stopped, and ``--resume`` can continue
(RELIABILITY.md T12)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

_armed = False
_received = False


def _terminated(signum, frame):
    global _received
    _received = True
    raise KeyboardInterrupt(f"terminated by signal {signum} (SIGTERM)")


def received() -> bool:
    """Whether a SIGTERM interrupted the run in progress (else it was Ctrl-C, SIGINT)."""
    return _received


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While the block runs, SIGTERM raises KeyboardInterrupt in the main thread like Ctrl-C.
    Only when the process has no SIGTERM handler of its own and this is the main thread.
    ``ray.init`` installs its own handler (a bare exit), so :func:`rearm` puts ours back once
    the cluster is up."""
    global _armed, _received
    _received = False
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    signal.signal(signal.SIGTERM, _terminated)
    _armed = True
    try:
        yield
    finally:
        _armed = False
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def rearm() -> None:
    """Our SIGTERM handler again, inside :func:`sigterm_interrupts` (after ``ray.init``)."""
    if _armed:
        signal.signal(signal.SIGTERM, _terminated)
