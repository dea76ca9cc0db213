"""The warm local cluster of ``distml cluster start``: one Ray head that later runs reuse.

A record in distml's state folder (``$DISTML_STATE_DIR``, else ``$XDG_STATE_HOME/distml``, else
``~/.local/state/distml``) says where the head listens and what started it::

    cluster.json   address, dashboard URL, token file, pids, versions, boot id, idle timeout
    auth_token     the head's own token (0600; RAY_AUTH_MODE=token, never disabled)
    leases/        one file per ``distml run`` connected now (the watchdog's sign of activity)
    last_used      touched when a run connects and when it ends

The head is ``ray start --head`` (run by :mod:`distml.runtime.node_start`, which starts the
dashboard head beside the raylet; no autoscaler monitor, no log monitor) bound to 127.0.0.1
(dashboard too), in its own temp folder; each of its processes carries
``DISTML_WARM_MARK=<id>`` in its environment, so stopping it ends exactly those processes,
never another Ray cluster of the machine (no ``ray stop``). A watchdog
process (``python -m distml.runtime.warm``) stops it after the idle timeout. The record holds
the machine's boot id: after a reboot it is stale and is cleaned, not trusted. Linux only (the
processes are found through /proc).

Heavy imports stay out: this module never imports Ray (the watchdog lives for hours).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Iterator

from distml.errors import ClusterError, SpecError
from distml.runtime import procs, warm_workers
from distml.runtime.leases import active_leases, last_activity, lease  # noqa: F401
from distml.runtime.threads import preload_modules
from distml.runtime.warm_workers import WARM_PRELOAD_ENV

STATE_ENV = "DISTML_STATE_DIR"
MARK_ENV = "DISTML_WARM_MARK"
RECORD = "cluster.json"
DEFAULT_IDLE_TIMEOUT = "30m"
# Imported by the worker processes Ray prestarts for no job (the first runs' tasks) and by the
# warm runners, before they take work: their tasks find distml and the kind's libraries loaded
# instead of importing them. Workers started for a run import what that run declared
# (:mod:`distml.runtime.warm_workers`; docs/clusters.md has the measurements).
PRELOAD = (
    "distml.jobs.xgboost",
    "distml.jobs.sklearn",
    "xgboost",
    "sklearn.metrics",
    "pandas",
    "pyarrow.parquet",
)
SOURCE = "warm cluster (distml cluster start)"


def state_dir() -> Path:
    """distml's state folder (not created here)."""
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "distml"


