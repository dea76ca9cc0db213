"""Sections every run has: overview and provenance (from manifest.json and spec.yaml),
metrics, statsmodels' summary text, artifacts."""

from __future__ import annotations

import time
from typing import Any

from distml.report._html import Section, esc, pairs, para, pre, table
from distml.report._run import RunView

SPLITS = ("train", "valid", "test")


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _flat(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as dotted keys; lists of scalars joined (long ones shortened)."""
    out: list[tuple[str, Any]] = []
    if isinstance(d, dict):
        for k, v in d.items():
            out += (
                _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", _value(v))]
            )
    return out


def _value(v: Any) -> Any:
    if isinstance(v, list):
        if len(v) > 12:
            return ", ".join(str(x) for x in v[:12]) + f", … ({len(v)} in all)"
        return ", ".join(str(x) for x in v)
    return v


def overview(run: RunView) -> Section:
    """The run at a glance: what, when, how it went (the answer follows; provenance is last)."""
    m = run.manifest
    rows = [
        ("name", m.get("name")),
        ("kind", run.kind),
        ("run id", m.get("run_id")),
        ("status", m.get("status")),
        ("started", _when(m.get("started_at"))),
        ("finished", _when(m.get("finished_at"))),
    ]
    if run.task:
        rows.append(("task", run.task))
    total = (m.get("timings") or {}).get("total_s")
    if isinstance(total, (int, float)):
        rows.append(("total time", f"{total:.1f} s"))
    execution = m.get("execution") or {}
    if execution:
        rows += [("execution path", execution.get("path")), ("why", execution.get("reason"))]
    if m.get("best_config"):
        rows.append(
            ("best configuration", ", ".join(f"{k}={v}" for k, v in m["best_config"].items()))
        )
    parts = [pairs(r for r in rows if r[1] not in (None, ""))]
    error = m.get("error")
    if error:
        parts.append(
            f"<p class='error'>{esc(error.get('type', 'error'))}: "
            f"{esc(error.get('message', ''))}</p>"
        )
    return Section("overview", "Overview", "".join(parts))


def provenance(run: RunView) -> Section:
    """Where the answer came from: the resolved spec, the data fingerprint, the cluster,
    timings and versions. Last on the page, as on MLflow's run page or `ludwig visualize`."""
    m = run.manifest
    parts = ["<h3>Spec</h3>" + pre(run.spec_text or "(spec.yaml is missing)")]
    data = m.get("data") or {}
    if data:
        parts.append("<h3>Data</h3>" + pairs(_flat(data)))
    cluster = m.get("cluster") or {}
    if cluster or m.get("host"):
        parts.append(
            "<h3>Cluster</h3>"
            + pairs([("host", m.get("host"))] * bool(m.get("host")) + _flat(cluster))
        )
    if m.get("timings"):
        parts.append("<h3>Timings (seconds)</h3>" + pairs(_flat(m["timings"])))
    more = {
        k: m[k]
        for k in ("rows", "worker_timings_s", "memory", "tune", "seeds")
        if isinstance(m.get(k), dict) and m[k]
    }
    if more:
        parts.append("<h3>Details</h3>" + pairs(_flat(more)))
    if m.get("versions"):
        parts.append("<h3>Versions</h3>" + pairs(m["versions"].items()))
    return Section("provenance", "Provenance: spec, data, cluster, versions", "".join(parts))


def metrics(run: RunView) -> Section | None:
    import pandas as pd

    mt = run.metrics
    if not mt:
        return None
    parts = []
    by_split = {s: mt[s] for s in SPLITS if isinstance(mt.get(s), dict)}
    if by_split:
        frame = pd.DataFrame(
            [
                {
                    "split": s,
                    **{k: v for k, v in d.items() if isinstance(v, (int, float, type(None)))},
                }
                for s, d in by_split.items()
            ]
        )
        parts.append(table(frame, caption="by split"))
    cv = mt.get("cv")
    if isinstance(cv, dict) and isinstance(cv.get("mean"), dict):
        frame = pd.DataFrame(
            {
                "metric": list(cv["mean"]),
                "mean": list(cv["mean"].values()),
                "std": [cv.get("std", {}).get(k) for k in cv["mean"]],
            }
        )
        parts.append(table(frame, caption=f"cross-validation ({len(cv.get('folds', []))} folds)"))
    top = [
        (k, _value(v))
        for k, v in mt.items()
        if k not in SPLITS and k not in ("cv", "tune") and not isinstance(v, dict)
    ]
    if top:
        parts.append(pairs(top))
    if isinstance(mt.get("tune"), dict):
        parts.append("<h3>Search</h3>" + pairs(mt["tune"].items()))
    return Section("metrics", "Metrics", "".join(parts)) if parts else None


def summary(run: RunView) -> Section | None:
    text = run.text("summary.txt")
    if not text:
        return None
    return Section("summary", "Model summary", pre(text))


def artifacts(run: RunView) -> Section | None:
    files = sorted(
        p
        for p in run.path.rglob("*")
        if p.is_file()
        and ".tmp-" not in p.name
        and "checkpoints" not in p.parts
        and p.name != "report.html"
    )
    if not files:
        return None
    rows = [(str(p.relative_to(run.path)), _size(p.stat().st_size)) for p in files[:200]]
    note = para(f"{len(files)} files; the first 200 are listed") if len(files) > 200 else ""
    return Section("artifacts", "Files", pairs(rows) + note)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
