"""Keep Ray's own log lines off distml's stderr.

Ray Data logs every dataset execution on the console at INFO ("Starting execution of Dataset…",
"Execution plan…", "Progress bars disabled…", "Data sink … finished"), through handlers it
attaches to the ``ray.data`` logger when ``ray.data`` is imported; ``ray`` has its own console
handler. A command such as ``distml predict`` promises a stderr of distml's lines only. Inside
:func:`quiet_ray_logs` those console handlers are muted; Ray's file handlers (``ray-data.log``
in the Ray session's log folder) still get every record.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

#: loggers whose console handlers are muted (their file handlers are left alone)
RAY_LOGGERS = ("ray", "ray.data")
_MUTED = logging.CRITICAL + 1


def _console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    """Ray's own handlers that write to a terminal stream, not to a file (a handler someone
    else attached is left alone)."""
    return [
        h
        for h in logger.handlers
        if type(h).__module__.split(".")[0] == "ray"
        and isinstance(h, logging.StreamHandler)
        and not isinstance(h, logging.FileHandler)
        and not _is_file_handler(h)
    ]


def _is_file_handler(handler: logging.Handler) -> bool:
    # Ray Data's SessionFileHandler is a plain Handler wrapping a FileHandler it creates lazily
    return "File" in type(handler).__name__


@contextlib.contextmanager
def quiet_ray_logs() -> Iterator[None]:
    """Mute the console handlers of Ray's loggers (``ray``, ``ray.data``) and Ray Data's
    progress bars for the block; restore them after. Imports ``ray.data`` (its import installs
    the handlers being muted), so call it only where Ray is about to be used."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved_bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = False
    saved: list[tuple[logging.Handler, int]] = []
    saved_propagate: list[tuple[logging.Logger, bool]] = []
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for h in _console_handlers(logger):
            saved.append((h, h.level))
            h.setLevel(_MUTED)
        if name != "ray":  # nothing of Ray's reaches distml's root handler either
            saved_propagate.append((logger, logger.propagate))
            logger.propagate = False
    try:
        yield
    finally:
        for h, level in saved:
            h.setLevel(level)
        for logger, propagate in saved_propagate:
            logger.propagate = propagate
        ctx.enable_progress_bars = saved_bars