def parse_duration(text: str, field: str = "--idle-timeout") -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``2h``, ``1d``; ``0``/``none``/``never`` = no timeout."""
    t = str(text).strip().lower()
    if t in ("0", "none", "never", "off"):
        return 0.0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd]?)", t)
    if not m:
        raise SpecError(f"{field} must be a duration such as 90s, 30m, 2h or 'none'; got {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def identity() -> dict[str, str]:
    """What a warm head must share with the CLI that uses it (without importing Ray)."""
    distml = sys.modules["distml"]  # the package this module belongs to: imported already
    try:
        ray_version = metadata.version("ray")
    except metadata.PackageNotFoundError:
        ray_version = "not installed"
    return {
        "distml_version": distml.__version__,
        "distml_path": str(Path(distml.__file__).resolve().parent),
        "python": f"{sys.version.split()[0]} in {sys.prefix}",
        "ray_version": ray_version,
    }


def mismatch(rec: dict) -> str | None:
    """A sentence naming what differs between the warm head and this CLI, or None."""
    mine = identity()
    names = {
        "distml_version": "distml",
        "ray_version": "ray",
        "python": "python",
        "distml_path": "distml from",
    }
    diff = [k for k in names if rec.get(k) != mine[k]]
    if not diff:
        return None
    theirs = ", ".join(f"{names[k]} {rec.get(k)}" for k in diff)
    here = ", ".join(f"{names[k]} {mine[k]}" for k in diff)
    return (
        f"the warm cluster at {rec.get('address')} runs {theirs}; this CLI runs {here}: "
        "restart it with `distml cluster stop && distml cluster start`, or pass --address"
    )


# ------------------------------------------------------------------------------ the record


def read_record(folder: Path | None = None) -> dict | None:
    path = (folder or state_dir()) / RECORD
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"corrupt": True}
    return rec if isinstance(rec, dict) else {"corrupt": True}


def write_record(rec: dict, folder: Path | None = None) -> None:
    """Write ``cluster.json`` atomically (the one atomic writer), readable by its owner only."""
    folder = folder or state_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    from distml.runtime.artifacts import atomic_file

    with atomic_file(folder / RECORD) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # the owner's only
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(rec, fh, indent=2)


def remove_record(folder: Path | None = None, only_id: str | None = None) -> None:
    """Remove the record (only when it is still ``only_id``'s) with its token and leases."""
    folder = folder or state_dir()
    if only_id is not None:
        rec = read_record(folder)
        if rec is not None and rec.get("id") != only_id:
            return
    for name in (RECORD, "auth_token", "last_used"):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    shutil.rmtree(folder / "leases", ignore_errors=True)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One ``cluster start``/``stop`` at a time."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------ processes


def processes(rec: dict) -> list[int]:
    """The warm head's processes: those carrying its mark in their environment (what ``ray
    start`` launched) and their descendants (the raylet's workers and agents, which may rewrite
    the memory their environment lived in). Drivers connected to the head are neither."""
    return procs.marked(f"{MARK_ENV}={rec.get('id')}", exclude={rec.get("watchdog_pid") or 0})


def _kill(pids: list[int], rec: dict, grace_s: float = 3.0) -> None:
    procs.terminate(pids, lambda: processes(rec), grace_s)


def _reachable(address: str, timeout_s: float = 2.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def health(rec: dict | None) -> tuple[str, str]:
    """("up" | "down" | "stale", why): up = the GCS process is alive and its port answers."""
    if rec is None:
        return "down", "no warm cluster is recorded"
    if rec.get("corrupt"):
        return "stale", "its record is unreadable"
    if rec.get("boot_id") != boot_id():
        return "stale", "it was started before this machine's last boot"
    gcs = rec.get("pids", {}).get("gcs_server")
    if not procs.alive(gcs, rec.get("start_ticks", {}).get("gcs_server")):
        return "stale", f"its GCS process ({gcs}) is gone"
    if not _reachable(rec["address"]):
        return "stale", f"nothing answers at {rec['address']}"
    return "up", "healthy"


def _clean_stale(folder: Path, rec: dict) -> None:
    """Remove a stale record after ending whatever is left of its head and watchdog."""
    if not rec.get("corrupt"):
        if rec.get("boot_id") == boot_id():  # pids of another boot name other processes
            _kill(processes(rec), rec, grace_s=1.0)
            wd = rec.get("watchdog_pid")
            if procs.alive(wd, rec.get("watchdog_ticks")):
                with contextlib.suppress(OSError):
                    os.kill(wd, signal.SIGTERM)
        shutil.rmtree(rec.get("temp_dir") or "//none", ignore_errors=True)
    remove_record(folder, rec.get("id"))


# ------------------------------------------------------------------------------ start / stop


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _public(rec: dict) -> dict:
    keep = (
        "address",
        "dashboard_url",
        "token_path",
        "num_cpus",
        "num_gpus",
        "idle_timeout_s",
        "started_at",
        "distml_version",
        "ray_version",
        "python",
        "distml_path",
        "pids",
        "watchdog_pid",
        "preload",
        "workers_ready",
        "state_dir",
    )
    return {k: rec.get(k) for k in keep}


def start(
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    idle_timeout_s: float = 1800.0,
    preload: tuple[str, ...] = PRELOAD,
) -> dict:
    """Start the warm head (or report the one already up: starting twice is a no-op)."""
    for name, value in (("--cpus", num_cpus), ("--gpus", num_gpus)):
        if value is not None and value < 0:
            raise SpecError(f"{name} must be >= 0; got {value}")
    folder = state_dir()
    with _locked(folder):
        rec = read_record(folder)
        state, _ = health(rec)
        if state == "up":
            problem = mismatch(rec)
            if problem:
                raise ClusterError(problem)
            return {"status": "up", "already_running": True, **_public(rec)}
        if state == "stale":
            _clean_stale(folder, rec)
        rec = {
            "id": secrets.token_hex(8),
            "boot_id": boot_id(),
            "temp_dir": tempfile.mkdtemp(prefix="distml-warm-", dir="/tmp"),
        }  # short paths
        try:
            _launch(folder, rec, num_cpus, num_gpus, idle_timeout_s, preload)
        except BaseException:  # failed or interrupted (Ctrl-C) part way: leave nothing behind
            _clean_stale(folder, rec)
            raise
        return {"status": "up", "already_running": False, **_public(rec)}


def _launch(folder: Path, rec: dict, num_cpus, num_gpus, idle_timeout_s: float, preload) -> None:
    """``ray start --head`` for record ``rec`` (its id and temp folder set), then the watchdog;
    fills ``rec`` in and writes it."""
    wid, base = rec["id"], rec["temp_dir"]
    token_path = folder / "auth_token"
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    src = str(Path(__file__).resolve().parents[2])  # the head's workers import this distml
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "RAY_ADDRESS",
            "RAY_API_SERVER_ADDRESS",
            "RAY_AUTH_TOKEN",
            MARK_ENV,
            WARM_PRELOAD_ENV,
        )
    }
    env.update(
        {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token_path),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])]),
            **({WARM_PRELOAD_ENV: ",".join(preload)} if preload else {}),
            warm_workers.READY_ENV: os.path.join(base, "ready"),
        }
    )
    rec.update(
        {
            "token_path": str(token_path),
            "state_dir": str(folder),
            "boot_id": boot_id(),
            **identity(),
            "started_at": time.time(),
            "idle_timeout_s": idle_timeout_s,
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "preload": list(preload),
        }
    )
    last = ""
    for attempt in (1, 2):  # a free port can be taken by another process before Ray binds it
        gcs, dash = _free_port(), _free_port()
        args = [
            sys.executable,
            "-m",
            "distml.runtime.node_start",  # `ray start`, with the head beside the raylet
            "start",
            "--head",
            "--disable-usage-stats",
            "--no-monitor",  # one fixed node: nothing to autoscale
            "--include-log-monitor=False",  # distml's drivers ask for no worker output
            "--port",
            str(gcs),
            "--node-ip-address",
            "127.0.0.1",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dash),
            "--temp-dir",
            os.path.join(base, f"r{attempt}"),
        ]
        for flag in (
            "--ray-client-server-port",
            "--node-manager-port",
            "--object-manager-port",
            "--metrics-export-port",
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
        ):
            args += [flag, str(_free_port())]
        if num_cpus is not None:
            args += ["--num-cpus", str(num_cpus)]
        if num_gpus is not None:
            args += ["--num-gpus", str(num_gpus)]
        from distml.runtime.node_start import CONNECT_RETRY

        config = {
            **CONNECT_RETRY,
            # the guard alone: it imports ``preload`` in the workers bound to no job
            **({"preload_python_modules": preload_modules(())} if preload else {}),
        }
        args += ["--system-config", json.dumps(config)]
        out = subprocess.run(
            args,
            check=False,
            env={**env, MARK_ENV: wid},
            text=True,
            capture_output=True,
            timeout=180,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        pids = processes(rec)
        found = {n: procs.named(pids, n) for n in ("gcs_server", "raylet")}
        if out.returncode == 0 and all(found.values()):
            rec.update(
                address=f"127.0.0.1:{gcs}",
                dashboard_url=f"http://127.0.0.1:{dash}",
                pids={n: v[0] for n, v in found.items()},
                start_ticks={n: v[1] for n, v in found.items()},
            )
            break
        last = (out.stderr or out.stdout)[-2000:]
        _kill(pids, rec, grace_s=1.0)
    else:
        raise ClusterError(f"`ray start --head` failed for the warm cluster: {last.strip()}")
    write_record(rec, folder)
    (folder / "last_used").touch()
    # Ray prestarts the head's workers for the first driver: one connected now, so that the
    # first run finds them started, with the preload imported
    ready = Path(base, "ready")
    ready.mkdir(exist_ok=True)
    expected = warm_workers.expected_workers(num_cpus) if preload else 0
    n, seconds = warm_workers.prime(rec["address"], env, ready, expected)
    rec.update(workers_ready=n, prime_s=round(seconds, 3))
    write_record(rec, folder)
    if idle_timeout_s > 0:
        log_path = folder / "watchdog.log"
        with open(log_path, "ab") as log_fh:
            wd = subprocess.Popen(
                [sys.executable, "-m", "distml.runtime.warm", str(folder), wid],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
            )
        rec.update(watchdog_pid=wd.pid, watchdog_ticks=procs.start_ticks(wd.pid))
        write_record(rec, folder)


def stop() -> dict:
    """Stop the warm head this state folder records (its processes only) and its watchdog."""
    folder = state_dir()
    with _locked(folder):
        rec = read_record(folder)
        if rec is None:
            return {"status": "down", "stopped": False, "message": "no warm cluster was running"}
        state, why = health(rec)
        n = 0
        if not rec.get("corrupt") and rec.get("boot_id") == boot_id():
            wd = rec.get("watchdog_pid")
            if procs.alive(wd, rec.get("watchdog_ticks")):
                with contextlib.suppress(OSError):
                    os.kill(wd, signal.SIGTERM)
            pids = processes(rec)
            n = len(pids)
            _kill(pids, rec)
        shutil.rmtree(rec.get("temp_dir") or "//none", ignore_errors=True)
        remove_record(folder)
        message = (
            f"stopped the warm cluster at {rec.get('address')} ({n} processes)"
            if state == "up"
            else f"removed a stale warm cluster record ({why})"
        )
        return {
            "status": "down",
            "stopped": state == "up",
            "address": rec.get("address"),
            "processes": n,
            "message": message,
        }


def status() -> dict:
    """The warm head's state; a stale record is cleaned and reported as ``down``."""
    folder = state_dir()
    rec = read_record(folder)
    state, why = health(rec)
    if state == "stale":
        with _locked(folder):
            again = read_record(folder)
            if again is not None and again.get("id") == rec.get("id"):
                _clean_stale(folder, again)
        return {
            "status": "down",
            "message": f"removed a stale warm cluster record ({why})",
            "state_dir": str(folder),
        }
    if state == "down":
        return {"status": "down", "message": why, "state_dir": str(folder)}
    out = {
        "status": "up",
        **_public(rec),
        "idle_s": round(time.time() - last_activity(folder, rec), 1),
        "active_runs": len(active_leases(folder)),
    }
    problem = mismatch(rec)
    if problem:
        out["mismatch"] = problem
    return out


def for_run() -> dict | None:
    """The warm head's record when it is up and healthy (None: start a cluster for the run).

    A stale record is cleaned; a head running another distml/ray/python than this process is a
    :class:`ClusterError` that says how to restart it (a cluster for the run would hide it)."""
    folder = state_dir()
    rec = read_record(folder)
    if rec is None:
        return None
    state, why = health(rec)
    if state != "up":
        import logging

        logging.getLogger("distml").warning(
            "the warm cluster recorded in %s is not usable (%s): record removed; starting a "
            "cluster for this run",
            folder,
            why,
        )
        with _locked(folder):
            again = read_record(folder)
            if again is not None and again.get("id") == rec.get("id"):
                _clean_stale(folder, again)
        return None
    problem = mismatch(rec)
    if problem:
        raise ClusterError(problem)
    return rec


def read_token(rec: dict) -> str:
    try:
        return Path(rec["token_path"]).read_text(encoding="utf-8").strip()
    except (OSError, KeyError) as e:
        raise ClusterError(
            f"cannot read the warm cluster's token file {rec.get('token_path')!r}"
            f" ({e}); restart it with `distml cluster stop && distml cluster "
            "start`"
        ) from None


# ------------------------------------------------------------------------------ activity


def _jobs_running(rec: dict) -> bool:
    """Whether the head's Jobs API lists a job still running (``distml submit`` to it)."""
    import urllib.request

    try:
        req = urllib.request.Request(
            rec["dashboard_url"] + "/api/jobs/",
            headers={"Authorization": f"Bearer {read_token(rec)}"},
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            jobs = json.loads(r.read())
        return any(j.get("status") in ("PENDING", "RUNNING") for j in jobs)
    except Exception:  # the dashboard is optional to this check: leases still count
        return False


def watch(folder: Path, wid: str) -> int:
    """The watchdog: stop head ``wid`` once idle for its timeout; exit when it is gone."""
    while True:
        rec = read_record(folder)
        if rec is None or rec.get("id") != wid:
            return 0
        timeout = float(rec.get("idle_timeout_s") or 0)
        state, why = health(rec)
        if state != "up":
            print(f"{time.ctime()}: warm cluster {wid} is gone ({why}); cleaning", flush=True)
            with _locked(folder):
                again = read_record(folder)
                if again is not None and again.get("id") == wid:
                    _clean_stale(folder, again)
            return 0
        idle = time.time() - last_activity(folder, rec)
        if timeout and idle >= timeout and _jobs_running(rec):
            (folder / "last_used").touch()
        elif timeout and idle >= timeout:
            with _locked(folder):
                again = read_record(folder)
                if again is None or again.get("id") != wid:
                    return 0
                if time.time() - last_activity(folder, again) >= timeout:
                    print(
                        f"{time.ctime()}: warm cluster {wid} idle for {idle:.0f}s; stopping",
                        flush=True,
                    )
                    _kill(processes(again), again)
                    shutil.rmtree(again.get("temp_dir") or "//none", ignore_errors=True)
                    remove_record(folder, wid)
                    return 0
        time.sleep(min(max(timeout / 10, 0.5), 30.0) if timeout else 30.0)


if __name__ == "__main__":  # the watchdog: python -m distml.runtime.warm STATE_DIR ID
    sys.exit(watch(Path(sys.argv[1]), sys.argv[2]))
