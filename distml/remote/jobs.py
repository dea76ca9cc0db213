"""What a job on a Ray cluster is, for people: :class:`Submission`, its table and its codes."""

from __future__ import annotations

import datetime as _dt
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from distml.errors import ClusterError

#: The file name the spec has inside the job's working dir (the entrypoint names only this).
SPEC_FILE = "spec.yaml"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
#: distml's own exit codes that a job's result line may carry through to ``submit --wait``
#: (DESIGN.md §3); anything else (a bug's 1, a signal, no result line) becomes 4.
JOB_EXIT_CODES = (0, 2, 3, 4, 130)


class JobNotFound(ClusterError):
    """The cluster has no job with that submission id (exit 3)."""


# ------------------------------------------------------------------ what a job is, for people


@dataclass
class Submission:
    """A job on a Ray cluster, as distml submitted (or found) it.

    ``status`` is Ray's job status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED); ``result`` is
    the job's own ``distml run --json`` object once it finished (run dir, metrics or error);
    ``existing`` says the id already named a job, so nothing was submitted.
    """

    submission_id: str
    address: str
    address_source: str
    status: str
    message: str | None = None
    job_id: str | None = None
    entrypoint: str | None = None
    start_time: float | None = None  # seconds since the epoch
    end_time: float | None = None
    driver_exit_code: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    existing: bool = False
    result: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"

    @property
    def job_exit_code(self) -> int | None:
        """The exit code the job's own ``distml run`` reported (its last JSON line), or None.

        Only distml's codes count (:data:`JOB_EXIT_CODES`); a job that ended without saying
        (killed, no distml on the cluster, a runtime_env that failed to build) has None.
        """
        if not self.finished or self.result is None:
            return None
        if self.result.get("status") == "succeeded":
            code: Any = 0
        else:
            code = (self.result.get("error") or {}).get("exit_code")
        return code if isinstance(code, int) and code in JOB_EXIT_CODES else None

    @property
    def exit_code(self) -> int | None:
        """What ``--wait`` exits with, None while it runs: 0 SUCCEEDED; for FAILED/STOPPED the
        job's own distml code (2 bad input, 3 cluster, 4 failed fit, 130 interrupted) when it
        reported one, else 4."""
        if not self.finished:
            return None
        if self.succeeded:
            return 0
        code = self.job_exit_code
        return code if code not in (None, 0) else 4

    @property
    def run_id(self) -> str | None:
        return self.metadata.get("distml_run_id")

    @property
    def duration_s(self) -> float | None:
        if self.start_time is None:
            return None
        end = self.end_time if self.end_time is not None else time.time()
        return round(end - self.start_time, 3)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` object: ``status`` is the job status in lower case."""
        out: dict[str, Any] = {
            "status": self.status.lower(),
            "job_status": self.status,
            "submission_id": self.submission_id,
            "job_id": self.job_id,
            "address": self.address,
            "address_source": self.address_source,
            "message": self.message,
            "existing": self.existing,
            "run_id": self.run_id,
            "name": self.metadata.get("distml_name"),
            "kind": self.metadata.get("distml_kind"),
            "entrypoint": self.entrypoint,
            "start_time": iso_time(self.start_time),
            "end_time": iso_time(self.end_time),
            "duration_s": self.duration_s,
            "driver_exit_code": self.driver_exit_code,
        }
        if self.finished:
            out["exit_code"], out["job_exit_code"] = self.exit_code, self.job_exit_code
        if self.result is not None:
            out["result"] = self.result
            for key in ("run_dir", "metrics"):
                if key in self.result:
                    out[key] = self.result[key]
        if self.finished and not self.succeeded:
            out["error"] = self.error()
        return out

    def error(self) -> dict[str, Any]:
        """Why a FAILED/STOPPED job did not succeed (with the job's own error, if it printed
        one)."""
        job_error = (self.result or {}).get("error") or {}
        reason = job_error.get("message") or self.message or "no message"
        err: dict[str, Any] = {
            "type": "JobFailed",
            "exit_code": self.exit_code or 4,
            "message": f"job {self.submission_id} {self.status}: {reason}",
            "job_exit_code": self.job_exit_code,
        }
        if self.driver_exit_code is not None:
            err["driver_exit_code"] = self.driver_exit_code
        if job_error:
            err["job_error"] = job_error
        return err

    def summary(self) -> str:
        """A few lines for people."""
        what = self.metadata.get("distml_name")
        head = f"job {self.submission_id}" + (
            f" ({what} [{self.metadata.get('distml_kind')}])" if what else ""
        )
        lines = [
            f"{head}: {self.status}"
            + (" (already on the cluster; not resubmitted)" if self.existing else ""),
            f"cluster: {self.address} (from {self.address_source})",
        ]
        if self.message:
            lines.append(f"message: {self.message}")
        if self.result and self.result.get("run_dir"):
            lines.append(f"run dir (on the cluster): {self.result['run_dir']}")
        metrics = (self.result or {}).get("metrics") or {}
        for split in ("train", "valid", "test"):
            m = metrics.get(split)
            if isinstance(m, dict):
                lines.append(
                    f"{split:>5}: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in m.items() if isinstance(v, (int, float)))
                )
        if not self.finished:
            q = shlex.quote(self.submission_id)
            a = shlex.quote(self.address)
            lines.append(f"follow: distml logs {q} --follow --address {a}")
            lines.append(f"status: distml status {q} --address {a}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Submission(submission_id={self.submission_id!r}, status={self.status!r}, "
            f"address={self.address!r})"
        )


def iso_time(t: float | None) -> str | None:
    if t is None:
        return None
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="seconds")


def format_table(jobs: list[Submission]) -> str:
    """``jobs list`` for people: one line per job."""
    if not jobs:
        return "no jobs"
    rows = [("SUBMISSION ID", "STATUS", "NAME", "KIND", "STARTED (UTC)", "DURATION")]
    for j in jobs:
        started = (iso_time(j.start_time) or "-").replace("+00:00", "")
        rows.append(
            (
                j.submission_id,
                j.status,
                j.metadata.get("distml_name", "-"),
                j.metadata.get("distml_kind", "-"),
                started,
                f"{j.duration_s:.1f}s" if j.duration_s is not None else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
