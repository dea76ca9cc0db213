"""Shared machinery of the benchmarks (rules: /work/shared/BENCHMARKS.md).

Every benchmark module exposes ``TITLE`` and ``run(opts: Options) -> dict``; the harness wraps
its result in the common envelope (machine, versions, threads, timestamps) and writes it
atomically to ``benchmarks/results/<name>.json`` (``<name>.quick.json`` with ``--quick``).

Helpers here: thread pinning (:func:`pinned_env`), an isolated environment for processes that
start Ray (:func:`isolated_env`), timed subprocesses (:func:`run_timed`), A/B alternation with a
warm-up (:func:`alternate`), medians (:func:`stats`) and the equality check (:func:`compare`).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent  # the repository root
RESULTS = Path(__file__).resolve().parent / "results"
PYTHON = sys.executable
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
DEFAULT_PACKAGES = (
    "distml",
    "ray",
    "xgboost",
    "scikit-learn",
    "numpy",
    "pandas",
    "pyarrow",
    "pydantic",
)


@dataclass
class Options:
    """What the command line asked for."""

    quick: bool = False
    reps: int = 3
    warmup: int = 1
    threads: int = 1
    workdir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))


class BenchmarkError(RuntimeError):
    """A side of a benchmark failed; the message carries the command and its stderr tail."""


# ------------------------------------------------------------------ environment


def pinned_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with every BLAS/OpenMP pool at ``threads``."""
    env = dict(os.environ if base is None else base)
    env.update({v: str(threads) for v in THREAD_VARS})
    return env


def isolated_env(home: Path, threads: int) -> dict[str, str]:
    """Environment for a process that may start Ray: private HOME and Ray temp dir, token auth,
    no inherited cluster address, no usage-stats prompt, threads pinned, ``distml`` importable."""
    env = pinned_env(threads)
    env.pop("RAY_ADDRESS", None)
    home.mkdir(parents=True, exist_ok=True)
    ray_tmp = home / "t"
    ray_tmp.mkdir(exist_ok=True)
    # Ray puts AF_UNIX sockets at RAY_TMPDIR/ray/session_<date>_<pid>/sockets/plasma_store
    # (~66 more characters); the kernel limit is 107 bytes.
    if len(str(ray_tmp)) > 40:
        raise BenchmarkError(f"work directory path too long for Ray's sockets: {ray_tmp}")
    env.update(
        HOME=str(home),
        RAY_AUTH_MODE="token",
        RAY_TMPDIR=str(ray_tmp),
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def bin_path(name: str) -> str:
    """A console script of the running interpreter's environment (e.g. ``distml``)."""
    cand = Path(PYTHON).parent / name
    return str(cand) if cand.exists() else name


# ------------------------------------------------------------------ timing


@dataclass
class Timed:
    """One timed subprocess: wall clock around the whole process, and what it printed."""

    wall_s: float
    stdout: str
    stderr: str


def run_timed(
    cmd: list[str], env: dict[str, str], *, timeout: float = 900, cwd: Path = ROOT
) -> Timed:
    """Run ``cmd`` to completion and time it (interpreter start and imports included)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
        raise BenchmarkError(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    return Timed(wall, proc.stdout, proc.stderr)


def last_json(text: str) -> dict:
    """The last line of ``text`` that parses as a JSON object."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise BenchmarkError(f"no JSON object in output: {text[-500:]!r}")


def alternate(
    sides: dict[str, Callable[[], dict]],
    reps: int,
    warmup: int,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, list[dict]]:
    """Run each side ``warmup`` times (discarded), then ``reps`` rounds alternating A/B; the
    order flips every round (AB, BA, AB…) so slow drift of a shared machine hits both sides.
    Each call returns a dict with at least ``wall_s``; returns ``{side: [sample, ...]}``."""
    names = list(sides)
    for w in range(warmup):
        for n in names:
            s = sides[n]()
            log(f"  warm-up {w + 1}/{warmup} {n}: {s['wall_s']:.2f}s")
    out: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(reps):
        for n in names if r % 2 == 0 else names[::-1]:
            s = sides[n]()
            out[n].append(s)
            log(f"  rep {r + 1}/{reps} {n}: {s['wall_s']:.2f}s")
    return out


def stats(values: list[float]) -> dict[str, Any]:
    """median (the figure to quote), min, max and every value, rounded to ms."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "n": len(values),
        "values": [round(v, 4) for v in values],
    }


def median_of(samples: list[dict], *path: str) -> float | None:
    """Median of ``sample[path[0]][path[1]]…`` over the samples that have it."""
    vals = []
    for s in samples:
        v: Any = s
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            vals.append(float(v))
    return round(statistics.median(vals), 4) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def compare(a: dict, b: dict, keys: list[str], tol: float) -> dict[str, Any]:
    """Equality check of dotted ``keys`` (e.g. ``valid.roc_auc``) between two metric dicts."""
    rows, ok = {}, True
    for key in keys:
        va: Any = a
        vb: Any = b
        for p in key.split("."):
            va = va.get(p) if isinstance(va, dict) else None
            vb = vb.get(p) if isinstance(vb, dict) else None
        diff = (
            abs(va - vb) if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
        )
        good = diff is not None and diff <= tol
        ok &= good
        rows[key] = {"distml": va, "baseline": vb, "abs_diff": diff, "ok": good}
    return {"ok": ok, "tolerance": tol, "values": rows}


# ------------------------------------------------------------------ envelope and output


def versions(packages: tuple[str, ...] = DEFAULT_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()),
    }
    try:
        info["nproc_available"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    return info


def write_json_atomic(path: Path, data: dict) -> None:
    """Write to ``<path>.tmp`` in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def result_path(name: str, quick: bool) -> Path:
    return RESULTS / (f"{name}.quick.json" if quick else f"{name}.json")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
