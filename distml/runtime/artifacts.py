"""The run directory (DESIGN.md §4): atomic writes, manifest, ``_SUCCESS`` last.

Every file is written to a hidden temp name (``.NAME.tmp-PID…``) in its final folder, flushed,
fsynced and renamed, so a reader never sees a half-written file under its real name; ``_SUCCESS``
is written after everything else and is the only completion signal.

Run identity (RELIABILITY.md promise 7): a folder distml makes carries its marker
(``.distml-run``) and only such folders are ever cleaned; a run holds ``.distml.lock`` (an
``flock`` on a file naming host, pid, the pid's start time and since when) for its whole life, so
a second process with the same run id stops with exit 3 and a crash releases the lock; at
``_SUCCESS`` the manifest records a sha256 of every artifact and ``_SUCCESS`` the manifest's own,
checked by :func:`verify_finished` before a finished run is reused, listed or scored.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import secrets
import shutil
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from distml.errors import ClusterError, DataError, SpecError
from distml.spec.base import check_name

SUCCESS = "_SUCCESS"
TMP_MARK = ".tmp-"
#: written when distml creates a run folder: only folders that carry it are ever cleaned
MARKER = ".distml-run"
#: held (flock) by the process running the run, for its whole life
LOCK = ".distml.lock"
#: the resolved spec and data of the run, compared by ``--resume``
FINGERPRINT = ".distml-fingerprint.json"
#: files of distml's own bookkeeping, never artifacts
_OWN = (MARKER, LOCK, FINGERPRINT)
#: a finished run's files that are not digested: the report is a view rebuilt by ``distml report``
_UNDIGESTED = (SUCCESS, "manifest.json", "report.html")
_TMP_PID = re.compile(r"\.tmp-(\d+)")


class RunBusy(ClusterError):
    """Another live process holds the run's lock (exit 3)."""


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


