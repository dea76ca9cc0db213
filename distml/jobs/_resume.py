"""Checkpoints of single-task fits (RELIABILITY.md promise 4): ``--resume`` and a retried task
continue a long fit instead of starting it again.

A fit that runs in one Ray task (xgboost rounds, torch epochs) or as a stream of tasks
(many-models groups) saves its state under ``checkpoints/<name>/`` in the run directory: the
blobs first, each through the run directory's atomic writer, then ``state.json`` naming them
(the commit point), then the blobs it no longer names are removed. Saves are time-bounded
(at most one every :func:`interval_s` seconds, plus the final one), so the overhead stays
small whatever the round time. The folder is emptied when a run starts without ``--resume``,
kept by ``RunDir.prepare`` for a resume, ignored by the artifacts listing, and removed once
the job has its output.

A worker writes the folder directly, as Ray Train does its ``storage_path``: on a cluster whose
workers do not see the run directory, checkpointing is off and the manifest says so.

What a resume did is recorded in ``manifest.json`` ``execution``: ``resumed_from`` (what the
fit continued from, or null) and, when it is null on ``--resume``, ``resume_reason``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from typing import Any

#: seconds between two checkpoints of one fit (0: every round/epoch/batch; tests use it)
INTERVAL_ENV = "DISTML_CHECKPOINT_INTERVAL_S"
DEFAULT_INTERVAL_S = 15.0
STATE = "state.json"


def interval_s() -> float:
    """The checkpoint cadence: :data:`INTERVAL_ENV`, default :data:`DEFAULT_INTERVAL_S`."""
    raw = os.environ.get(INTERVAL_ENV)
    return max(0.0, float(raw)) if raw else DEFAULT_INTERVAL_S


class Checkpoints:
    """The latest state of one fit under ``checkpoints/<name>/``; made on the driver by
    :meth:`for_run`, used on the worker (the object travels with the task)."""

    def __init__(
        self,
        run_dir: Any,
        name: str,
        interval: float,
        fingerprint: str = "",
        resuming: bool = False,
    ):
        self.run_dir = run_dir  # distml.runtime.artifacts.RunDir
        self.rel = f"checkpoints/{name}"
        self.interval = interval
        self.fingerprint = fingerprint
        self.resuming = resuming  # --resume (a retried task may resume without it)
        self.last = time.monotonic()
        self.saves = 0
        self.off_reason: str | None = None
        self.resumed_from: dict | None = None
        self.resume_reason: str | None = None

    @classmethod
    def for_run(cls, ctx, name: str, fingerprint: str = "") -> "Checkpoints":
        """The driver's side: the folder exists; its old content is dropped unless resuming."""
        folder = ctx.run_dir.file(f"checkpoints/{name}")
        if not ctx.resume:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        return cls(ctx.run_dir, name, interval_s(), fingerprint, ctx.resume)

    @property
    def folder(self):
        return self.run_dir.file(self.rel)

    def usable(self) -> bool:
        """False (with :attr:`off_reason`) where this process cannot see the folder."""
        if self.off_reason is None and not self.folder.is_dir():
            self.off_reason = (
                f"the run directory's {self.rel}/ is not visible from the worker's "
                "node (no shared storage); the fit is not checkpointed"
            )
        return self.off_reason is None

    def due(self, final: bool = False) -> bool:
        return self.usable() and (final or time.monotonic() - self.last >= self.interval)

    def save(
        self, state: dict, files: dict[str, bytes], keep: dict[str, str] | None = None
    ) -> dict[str, str]:
        """Write ``files`` then ``state.json`` naming them (the commit), then drop stale blobs;
        ``keep`` names blobs already saved that stay (logical name -> :meth:`names` entry).
        Returns the names of every blob the checkpoint now holds."""
        names = dict(keep or {})
        for name, data in files.items():
            stem, dot, ext = name.partition(".")
            names[name] = f"{stem}-{secrets.token_hex(4)}{dot}{ext}"
            self.run_dir.write_bytes(f"{self.rel}/{names[name]}", data)
        self.run_dir.write_json(
            f"{self.rel}/{STATE}",
            {
                "state": state,
                "files": names,
                "fingerprint": self.fingerprint,
                "saved_at": time.time(),
            },
        )
        for p in self.folder.iterdir():
            if p.name != STATE and p.name not in names.values() and not p.name.startswith("."):
                p.unlink(missing_ok=True)
        self.saves += 1
        self.last = time.monotonic()
        return names

    def names(self) -> dict[str, str]:
        """Logical name -> blob name of the last committed checkpoint ({} if none)."""
        try:
            doc = json.loads((self.folder / STATE).read_text(encoding="utf-8"))
            return dict(doc["files"]) if doc.get("fingerprint", "") == self.fingerprint else {}
        except (OSError, ValueError, KeyError):
            return {}

    def load(self) -> tuple[dict, dict[str, bytes]] | None:
        """The last committed (state, files), or None (with :attr:`resume_reason`)."""
        if not self.usable():
            self.resume_reason = self.off_reason
            return None
        path = self.folder / STATE
        if not path.is_file():
            self.resume_reason = f"no checkpoint in {self.rel}/ (the fit had not saved one)"
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("fingerprint", "") != self.fingerprint:
                self.resume_reason = (
                    f"the checkpoint in {self.rel}/ is of a different spec or "
                    "data; the fit started from the beginning"
                )
                return None
            files = {k: (self.folder / v).read_bytes() for k, v in doc["files"].items()}
        except (OSError, ValueError, KeyError) as e:
            self.resume_reason = f"the checkpoint in {self.rel}/ is unreadable ({e})"
            return None
        return doc["state"], files

    def record(self) -> dict[str, Any]:
        """What goes to ``manifest.json`` ``execution``."""
        out: dict[str, Any] = {
            "resumed_from": self.resumed_from,
            "checkpoints": {"saved": self.saves, "interval_s": self.interval},
        }
        if self.resumed_from is None and self.resuming:
            out["resume_reason"] = self.resume_reason or "no checkpoint to continue from"
        if self.off_reason:
            out["checkpoints"]["off"] = self.off_reason
        return out

    def discard(self) -> None:
        """The job has its output: the checkpoint is of no further use."""
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.parent.rmdir()  # only when empty
        except OSError:
            pass


def fingerprint(*parts: Any) -> str:
    """A short digest of what a checkpoint is only valid for (spec, data)."""
    import hashlib

    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_resume(out, ctx) -> None:
    """On ``--resume``, make sure the manifest says whether and from what the job resumed:
    a path that does not checkpoint gets ``resumed_from: null`` and the reason, and a warning
    in the log, never silence. Called by :func:`distml.api._execute` for runs without a search
    (a search records its own restore)."""
    if not ctx.resume:
        return
    ex = out.info.setdefault("execution", {})
    if "resumed_from" not in ex:
        ex["resumed_from"] = None
        path = ex.get("path") or "single task"
        ex["resume_reason"] = (
            f"kind {ctx.spec.kind} ({path}) does not checkpoint: --resume ran it from the start"
        )
    if ex["resumed_from"] in (None, 0):
        ctx.log.warning(
            "--resume: not resumed (%s)",
            ex.get("resume_reason") or "no checkpoint to continue from",
        )
    else:
        ctx.log.info("--resume: continued from %s", ex["resumed_from"])
