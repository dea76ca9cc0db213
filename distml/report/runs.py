"""``distml runs``: the runs under an output root, with status, kind, key metric and time."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distml.errors import SpecError

#: key metric by preference: supervised splits first, then kind-level figures
_SUPERVISED = ("roc_auc", "accuracy", "r2", "rmse", "logloss")
_KIND_LEVEL = (
    "explained_variance_ratio_sum",
    "inertia",
    "r_squared",
    "pseudo_r_squared",
    "r_squared_median",
    "pseudo_r_squared_median",
    "aic",
    "aic_median",
    "n_failed",
)


@dataclass
class RunRow:
    name: str
    run_id: str
    status: str
    kind: str
    metric: str | None
    value: float | None
    started_at: float | None
    seconds: float | None
    run_dir: str
    report: bool
    #: why the status is what it is, when that is not plain (abandoned, unverified)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def key_metric(metrics: dict) -> tuple[str | None, float | None]:
    """The figure a person looks at first: a search's metric, else a held-out split's headline
    metric, else a kind-level figure."""
    tune = metrics.get("tune")
    if isinstance(tune, dict) and isinstance(tune.get("best_value"), (int, float)):
        return str(tune.get("metric")), float(tune["best_value"])
    cv = metrics.get("cv")
    candidates = [(s, metrics.get(s)) for s in ("test", "valid")]
    if isinstance(cv, dict):
        candidates.append(("cv", cv.get("mean")))
    candidates.append(("train", metrics.get("train")))
    for split, m in candidates:
        if isinstance(m, dict):
            for k in _SUPERVISED:
                if isinstance(m.get(k), (int, float)):
                    return f"{split}.{k}", float(m[k])
    for k in _KIND_LEVEL:
        if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics.get(k), bool):
            return k, float(metrics[k])
    return None, None


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def list_runs(output: str | os.PathLike = "runs") -> list[RunRow]:
    """Every ``OUTPUT/NAME/RUN_ID/`` with a manifest, newest first.

    A finished run is ``succeeded`` only when its artifacts check out against the digests
    recorded at ``_SUCCESS`` (else ``unverified``, with the reason in ``note``). A run whose
    manifest still says ``running`` is ``running`` while its lock's holder lives, ``abandoned``
    when the holder is provably gone (killed: the next run of that id cleans up), and
    ``incomplete`` when that cannot be told (a holder on another host)."""
    from distml.errors import DataError
    from distml.runtime.artifacts import holder_gone, read_holder, verify_finished

    root = Path(output).expanduser()
    if not root.is_dir():
        raise SpecError(f"--output: {str(root)!r} is not a directory (no runs there)")
    rows = []
    for manifest_path in root.glob("*/*/manifest.json"):
        run_dir = manifest_path.parent
        m = _read(manifest_path)
        if not m:
            continue
        status, note = str(m.get("status", "unknown")), None
        if (run_dir / "_SUCCESS").is_file():
            try:
                verify_finished(run_dir)
                status = "succeeded"
            except DataError as e:
                status, note = "unverified", e.message
        elif status in ("running", "succeeded"):
            holder = read_holder(run_dir)
            if holder is None or holder_gone(holder):
                status = "abandoned"
                note = (
                    "its process is gone (killed?): rerun the same --run-id to start it "
                    "afresh, or --resume"
                )
            elif status == "running" and holder.get("host"):
                note = f"pid {holder.get('pid')} on {holder.get('host')}"
            else:
                status = "incomplete"
        metric, value = key_metric(_read(run_dir / "metrics.json"))
        started = m.get("started_at") if isinstance(m.get("started_at"), (int, float)) else None
        timings = m.get("timings") if isinstance(m.get("timings"), dict) else {}
        seconds = timings.get("total_s")
        if (
            not isinstance(seconds, (int, float))
            and started
            and isinstance(m.get("finished_at"), (int, float))
        ):
            seconds = m["finished_at"] - started
        rows.append(
            RunRow(
                str(m.get("name", run_dir.parent.name)),
                str(m.get("run_id", run_dir.name)),
                status,
                str(m.get("kind", "")),
                metric,
                value if value is None or math.isfinite(value) else None,
                started,
                float(seconds) if isinstance(seconds, (int, float)) else None,
                str(run_dir),
                (run_dir / "report.html").is_file(),
                note,
            )
        )
    rows.sort(key=lambda r: (r.started_at or 0, r.name, r.run_id), reverse=True)
    return rows


def format_runs(rows: list[RunRow]) -> str:
    """A plain text table for people."""
    if not rows:
        return "no runs\n"
    head = ("STARTED (UTC)", "NAME", "RUN ID", "KIND", "STATUS", "KEY METRIC", "TIME")
    body = []
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.started_at)) if r.started_at else ""
        metric = f"{r.metric}={r.value:.4g}" if r.metric and r.value is not None else ""
        secs = f"{r.seconds:.1f}s" if r.seconds is not None else ""
        body.append((when, r.name, r.run_id, r.kind, r.status, metric, secs))
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    return (
        "\n".join(
            "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
            for row in [head, *body]
        )
        + "\n"
    )
