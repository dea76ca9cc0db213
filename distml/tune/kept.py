"""The best trial's own output, kept so the run needs no refit of the best configuration.

A trial that finishes with the best value so far offers its output — the kind's
:class:`~distml.jobs.base.JobOutput` of the model it trained on the shared split (metrics on
every split, tables, model files) — and :class:`KeptStore` writes it under the run's
``checkpoints/kept/`` folder. Only the best is kept: a better trial's output replaces it and the
previous one is deleted, so the folder holds one output (plus, for a moment, the one being
written). Ties go to the earlier trial, as the driver's choice of the best does
(:func:`distml.tune.table.best_record`). Trials run in several processes of one node; a lock
file orders their offers.

The output is built only when it is needed (the offer is a callable), and outside the lock: a
trial checks its value first, builds, then checks again under the lock before it writes.

Format (no pickle): ``best.json`` names the kept trial and its value; ``<trial>/output.json``
holds the metrics, info, texts and the names of ``tables/*.parquet`` and ``files/...`` beside
it. Every file is written to a temporary folder that is renamed into place, then ``best.json``
is replaced atomically: a process killed part way leaves the previous best intact.

On a cluster of several nodes a trial on another node writes to that node's disk: the driver
does not find its output and refits (the fallback, see :mod:`distml.tune.runner`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from distml.jobs.base import JobOutput

BEST = "best.json"
OUTPUT = "output.json"


def _plain(v: Any) -> Any:
    """numpy scalars and arrays as Python values (json's ``default``)."""
    if hasattr(v, "tolist"):
        return v.tolist()
    if hasattr(v, "item"):
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def _order(trial: str) -> tuple[int, str]:
    """Creation order of a distml trial name (``trial_0007`` → 7); others after, by name."""
    head, _, number = trial.rpartition("_")
    return (int(number), trial) if head and number.isdigit() else (1 << 62, trial)


def _safe_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in key)[:100]


class KeptStore:
    """The kept output of the best trial so far, in ``folder`` (``mode``: min or max)."""

    def __init__(self, folder: str | os.PathLike, mode: str):
        self.folder = Path(folder)
        self.mode = mode

    # ---------------------------------------------------------------- trial side

    def offer(self, trial: str, value: float, build: Callable[[], JobOutput]) -> bool:
        """Keep ``build()`` as trial ``trial``'s output if ``value`` is the best so far; True
        when kept. Ties go to the earlier trial (``trial_0003`` before ``trial_0007``), as the
        driver's choice of the best does; the same trial offering again (a retried attempt)
        replaces its own output. The output kept before is deleted."""
        if not self._admits(trial, value):
            return False
        out = build()
        name = _safe_name(trial)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.folder))
        try:
            write_output(tmp, out)
            with self._lock():
                if not self._admits(trial, value):
                    return False
                target = self.folder / name
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
                record = {"trial": trial, "folder": name, "value": float(value)}
                _write_json(self.folder / BEST, record)
                self._delete_others(name)
            return True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _admits(self, trial: str, value: float) -> bool:
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            return False
        best = self.best()
        if best is None or best["trial"] == trial:
            return True
        kept = float(best["value"])
        if value == kept:
            return _order(trial) < _order(best["trial"])
        return value < kept if self.mode == "min" else value > kept

    # ---------------------------------------------------------------- driver side

    def best(self) -> dict | None:
        """The record of the kept trial (``trial``, ``folder``, ``value``), or None."""
        try:
            return json.loads((self.folder / BEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def value_of(self, trial: str) -> float | None:
        """The value ``trial``'s kept output was offered with (None: not kept)."""
        best = self.best()
        return float(best["value"]) if best and best["trial"] == trial else None

    def load(self, trial: str) -> JobOutput | None:
        """The kept output of ``trial`` (None when the kept output is another trial's)."""
        best = self.best()
        if best is None or best["trial"] != trial:
            return None
        folder = self.folder / best["folder"]
        if not (folder / OUTPUT).is_file():
            return None
        return read_output(folder)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    # ---------------------------------------------------------------- helpers

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.folder / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _delete_others(self, keep: str) -> None:
        for p in self.folder.iterdir():
            if p.is_dir() and p.name != keep and not p.name.startswith("."):
                shutil.rmtree(p, ignore_errors=True)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, default=_plain)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_output(folder: Path, out: JobOutput) -> None:
    """``out`` as files under ``folder`` (JSON, parquet and the raw model files)."""
    for name, table in out.tables.items():
        path = folder / "tables" / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(path, index=False)
    for rel, data in out.files.items():
        path = folder / "files" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    _write_json(
        folder / OUTPUT,
        {
            "metrics": out.metrics,
            "info": out.info,
            "texts": out.texts,
            "best_config": out.best_config,
            "tables": sorted(out.tables),
            "files": sorted(out.files),
        },
    )


def _inside(root: Path, rel: str) -> Path:
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"kept output: file {rel!r} is outside its folder")
    return path


def read_output(folder: Path) -> JobOutput:
    """The :class:`JobOutput` :func:`write_output` wrote to ``folder``."""
    import pandas as pd

    head = json.loads((folder / OUTPUT).read_text(encoding="utf-8"))
    return JobOutput(
        metrics=head["metrics"],
        tables={n: pd.read_parquet(folder / "tables" / f"{n}.parquet") for n in head["tables"]},
        files={rel: _inside(folder / "files", rel).read_bytes() for rel in head["files"]},
        texts=head["texts"],
        info=head["info"],
        best_config=head["best_config"],
    )