@contextmanager
def atomic_file(final: str | os.PathLike) -> Iterator[Path]:
    """The one atomic writer of distml: yield a hidden temp path beside ``final``
    (``.STEM.tmp-PID-XXXX.SUFFIX``, same folder, same suffix); when the block succeeds the temp
    file is fsynced and renamed onto ``final`` and the folder fsynced, so a reader never sees a
    half-written file under its real name; when it fails the temp file is removed. A temp file
    a killed writer left behind carries its pid (:meth:`RunDir.discard_temp_files`)."""
    final = Path(final)
    tmp = final.with_name(
        f".{final.stem}{TMP_MARK}{os.getpid()}-{secrets.token_hex(2)}{final.suffix}"
    )
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
            raise SpecError(
                f"output path {str(p)!r} resolves outside the output root {str(self.root)!r}"
            )
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

    @property
    def ours(self) -> bool:
        """Whether distml made this folder (it carries distml's marker)."""
        return (self.path / MARKER).is_file()

    def prepare(self, *, resume: bool = False) -> None:
        """Create the directory (with distml's marker); for an unfinished earlier attempt in a
        folder distml made, drop what it left and start clean (``checkpoints/`` and, on
        ``resume``, the fingerprint are kept). A folder without the marker is never touched
        (SpecError). Call it while holding :meth:`lock` when the folder may already exist."""
        self.claim()
        if resume:
            check_private(self.path, "--resume")
        if self.complete:
            return
        self.discard_temp_files()
        for child in self.path.iterdir():
            if child.name in _OWN and (child.name != FINGERPRINT or resume):
                continue
            if child.name.startswith(".") and _TMP_PID.search(child.name):
                continue  # a live writer's temp file (dead writers' were discarded above)
            if child.name in ("checkpoints",):  # kept for --resume
                continue
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()

    def claim(self) -> None:
        """Make the folder (with distml's marker), or check that distml made the existing one
        (SpecError, exit 2, when it did not: it is never touched)."""
        if self.path.exists() or self.path.is_symlink():
            self._check_ours()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.mkdir(mode=0o755)
        except FileExistsError:  # made by a process starting the same run id just now
            self._check_ours()
            return
        except NotADirectoryError:
            raise SpecError(
                f"output: a parent of {str(self.path)!r} is a file, not a "
                "directory; give --output a directory"
            ) from None
        self._write_marker()

    def _check_ours(self) -> None:
        if not self.path.is_dir() or self.path.is_symlink():
            raise SpecError(
                f"run dir {str(self.path)!r} exists and is not a directory distml "
                "made; refusing to touch it (pick another --run-id or --output)"
            )
        if self.ours:
            return
        if not [
            c
            for c in self.path.iterdir()
            if c.name != LOCK and not (c.name.startswith(".") and _TMP_PID.search(c.name))
        ]:
            self._write_marker()  # an empty folder holds nothing to lose (or is being made)
            return
        raise SpecError(
            f"run dir {str(self.path)!r} exists and was not made by distml (no "
            f"{MARKER} marker); refusing to touch it: pick another --run-id or "
            "--output, or move the folder away"
        )

    def _write_marker(self) -> None:
        st = os.stat(self.path)
        if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o022:
            # a umask of 002 would make the run dir group-writable, which resume refuses
            os.chmod(self.path, stat.S_IMODE(st.st_mode) & ~0o022)
        self.write_json(
            MARKER,
            {
                "distml_run": self.run_id,
                "created_at": time.time(),
                "host": platform.node(),
                "pid": os.getpid(),
            },
        )

    @contextmanager
    def lock(self) -> Iterator[dict]:
        """Hold the run's exclusive lock for the block; RunBusy (exit 3) names a live holder.

        The lock file is created with ``O_CREAT|O_EXCL`` and held with ``flock``, which the
        kernel releases when the holder dies however it dies; a lock file left by a dead holder
        (same host, its pid gone or started at another time) is taken over."""
        import fcntl

        self.claim()
        lock_path = self.path / LOCK
        me = {
            "host": platform.node(),
            "pid": os.getpid(),
            "pid_start": _pid_start(os.getpid()),
            "since": time.time(),
            "run_id": self.run_id,
        }
        fd, ours = -1, False  # ours: the file at the path is one this call made or holds
        try:  # a signal while taking the lock must not leave its file behind
            for _ in range(20):
                try:
                    fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
                    created = ours = True
                except FileExistsError:
                    try:
                        fd = os.open(lock_path, os.O_RDWR)
                    except FileNotFoundError:  # released meanwhile: try again
                        continue
                    created = False
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    holder = _read_fd(fd)
                    fd = _close(fd)
                    raise RunBusy(_busy_message(self.path, holder)) from None
                try:  # the file we hold must still be the one at the path (not a released one)
                    same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    ours, fd = False, _close(fd)
                    continue
                if not created:
                    holder = _read_fd(fd)
                    if not holder and time.time() - os.fstat(fd).st_mtime < 10:
                        fd = _close(fd)  # its creator has not written it yet: a live start
                        time.sleep(0.2)
                        continue
                    if holder and not holder_gone(holder):
                        fd = _close(fd)  # alive, and flock is not honoured here (e.g. NFS)
                        raise RunBusy(_busy_message(self.path, holder))
                ours = True  # held, and its holder (if any) gone: ours to remove
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps(me).encode())
                os.fsync(fd)
                break
            else:
                raise RunBusy(
                    f"run dir {str(self.path)!r}: could not take its lock {LOCK} (another "
                    "process keeps taking it); pick another --run-id"
                )
        except BaseException:
            if fd >= 0:
                if ours:
                    _unlink_if_same(lock_path, fd)
                _close(fd)
            raise
        try:
            yield me
        finally:
            try:  # unlink while still holding it, so a waiter that opened it sees it released
                os.unlink(lock_path)
            except FileNotFoundError:
                pass
            os.close(fd)

    def write_fingerprint(self, fingerprint: dict) -> None:
        """Store what the run is (its resolved spec and data), for ``--resume`` to compare."""
        self.write_json(FINGERPRINT, fingerprint)

    def check_resume(self, fingerprint: dict) -> None:
        """SpecError (exit 2) unless the run being resumed had this very spec and data; a missing
        or unreadable fingerprint is a refusal too (nothing proves what the checkpoints are)."""
        check_private(self.path, "--resume")
        try:
            stored = json.loads((self.path / FINGERPRINT).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise SpecError(
                f"--resume: run dir {str(self.path)!r} has no readable {FINGERPRINT} "
                "recording the spec and data of the interrupted run, so its "
                "checkpoints cannot be trusted; rerun without --resume, or with a "
                "new --run-id"
            ) from None
        current = json.loads(json.dumps(to_jsonable(fingerprint), sort_keys=True))
        differ = diff_paths(stored, current)
        if differ:
            raise SpecError(
                f"--resume: the spec or data differ from the interrupted run's in "
                f"{_names(differ)}; rerun without --resume, or with a new --run-id"
            )

    def discard_temp_files(self) -> list[Path]:
        """Remove temp files left by writers that died (their pid is gone); returns them."""
        gone = []
        for p in self.path.rglob(f"*{TMP_MARK}*"):
            if p.is_file() and p.name.startswith("."):
                m = _TMP_PID.search(p.name)
                if m and int(m.group(1)) != os.getpid() and _pid_alive(int(m.group(1))):
                    continue  # a live process's write in progress (e.g. a Ray worker)
                p.unlink(missing_ok=True)
                gone.append(p)
        return gone

    @contextmanager
    def atomic_path(self, rel: str) -> Iterator[Path]:
        """Yield a temp path with the same suffix as ``rel``; renamed onto ``rel`` on success."""
        final = self.file(rel)
        final.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(final) as tmp:
            yield tmp

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

        table = (
            frame
            if isinstance(frame, pa.Table)
            else pa.Table.from_pandas(frame, preserve_index=False)
        )
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return self.write_bytes(rel, buf.getvalue())

    def mark_success(self, manifest: dict | None = None) -> Path:
        """Record a sha256 of every artifact in the manifest (``manifest``, else the stored
        one), then write ``_SUCCESS`` with the manifest's own digest. Call only after every
        other artifact is in place."""
        if manifest is None:
            try:
                manifest = json.loads((self.path / "manifest.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                manifest = {}
        manifest["digests"] = {
            rel: sha256_file(self.path / rel) for rel in self.listing() if rel not in _UNDIGESTED
        }
        written = self.write_json("manifest.json", manifest)
        return self.write_json(
            SUCCESS,
            {
                "run_id": self.run_id,
                "finished_at": time.time(),
                "manifest_sha256": sha256_file(written),
            },
        )

    def listing(self) -> list[str]:
        """Relative paths of the finished artifacts (temp files and bookkeeping excluded)."""
        return self._listing_of(self.path)

    @staticmethod
    def _listing_of(path: Path) -> list[str]:
        return sorted(
            str(p.relative_to(path))
            for p in path.rglob("*")
            if p.is_file()
            and TMP_MARK not in p.name
            and "checkpoints" not in p.relative_to(path).parts
            and p.name not in _OWN
        )


def run_fingerprint(spec: Any, info: Any) -> dict:
    """What a run is, for ``--resume`` to compare: the resolved spec (a JobSpec) and its data
    (a DataInfo: files, sizes, row counts, columns)."""
    return {"spec": to_jsonable(spec.to_dict()), "data": to_jsonable(info.fingerprint())}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_private(path: str | os.PathLike, purpose: str) -> None:
    """DataError (exit 2) unless ``path`` is a directory owned by the current user and not
    writable by group or others: what it holds is trusted (resumed from, reported, scored)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as e:
        raise DataError(f"{purpose}: run dir {str(p)!r} cannot be read ({e.strerror})") from None
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise DataError(
            f"{purpose}: run dir {str(p)!r} is owned by another user (uid "
            f"{st.st_uid}); refusing to trust its contents"
        )
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise DataError(
            f"{purpose}: run dir {str(p)!r} is writable by other users (mode "
            f"{stat.S_IMODE(st.st_mode):o}); refusing to trust its contents "
            f"(chmod go-w {str(p)!r} if you trust them)"
        )


def verify_finished(run_dir: str | os.PathLike) -> None:
    """DataError (exit 2) unless ``run_dir`` is a finished run whose artifacts are exactly what
    was recorded at ``_SUCCESS``: a private folder, ``_SUCCESS`` naming the manifest's digest,
    every digested file unchanged, and no artifact that was not there then."""
    path = Path(run_dir).expanduser()
    where = f"run dir {str(path)!r}"
    check_private(path, "finished run")
    try:
        success = json.loads((path / SUCCESS).read_text(encoding="utf-8"))
        manifest_sha = success["manifest_sha256"]
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        digests = manifest["digests"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(
            f"{where} has a {SUCCESS} without a manifest and artifact digests "
            "(not written by this distml, or tampered with); rerun it with a new "
            "--run-id"
        ) from None
    if not isinstance(digests, dict) or sha256_file(path / "manifest.json") != manifest_sha:
        raise DataError(
            f"{where}: manifest.json changed after the run finished (its digest "
            f"does not match {SUCCESS}); refusing to use it"
        )
    changed = []
    for rel, digest in digests.items():
        f = path / str(rel)
        if not (path.resolve() in f.resolve().parents and f.is_file()):
            changed.append(f"{rel} (missing)")
        elif sha256_file(f) != digest:
            changed.append(str(rel))
    extra = [
        rel
        for rel in RunDir._listing_of(path)
        if rel not in digests and rel not in _UNDIGESTED and not Path(rel).name.startswith(".")
    ]
    changed += [f"{rel} (not there when it finished)" for rel in extra]
    if changed:
        raise DataError(
            f"{where}: artifacts changed after the run finished: "
            f"{_names(changed)}; refusing to use it"
        )


def diff_paths(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths at which two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            p = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(p)
            else:
                out += diff_paths(a[k], b[k], p)
        return out
    return [] if a == b else [prefix or "(whole)"]


def _names(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _pid_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot; None where unknown), so a
    reused pid is told apart from the lock's holder."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat_line = fh.read()
        return int(stat_line[stat_line.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_gone(holder: dict) -> bool:
    """Whether a lock holder provably died: on this host, its pid gone or started at another
    time (a reused pid). A holder on another host cannot be checked: it is taken as alive."""
    if holder.get("host") != platform.node():
        return False
    try:
        pid = int(holder["pid"])
    except (KeyError, TypeError, ValueError):
        return True
    if not _pid_alive(pid):
        return True
    start = holder.get("pid_start")
    return start is not None and _pid_start(pid) not in (None, start)


def read_holder(run_dir: str | os.PathLike) -> dict | None:
    """The lock holder recorded in ``run_dir`` (None when there is no lock file)."""
    try:
        data = json.loads((Path(run_dir) / LOCK).read_text(encoding="utf-8") or "{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _close(fd: int) -> int:
    """Close ``fd`` (already closed is fine); -1, for the caller's variable."""
    try:
        os.close(fd)
    except OSError:
        pass
    return -1


def _unlink_if_same(path: Path, fd: int) -> None:
    """Remove ``path`` if it is still the file open as ``fd``."""
    try:
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            os.unlink(path)
    except OSError:
        pass


def _read_fd(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _busy_message(path: Path, holder: dict) -> str:
    since = holder.get("since")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
        if isinstance(since, (int, float))
        else "an unknown time"
    )
    elsewhere = holder.get("host") not in (None, platform.node())
    return (
        f"run dir {str(path)!r} is in use by another distml run (host "
        f"{holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {when}); wait for "
        "it to end, or pick a new --run-id"
        + (f" (if that process is gone, remove {str(path / LOCK)!r})" if elsewhere else "")
    )


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
