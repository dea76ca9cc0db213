"""The trials table (``tables/trials.parquet``) and the choice of the best trial — plain pandas.

One row per trial, in the order trials were created (so ``trial_id`` — ``trial_0000``,
``trial_0001``… — is the same in every run of a seeded search): ``trial_id``, ``status``
(completed, stopped — by the scheduler or the time budget —, failed, not_run), one column per
searched spec path, the final value of the metric (named by it, e.g. ``valid.logloss``) and its
best value over every iteration (``valid.logloss.best``), ``best_iteration``, ``iterations``,
``time_s`` (fit time, over every attempt), ``num_failures`` (process deaths retried),
``resumed_from`` (iteration of the checkpoint the last attempt started from), ``finished_at``,
``error``, then the trial's other final metrics (``valid.accuracy``…).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from distml.tune.space import column_values

STATUSES = ("completed", "stopped", "failed", "not_run")
_BOOKKEEPING = {
    "objective",
    "iteration",
    "final",
    "best",
    "best_iteration",
    "elapsed_s",
    "resumed_from",
    "failed",
    "error",
    "finished_at",
}


@dataclass
class TrialRecord:
    """What one trial left behind (built from Tune's results on the driver)."""

    index: int
    params: dict[str, Any]  # spec path -> value
    metrics: dict[str, Any] = field(default_factory=dict)  # the last report
    error: str | None = None  # the trial's process died for good (Tune-level error)
    num_failures: int = 0

    @property
    def trial_id(self) -> str:
        return f"trial_{self.index:04d}"

    @property
    def status(self) -> str:
        if self.error or self.metrics.get("failed"):
            return "failed"
        if "objective" not in self.metrics:
            return "not_run"
        return "completed" if self.metrics.get("final") else "stopped"

    @property
    def value(self) -> float:
        """The trial's final metric (NaN when it has none)."""
        v = self.metrics.get("objective")
        return float(v) if isinstance(v, (int, float)) and v is not None else math.nan


def _num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def trials_table(records: list[TrialRecord], paths: list[str], metric: str):
    """The trials DataFrame (columns as in the module docstring)."""
    import pandas as pd

    extra = sorted(
        {
            k
            for r in records
            for k in r.metrics
            if k not in _BOOKKEEPING and k != metric and "." in k
        }
    )
    rows = []
    for r in records:
        m = r.metrics
        best_it = m.get("best_iteration")
        row = {"trial_id": r.trial_id, "status": r.status}
        row.update({p: r.params.get(p) for p in paths})
        row.update(
            {
                metric: _num(r.value),
                f"{metric}.best": _num(m.get("best")),
                "best_iteration": int(best_it)
                if isinstance(best_it, (int, float)) and best_it is not None and best_it >= 0
                else None,
                "iterations": int(m["iteration"]) if m.get("iteration") else None,
                "time_s": _num(m.get("elapsed_s")),
                "num_failures": int(r.num_failures),
                "resumed_from": int(m.get("resumed_from") or 0),
                "finished_at": _num(m.get("finished_at")),
                "error": r.error or (m.get("error") or None),
            }
        )
        row.update({k: _num(m.get(k)) for k in extra})
        rows.append(row)
    frame = pd.DataFrame(
        rows,
        columns=[
            "trial_id",
            "status",
            *paths,
            metric,
            f"{metric}.best",
            "best_iteration",
            "iterations",
            "time_s",
            "num_failures",
            "resumed_from",
            "finished_at",
            "error",
            *extra,
        ],
    )
    for p in paths:
        frame[p] = column_values(list(frame[p]))
    for c in ("best_iteration", "iterations"):
        frame[c] = frame[c].astype("Int64")
    for c in (metric, f"{metric}.best", "time_s", "finished_at", *extra):
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("float64")
    frame["error"] = frame["error"].astype("string")
    return frame


def best_record(records: list[TrialRecord], mode: str) -> TrialRecord | None:
    """The trial with the best final metric (completed or stopped); ties go to the earliest."""
    scored = [r for r in records if r.status in ("completed", "stopped") and math.isfinite(r.value)]
    if not scored:
        return None
    sign = 1.0 if mode == "min" else -1.0
    return min(scored, key=lambda r: (sign * r.value, r.index))


def failure_summary(records: list[TrialRecord], limit: int = 3) -> str:
    """The first distinct errors, for the message of a search in which every trial failed."""
    seen: dict[str, str] = {}
    for r in records:
        text = r.error or r.metrics.get("error") or ("never ran" if r.status == "not_run" else "")
        if text and text not in seen:
            seen[text] = r.trial_id
        if len(seen) >= limit:
            break
    return "; ".join(f"{tid}: {text}" for text, tid in seen.items()) or "no trial reported"
