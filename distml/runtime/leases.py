"""Whether the warm cluster is in use: a lease file per run that uses it (removed when the run
ends, ignored once its process is gone) and the time it was last used."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

from distml.runtime import procs


def active_leases(folder: Path) -> list[Path]:
    """Live leases (a dead run's lease is removed)."""
    live = []
    with contextlib.suppress(FileNotFoundError):
        for p in (folder / "leases").iterdir():
            pid, _, ticks = p.name.partition("-")
            if pid.isdigit() and procs.alive(int(pid), ticks or None):
                live.append(p)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
    return live


@contextlib.contextmanager
def lease(rec: dict) -> Iterator[None]:
    """Mark a run as using the warm head (the watchdog does not stop a head in use)."""
    from distml.runtime.warm import state_dir

    folder = Path(rec.get("state_dir") or state_dir())
    (folder / "leases").mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / "leases" / f"{os.getpid()}-{procs.start_ticks(os.getpid()) or ''}"
    path.touch()
    (folder / "last_used").touch()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        with contextlib.suppress(OSError):
            (folder / "last_used").touch()


def last_activity(folder: Path, rec: dict) -> float:
    """When the head was last used: now while a run holds a lease, else the last touch."""
    if active_leases(folder):
        return time.time()
    try:
        touched = (folder / "last_used").stat().st_mtime
    except OSError:
        touched = 0.0
    return max(float(rec.get("started_at") or 0.0), touched)
