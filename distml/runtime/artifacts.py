"""The run directory (DESIGN.md §4): atomic writes, manifest, ``_SUCCESS`` last.

Every file is written to a hidden temp name (``.NAME.tmp-PID…``) in its final folder, flushed,
fsynced and renamed, so a reader never sees a half-written file under its real name; ``_SUCCESS``
is written after everything else and is the only completion signal.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from distml.errors import SpecError
from distml.spec.base import check_name

SUCCESS = "_SUCCESS"
TMP_MARK = ".tmp-"


def new_run_id() -> str:
    """A sortable, unique run id: ``YYYYmmdd-HHMMSS-xxxxxx`` (UTC)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class RunDir:
    """``<root>/<name>/<run_id>/``; every path handed out is checked to stay under ``root``."""

    def __init__(self, root: str | os.PathLike, name: str, run_id: str | None = None):
        try:
            check_name(name, "name")
            self.run_id = check_name(run_id, "run_id") if run_id is not None else new_run_id()
        except ValueError as e:
            raise SpecError(str(e)) from None
        self.name = name
        self.root = Path(root).expanduser().resolve()
        self.path = self._inside(self.root / name / self.run_id)

    def _inside(self, p: Path) -> Path:
        resolved = p.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise SpecError(f"output path {str(p)!r} resolves outside the output root "
                            f"{str(self.root)!r}")
        return resolved

    def file(self, rel: str) -> Path:
        """Absolute path of ``rel`` inside the run directory (never outside it)."""
        if os.path.isabs(rel):
            raise SpecError(f"artifact path must be relative; got {rel!r}")
        p = self.path / rel
        resolved = p.resolve()
        if self.path not in resolved.parents:
            raise SpecError(f"artifact path {rel!r} resolves outside the run directory")
        return resolved

    @property
    def complete(self) -> bool:
        return (self.path / SUCCESS).is_file()

    def prepare(self) -> None:
        """Create the directory; for an unfinished earlier attempt, drop it and start clean."""
        if self.path.exists() and not self.complete:
            self.discard_temp_files()
            for child in self.path.iterdir():
                if child.name.startswith(".") and TMP_MARK in child.name:
                    continue
                if child.name in ("checkpoints",):  # kept for --resume
                    continue
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    def discard_temp_files(self) -> list[Path]:
        """Remove temp files left by a writer that was killed; returns what was removed."""
        gone = []
        for p in self.path.rglob(f"*{TMP_MARK}*"):
            if p.is_file() and p.name.startswith("."):
                p.unlink(missing_ok=True)
                gone.append(p)
        return gone

    @contextmanager
    def atomic_path(self, rel: str) -> Iterator[Path]:
        """Yield a temp path with the same suffix as ``rel``; renamed onto ``rel`` on success."""
        final = self.file(rel)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.stem}{TMP_MARK}{os.getpid()}-{secrets.token_hex(2)}"
                              f"{final.suffix}")
        try:
            yield tmp
            if tmp.is_file():
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        finally:
            if tmp.exists():
                tmp.unlink()

    def write_bytes(self, rel: str, data: bytes) -> Path:
        with self.atomic_path(rel) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
        return self.file(rel)

    def write_text(self, rel: str, text: str) -> Path:
        return self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, obj: Any) -> Path:
        return self.write_text(rel, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")

    def write_yaml(self, rel: str, obj: Any) -> Path:
        from distml.spec.yamlio import dump_yaml  # no anchors: spec.yaml reads back as a spec

        return self.write_text(rel, dump_yaml(to_jsonable(obj), sort_keys=False))

    def write_parquet(self, rel: str, frame: Any) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(
            frame, preserve_index=False)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return self.write_bytes(rel, buf.getvalue())

    def mark_success(self) -> Path:
        """Write ``_SUCCESS``; call only after every other artifact is in place."""
        return self.write_json(SUCCESS, {"run_id": self.run_id, "finished_at": time.time()})

    def listing(self) -> list[str]:
        """Relative paths of the finished artifacts (temp files excluded)."""
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*")
                      if p.is_file() and TMP_MARK not in p.name and "checkpoints" not in p.parts)


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, Paths and NaN into JSON-safe values (NaN → null)."""
    import math

    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    return obj
