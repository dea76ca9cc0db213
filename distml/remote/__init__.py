"""Sending a spec to a remote Ray cluster through the Ray Jobs API (DESIGN.md §3, §6).

``distml submit`` validates the spec here (never its data: the data may exist only on the
cluster), writes it — the fields it sets, with ``--set``/``--output`` applied — as ``spec.yaml``
into a temporary folder that travels as the job's ``runtime_env`` working dir, and submits the
fixed entrypoint ``python -m distml run spec.yaml --run-id ID --json``. Nothing from the spec
reaches the entrypoint: it is an argument list joined with :func:`shlex.join`. The submission
id is the run id, so resubmitting an id reports the job that already has it instead of running
it twice.

Addresses: ``--address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``; it must be the
dashboard URL (``http://HEAD:8265``). A TCP pre-flight fails an unreachable address in seconds.
Token authentication: a token is sent (as a bearer token) only when one was configured for the
cluster: ``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``, else the entry for
the address in ``~/.config/distml/tokens.json`` (``{"http://head:8265": "~/secrets/head.token"}``:
address → token file). The local cluster's own ``~/.ray/auth_token`` (which any local
``ray.init()`` creates) goes only to loopback addresses, never elsewhere. A token sent over plain
``http://`` to another host gets a one-line warning. A 401/403 becomes exit 3 with a message that
says how to provide it.

>>> sub = distml.submit("jobs/quickstart.yaml", address="http://head:8265",
...                     wait=True)                                       # doctest: +SKIP
>>> sub.status, sub.result["metrics"]["valid"]["roc_auc"]               # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, TextIO

from distml.errors import ClusterError, SpecError
from distml.remote.address import is_loopback, load_token, resolve_jobs_address, tokens_file
from distml.remote.client import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, JobsClient
from distml.remote.jobs import (
    JOB_EXIT_CODES,
    SPEC_FILE,
    TERMINAL,
    JobNotFound,
    Submission,
    format_table,
)

log = logging.getLogger("distml")

# ------------------------------------------------------------------ submit


def entrypoint(run_id: str) -> str:
    """The one command a submitted job runs; only the (validated) run id varies.

    >>> entrypoint("nightly-2026-11-21")
    'python -m distml run spec.yaml --run-id nightly-2026-11-21 --json'
    """
    from distml.spec.base import check_name

    check_name(run_id, "submission id")
    return shlex.join(["python", "-m", "distml", "run", SPEC_FILE, "--run-id", run_id, "--json"])


def _overrides(
    overrides: Mapping[str, Any] | Iterable[str] | None, output: str | os.PathLike | None
) -> dict[str, Any]:
    from distml.spec.load import overrides_dict

    merged = overrides_dict(overrides)
    if output is not None:
        merged["output.dir"] = str(output)
    return merged


def _local_path_warnings(spec) -> list[str]:
    """Paths that mean something else on the cluster: relative data, a relative output root
    (not the placeholder of a frame that travels with the job, ``data=``)."""
    from distml.runtime.frames import FIELDS

    notes = []
    for field_name, value in (
        ("data.source", spec.data.source),
        ("data.test_source", spec.data.test_source),
    ):
        if value in {f"{keyword}=" for keyword in FIELDS}:
            continue
        if value and ":" not in value.split("/")[0] and not os.path.isabs(value):
            notes.append(
                f"{field_name} {value!r} is a relative path: on the cluster it is read "
                "relative to the job's working dir, which holds only the spec; use an "
                "absolute path on shared storage or a URL (s3://, gs://)"
            )
    if not os.path.isabs(spec.output.dir) and "://" not in spec.output.dir:
        notes.append(
            f"output.dir {spec.output.dir!r} is relative: the run directory will be "
            "written inside the job's temporary working dir on the node that runs the "
            "driver; pass --output /shared/path to keep it"
        )
    return notes


def submit(
    spec: "str | os.PathLike | Mapping | Any",
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    *,
    address: str | None = None,
    submission_id: str | None = None,
    wait: bool = False,
    output: str | os.PathLike | None = None,
    pip: Iterable[str] | None = None,
    env_vars: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
    poll_s: float = 1.0,
    data: Any = None,
    test_data: Any = None,
) -> Submission:
    """Submit ``spec`` to the Ray cluster at ``address`` and return the :class:`Submission`.

    The spec is validated here first (SpecError, exit 2, before any contact with the cluster;
    its data are checked on the cluster). ``submission_id`` (default ``NAME-RUNID``) is also the
    run id: if the cluster already has a job with it, that job is reported and nothing is
    submitted. ``wait=True`` follows the job to its end (its log goes to ``stream`` if given).
    ``pip`` / ``env_vars`` add to the job's ``runtime_env`` only when given.

    ``data`` (``test_data``): a pandas DataFrame that travels with the job, as parquet in its
    working dir (at most 100 MiB), instead of the spec's ``data.source``
    (``data.test_source``); it gets every check of a file source here, before the cluster is
    contacted (:mod:`distml.remote.shipped`)::

        distml.submit("jobs/quickstart.yaml", data=train_df, address="http://head:8265")
    """
    from distml.api import validate
    from distml.remote import shipped as ship
    from distml.runtime import frames as fr
    from distml.runtime.artifacts import new_run_id
    from distml.spec.base import check_name
    from distml.spec.yamlio import dump_yaml

    frames = fr.describe_all(data=data, test_data=test_data)
    merged = _overrides(overrides, output)
    job_spec = validate(spec, merged, check_data=False, data=data, test_data=test_data)
    sid = submission_id or f"{job_spec.name[:100]}-{new_run_id()}"
    try:
        check_name(sid, "submission id")
    except ValueError as e:
        raise SpecError(str(e)) from None
    runtime_env: dict[str, Any] = {}
    pip = list(pip or [])
    if pip:
        runtime_env["pip"] = pip
    if env_vars:
        bad = [k for k in env_vars if not k or "=" in k]
        if bad:
            raise SpecError(f"--env names must be non-empty and contain no '='; got {bad}")
        runtime_env["env_vars"] = {str(k): str(v) for k, v in env_vars.items()}
    with tempfile.TemporaryDirectory(prefix="distml-submit-") as tmp:
        # the working dir first: frames are written and checked before any contact
        fields = ship.ship(frames, job_spec, merged, tmp) if frames else {}
        # The fields the spec (with --set/--output) sets, validated here; defaults are left to
        # the cluster's distml, so a newer client does not send fields an older cluster does
        # not know.
        shipped = ship.set_fields(job_spec.model_dump(mode="json", exclude_unset=True), fields)
        (Path(tmp) / SPEC_FILE).write_text(dump_yaml(shipped, sort_keys=False), encoding="utf-8")
        client, existing = _send(job_spec, sid, tmp, runtime_env, ship.metadata(frames), address)
    if existing is not None:
        existing.existing = True
        return (
            follow(client, sid, stream=stream, poll_s=poll_s, existing=True) if wait else existing
        )
    log.info(
        "submitted %s [%s] as job %s to %s (from %s)",
        job_spec.name,
        job_spec.kind,
        sid,
        client.address,
        client.source,
    )
    if wait:
        return follow(client, sid, stream=stream, poll_s=poll_s)
    return client.info(sid)


def _send(
    job_spec, sid: str, working_dir: str, runtime_env: dict, extra: dict, address: str | None
) -> tuple[JobsClient, Submission | None]:
    """Submit the job whose working dir is ready: ``(client, None)``, or ``(client, job)`` when
    the cluster already has a job with the id ``sid`` (submitted before, or by a submitter
    that won a race for it), which is then not submitted again."""
    client = JobsClient(address)
    found = client.find(sid)
    if found is not None:
        log.info(
            "job %s already exists on %s (%s); not resubmitting", sid, client.address, found.status
        )
        return client, found
    for note in _local_path_warnings(job_spec):
        log.warning("%s", note)
    metadata = {
        "distml_version": _version(),
        "distml_name": job_spec.name,
        "distml_kind": job_spec.kind,
        "distml_run_id": sid,
        **extra,
    }
    try:
        client.submit(
            entrypoint=entrypoint(sid),
            submission_id=sid,
            runtime_env={"working_dir": working_dir, **runtime_env},
            metadata=metadata,
        )
    except ClusterError:
        raced = client.find(sid)  # two submitters raced on the same id: the other one won
        if raced is None:
            raise
        return client, raced
    return client, None


def _version() -> str:
    from distml import __version__

    return __version__


# ------------------------------------------------------------------ following a job


def follow(
    client: JobsClient,
    submission_id: str,
    *,
    stream: TextIO | None = None,
    poll_s: float = 1.0,
    existing: bool = False,
    timeout_s: float | None = None,
) -> Submission:
    """Wait until the job ends, copying its new log text to ``stream`` as it arrives.

    Polls the Jobs API (no websocket, so it works inside an event loop and behind proxies).
    Returns the finished :class:`Submission` with ``result`` parsed from the job's last JSON
    line. On Ctrl-C it says the job keeps running and re-raises.
    """
    shown = 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            sub = client.info(submission_id)
            if stream is not None:
                text = client.logs(submission_id)
                if len(text) > shown:
                    stream.write(text[shown:])
                    stream.flush()
                    shown = len(text)
            if sub.finished:
                break
            if deadline is not None and time.monotonic() > deadline:
                sub.existing = existing
                return sub
            time.sleep(poll_s)
    except KeyboardInterrupt:
        log.warning(
            "stopped following job %s; it keeps running on the cluster (stop it with "
            "`distml stop %s --address %s`)",
            submission_id,
            submission_id,
            client.address,
        )
        raise
    text = client.logs(submission_id)
    if stream is not None and len(text) > shown:
        stream.write(text[shown:])
        stream.flush()
    sub.result = job_result(text)
    sub.existing = existing
    if sub.status == "FAILED" and sub.result is None and "No module named distml" in text:
        sub.message = (
            f"{sub.message or 'the job failed'}; distml is not installed in the "
            "cluster's Python: run an image built from cluster/Dockerfile, or "
            "submit with --pip 'distml==VERSION'"
        )
    return sub


def job_result(logs: str) -> dict[str, Any] | None:
    """The ``distml run --json`` object a job printed last, or None. The object ends its line
    but need not start it: another process that shares the output (Ray's worker nodes on
    Spark, Ray's own lines in a job's logs) may have left part of a line before it.

    >>> job_result('distml: run succeeded\\n{"status": "succeeded", "run_dir": "/r"}\\n')
    {'status': 'succeeded', 'run_dir': '/r'}
    >>> job_result('2026-12-06 INFO node.py:748 -- Local{"status": "failed"}\\n')
    {'status': 'failed'}
    """
    decode = json.JSONDecoder().raw_decode
    for line in reversed(logs.splitlines()):
        line = line.strip()
        if not line.endswith("}"):
            continue
        start = line.find("{")
        while start >= 0:
            try:
                obj, end = decode(line, start)
            except ValueError:
                obj, end = None, -1
            if end == len(line) and isinstance(obj, dict) and "status" in obj:
                return obj
            start = line.find("{", start + 1)
    return None


# ------------------------------------------------------------------ status, logs, stop, list


def status(
    submission_id: str, *, address: str | None = None, wait: bool = False, poll_s: float = 1.0
) -> Submission:
    """The job's current state (with its result once it finished); with ``wait``, its state
    once it ended (``exit_code`` is then what ``distml status --wait`` exits with)."""
    client = JobsClient(address)
    if wait:
        return follow(client, submission_id, poll_s=poll_s)
    sub = client.info(submission_id)
    if sub.finished:
        sub.result = job_result(client.logs(submission_id))
    return sub


def logs(submission_id: str, *, address: str | None = None) -> str:
    """The job's log text so far."""
    return JobsClient(address).logs(submission_id)


