"""Processes of this machine through /proc (Linux): liveness that survives pid reuse, the
processes carrying a marker in their environment with their descendants, and ending a set of
processes by pid (SIGTERM, then SIGKILL). Used to stop exactly the Ray processes distml started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Callable


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name (state [0], ppid [1], start time [19])."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
        return text[text.rindex(")") + 2 :].split()
    except (OSError, ValueError):
        return None


def start_ticks(pid: int) -> str | None:
    """The process's start time (clock ticks after boot): with the pid, names one process."""
    st = stat_fields(pid)
    return st[19] if st else None


def alive(pid: int | None, ticks: str | None = None) -> bool:
    """The process exists, is not a zombie, and (given ``ticks``) is the same one."""
    if not pid:
        return False
    st = stat_fields(pid)
    if st is None or st[0] == "Z":
        return False
    return ticks is None or st[19] == ticks


def marked(entry: str, exclude: set[int] | None = None) -> list[int]:
    """Processes whose environment holds ``entry`` (``NAME=value``), and their descendants."""
    mark = entry.encode()
    skip = {os.getpid(), *(exclude or ())}
    children: dict[int, list[int]] = {}
    found: set[int] = set()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in skip:
            continue
        st = stat_fields(int(d))
        if st is None:
            continue
        children.setdefault(int(st[1]), []).append(int(d))
        try:
            with open(f"/proc/{d}/environ", "rb") as fh:
                if mark in fh.read().split(b"\0"):
                    found.add(int(d))
        except OSError:
            continue
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found and child not in skip:
                found.add(child)
                stack.append(child)
    return sorted(found)


def terminate(pids: list[int], again: Callable[[], list[int]], grace_s: float = 3.0) -> None:
    """SIGTERM ``pids``, wait up to ``grace_s`` for ``again()`` (the set, looked up afresh) to
    be empty, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = again()
        if not pids:
            return


def named(pids: list[int], name: str) -> tuple[int, str] | None:
    """(pid, start ticks) of the first process in ``pids`` whose executable is ``name``."""
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        ticks = start_ticks(pid)
        if ticks is not None and os.path.basename(cmd) == name:
            return pid, ticks
    return None


def exit_now(code: int | None) -> None:
    """End this process with ``code`` once its work is done, without the interpreter's teardown.

    The exit handlers still run (logging's flush and close, Ray's, the clean-up of temporary
    folders), then stdout and stderr are flushed and the process ends (``os._exit``). What is
    skipped is freeing every object and module one by one: ~180k objects and Ray's native
    state after a run, 0.3 s of a 2 s run on a warm cluster. A normal exit is taken instead
    while another non-daemon thread runs (Python would wait for it), off the main thread, or
    where CPython's exit-handler runner is missing."""
    import atexit
    import sys
    import threading

    code = 0 if code is None else int(code)
    run_handlers = getattr(atexit, "_run_exitfuncs", None)
    main = threading.current_thread() is threading.main_thread()
    busy = any(
        t.is_alive() and not t.daemon
        for t in threading.enumerate()
        if t is not threading.current_thread()
    )
    if run_handlers is None or busy or not main:
        sys.exit(code)
    run_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more to say
            pass
    os._exit(code)