def follow_logs(
    submission_id: str,
    *,
    address: str | None = None,
    stream: TextIO | None = None,
    poll_s: float = 1.0,
) -> Submission:
    """Copy the job's log to ``stream`` (default stdout) until the job ends; returns it."""
    return follow(JobsClient(address), submission_id, stream=stream or sys.stdout, poll_s=poll_s)


def stop(
    submission_id: str,
    *,
    address: str | None = None,
    wait: bool = True,
    timeout_s: float = 60.0,
    poll_s: float = 0.5,
) -> Submission:
    """Ask the job to stop; with ``wait``, until it is STOPPED (or ended otherwise).

    Raises ClusterError (exit 3) when it is still running after ``timeout_s``.
    """
    client = JobsClient(address)
    sub = client.info(submission_id)
    if sub.finished:
        log.info("job %s already ended (%s); nothing to stop", submission_id, sub.status)
        return sub
    client.stop(submission_id)
    if not wait:
        return client.info(submission_id)
    sub = follow(client, submission_id, poll_s=poll_s, timeout_s=timeout_s)
    if not sub.finished:
        raise ClusterError(
            f"job {submission_id} on {client._where()} is still {sub.status} "
            f"{timeout_s:.0f} s after the stop request"
        )
    return sub


def list_jobs(*, address: str | None = None, all_jobs: bool = False) -> list[Submission]:
    """The cluster's jobs, oldest first; only distml's unless ``all_jobs``."""
    jobs = JobsClient(address).list()
    return jobs if all_jobs else [j for j in jobs if "distml_run_id" in j.metadata]


__all__ = [
    "Submission",
    "JobsClient",
    "JobNotFound",
    "submit",
    "status",
    "logs",
    "stop",
    "list_jobs",
    "follow",
    "follow_logs",
    "job_result",
    "entrypoint",
    "format_table",
    "resolve_jobs_address",
    "load_token",
    "is_loopback",
    "tokens_file",
    "SPEC_FILE",
    "TERMINAL",
    "JOB_EXIT_CODES",
    "CONNECT_TIMEOUT_S",
    "READ_TIMEOUT_S",
]
