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

import datetime as _dt
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, TextIO
from urllib.parse import urlparse

from distml.errors import ClusterError, SpecError

log = logging.getLogger("distml")

#: The file name the spec has inside the job's working dir (the entrypoint names only this).
SPEC_FILE = "spec.yaml"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
#: distml's own exit codes that a job's result line may carry through to ``submit --wait``
#: (DESIGN.md §3); anything else (a bug's 1, a signal, no result line) becomes 4.
JOB_EXIT_CODES = (0, 2, 3, 4, 130)
#: Seconds to connect / to wait for an answer from the Jobs API.
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 10.0, 120.0
_ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
_TOKEN_HINT = ("set RAY_AUTH_TOKEN to the cluster's token, RAY_AUTH_TOKEN_PATH to a file "
               "holding it, or map the address to such a file in ~/.config/distml/tokens.json "
               "(~/.ray/auth_token is sent only to loopback addresses); on the head node "
               "`ray get-auth-token` prints it")
_TOKEN_PLACES = ("RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.config/distml/tokens.json, or "
                 "~/.ray/auth_token for a loopback address")


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
            "status": self.status.lower(), "job_status": self.status,
            "submission_id": self.submission_id, "job_id": self.job_id,
            "address": self.address, "address_source": self.address_source,
            "message": self.message, "existing": self.existing, "run_id": self.run_id,
            "name": self.metadata.get("distml_name"), "kind": self.metadata.get("distml_kind"),
            "entrypoint": self.entrypoint, "start_time": _iso(self.start_time),
            "end_time": _iso(self.end_time), "duration_s": self.duration_s,
            "driver_exit_code": self.driver_exit_code}
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
        err: dict[str, Any] = {"type": "JobFailed", "exit_code": self.exit_code or 4,
                               "message": f"job {self.submission_id} {self.status}: {reason}",
                               "job_exit_code": self.job_exit_code}
        if self.driver_exit_code is not None:
            err["driver_exit_code"] = self.driver_exit_code
        if job_error:
            err["job_error"] = job_error
        return err

    def summary(self) -> str:
        """A few lines for people."""
        what = self.metadata.get("distml_name")
        head = f"job {self.submission_id}" + (f" ({what} [{self.metadata.get('distml_kind')}])"
                                               if what else "")
        lines = [f"{head}: {self.status}" + (" (already on the cluster; not resubmitted)"
                                             if self.existing else ""),
                 f"cluster: {self.address} (from {self.address_source})"]
        if self.message:
            lines.append(f"message: {self.message}")
        if self.result and self.result.get("run_dir"):
            lines.append(f"run dir (on the cluster): {self.result['run_dir']}")
        metrics = (self.result or {}).get("metrics") or {}
        for split in ("train", "valid", "test"):
            m = metrics.get(split)
            if isinstance(m, dict):
                lines.append(f"{split:>5}: " + ", ".join(
                    f"{k}={v:.4g}" for k, v in m.items() if isinstance(v, (int, float))))
        if not self.finished:
            q = shlex.quote(self.submission_id)
            a = shlex.quote(self.address)
            lines.append(f"follow: distml logs {q} --follow --address {a}")
            lines.append(f"status: distml status {q} --address {a}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Submission(submission_id={self.submission_id!r}, status={self.status!r}, "
                f"address={self.address!r})")


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------ address and token

def resolve_jobs_address(address: str | None) -> tuple[str, str]:
    """(dashboard URL, where it came from): ``--address``, RAY_API_SERVER_ADDRESS, RAY_ADDRESS.

    >>> resolve_jobs_address("http://head:8265/")
    ('http://head:8265', '--address')
    """
    source = "--address"
    if not address:
        for var in _ADDRESS_ENV:
            if os.environ.get(var):
                address, source = os.environ[var], var
                break
    if not address:
        raise ClusterError("no cluster address: pass --address http://HEAD:8265 (the Ray "
                           "dashboard / Jobs API URL) or set RAY_ADDRESS")
    address = address.strip().rstrip("/")
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        hint = ""
        if parsed.scheme == "" and ":" in address:
            hint = f"; if {address} is the head node's GCS address, use http://HOST:8265"
        raise ClusterError(
            f"cluster address {address!r} (from {source}) is not a Ray Jobs API URL; distml "
            f"submits through the dashboard at http://HOST:8265{hint}")
    try:
        parsed.port
    except ValueError:
        raise ClusterError(f"cluster address {address!r} (from {source}) has an invalid "
                           "port") from None
    return address, source


def is_loopback(url: str) -> bool:
    """Whether the URL's host is this machine by its literal name (no DNS lookup).

    >>> is_loopback("http://127.0.0.1:8265"), is_loopback("http://head:8265")
    (True, False)
    """
    import ipaddress

    host = (urlparse(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tokens_file() -> Path:
    """The per-address token map: ``$XDG_CONFIG_HOME/distml/tokens.json``, by default
    ``~/.config/distml/tokens.json``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "distml" / "tokens.json"


def _normal_url(url: str) -> str:
    p = urlparse(url.strip().rstrip("/"))
    port = p.port or (443 if p.scheme == "https" else 80)
    return f"{p.scheme.lower()}://{(p.hostname or '').lower()}:{port}"


def _read_token_file(path: str, source: str) -> str:
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as e:
        raise ClusterError(f"{source} names {path!r}, which cannot be read "
                           f"({e.strerror or e}); {_TOKEN_HINT}") from None
    if not token:
        raise ClusterError(f"{source} names {path!r}, which is empty; {_TOKEN_HINT}")
    return token


def _configured_token_path(address: str) -> str | None:
    """The token file tokens.json maps this address to (scheme, host and port must match)."""
    path = tokens_file()
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ClusterError(f"{path} is not a readable JSON object ({_first_line(e)}); it maps "
                           'cluster addresses to token files: {"http://head:8265": '
                           '"~/secrets/head.token"}') from None
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ClusterError(f"{path} must be a JSON object mapping cluster addresses to token "
                           'file paths: {"http://head:8265": "~/secrets/head.token"}')
    want = _normal_url(address)
    for key, value in table.items():
        try:
            if _normal_url(key) == want:
                return value
        except ValueError:  # a bad port in someone's key: it matches nothing
            continue
    return None


def load_token(address: str | None = None) -> tuple[str | None, str | None]:
    """(token, where it came from) for the cluster at ``address``; (None, None) when none is
    configured for it.

    ``RAY_AUTH_TOKEN``, else the file in ``RAY_AUTH_TOKEN_PATH``, else the address's entry in
    :func:`tokens_file`, else — for a loopback address only — ``~/.ray/auth_token``: the local
    cluster's token never leaves this machine.
    """
    env = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if env:
        return env, "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return _read_token_file(path, "RAY_AUTH_TOKEN_PATH"), "RAY_AUTH_TOKEN_PATH"
    if address is None:
        return None, None
    mapped = _configured_token_path(address)
    if mapped is not None:
        return _read_token_file(mapped, f"{tokens_file()} for {address}"), str(tokens_file())
    if not is_loopback(address):
        return None, None
    default = Path.home() / ".ray" / "auth_token"
    try:
        token = default.read_text().strip()
    except OSError:
        return None, None
    return (token, str(default)) if token else (None, None)


def _preflight(url: str, source: str) -> None:
    """Fail fast when nothing listens at the URL's host and port (no Ray retry loops)."""
    from distml.runtime.cluster import preflight

    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        preflight(f"{parsed.hostname}:{port}", source)
    except ClusterError as e:  # name the URL the user gave, not the host:port we probed
        raise ClusterError(str(e).replace(repr(f"{parsed.hostname}:{port}"), repr(url), 1)) \
            from None


@contextmanager
def _explicit_address() -> Iterator[None]:
    """Ray's client prefers RAY_API_SERVER_ADDRESS/RAY_ADDRESS over the address it is given;
    hide them while the client is built so the resolved address is the one used."""
    saved = {k: os.environ.pop(k) for k in _ADDRESS_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


# ------------------------------------------------------------------ the client

class JobsClient:
    """A Ray ``JobSubmissionClient`` whose failures are distml errors (exit 3).

    Unreachable, refused (401/403 with what to do about the token) and unknown ids
    (:class:`JobNotFound`) each get one clear sentence naming the address and its source.
    """

    def __init__(self, address: str | None = None):
        self.address, self.source = resolve_jobs_address(address)
        _preflight(self.address, self.source)
        token, self.token_source = load_token(self.address)
        if token and urlparse(self.address).scheme == "http" and not is_loopback(self.address):
            log.warning("sending the authentication token (from %s) in clear text over plain "
                        "http to %s; use https or a tunnel to a loopback port",
                        self.token_source, self.address)
        if not token and os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token":
            # Ray's client would fall back to ~/.ray/auth_token for any address: refuse here.
            raise ClusterError(f"cannot contact {self._where()}: RAY_AUTH_MODE=token is set "
                               "here but no authentication token was found for it "
                               f"({_TOKEN_PLACES}); {_TOKEN_HINT}")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        cls = _client_class()
        with _explicit_address(), self._errors("connect"):
            self._client = cls(self.address, headers=headers)

    def _where(self) -> str:
        return f"the Ray cluster at {self.address!r} (from {self.source})"

    @contextmanager
    def _errors(self, action: str, job: str | None = None) -> Iterator[None]:
        import requests
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError as e:
            # A 401/403 from the cluster ("Authentication required/failed: ..."), or Ray's own
            # client refusing to send a request without a token under RAY_AUTH_MODE=token.
            from_server = str(e).startswith(("Authentication required", "Authentication failed"))
            if self.token_source:
                problem = (f"{self._where()} rejected the authentication token (from "
                           f"{self.token_source}): it is wrong, or belongs to another cluster")
            elif from_server:
                problem = (f"{self._where()} requires an authentication token and none was "
                           f"sent (none configured for it: {_TOKEN_PLACES})")
            else:
                problem = (f"cannot contact {self._where()}: RAY_AUTH_MODE=token is set here "
                           f"but no authentication token was found ({_TOKEN_PLACES})")
            raise ClusterError(f"{problem}; {_TOKEN_HINT}") from None
        except (requests.exceptions.Timeout,) as e:
            raise ClusterError(f"{self._where()} did not answer ({action}) within "
                               f"{READ_TIMEOUT_S:.0f} s: {_first_line(e)}") from None
        except (requests.exceptions.ConnectionError, ConnectionError) as e:
            raise ClusterError(f"cannot reach {self._where()} ({action}): {_first_line(e)}; "
                               "is the dashboard running and the port open?") from None
        except (RuntimeError, ValueError, requests.exceptions.RequestException) as e:
            # Ray raises RuntimeError for an HTTP error status; a server that is not a Ray
            # dashboard answers what Ray cannot parse (ValueError)
            text = str(e)
            if job is not None and ("404" in text or "does not exist" in text):
                raise JobNotFound(f"no job with submission id {job!r} on {self._where()}; "
                                  "`distml jobs list` shows the jobs there") from None
            hint = ("; is it the Ray dashboard (Jobs API) address, usually port 8265?"
                    if action == "connect" else "")
            raise ClusterError(f"{self._where()} refused the request ({action}): "
                               f"{_first_line(e)}{hint}") from None

    # -- thin wrappers
    def info(self, submission_id: str) -> Submission:
        with self._errors("job status", submission_id):
            details = self._client.get_job_info(submission_id)
        return self._submission(details)

    def find(self, submission_id: str) -> Submission | None:
        """The job with this id, or None when the cluster has none."""
        try:
            return self.info(submission_id)
        except JobNotFound:
            return None

    def logs(self, submission_id: str) -> str:
        with self._errors("job logs", submission_id):
            return self._client.get_job_logs(submission_id)

    def stop(self, submission_id: str) -> bool:
        with self._errors("stop job", submission_id):
            return bool(self._client.stop_job(submission_id))

    def list(self) -> list[Submission]:
        with self._errors("list jobs"):
            jobs = self._client.list_jobs()
        return sorted((self._submission(j) for j in jobs),
                      key=lambda s: (s.start_time or 0, s.submission_id))

    def submit(self, **kwargs: Any) -> str:
        with self._errors("submit"):
            return self._client.submit_job(**kwargs)

    def _submission(self, d: Any) -> Submission:
        def secs(ms: int | None) -> float | None:
            return ms / 1000.0 if ms else None

        status = getattr(d.status, "value", d.status)
        return Submission(
            submission_id=d.submission_id or d.job_id, address=self.address,
            address_source=self.source, status=str(status), message=d.message,
            job_id=d.job_id, entrypoint=d.entrypoint, start_time=secs(d.start_time),
            end_time=secs(d.end_time), driver_exit_code=getattr(d, "driver_exit_code", None),
            metadata=dict(d.metadata or {}))


def _client_class():
    """JobSubmissionClient with a deadline on every HTTP request (Ray sets none)."""
    from ray.job_submission import JobSubmissionClient

    class _Client(JobSubmissionClient):
        def _do_request(self, method, endpoint, **kwargs):
            kwargs.setdefault("timeout", (CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
            return super()._do_request(method, endpoint, **kwargs)

    return _Client


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


# ------------------------------------------------------------------ submit

def entrypoint(run_id: str) -> str:
    """The one command a submitted job runs; only the (validated) run id varies.

    >>> entrypoint("nightly-2026-11-21")
    'python -m distml run spec.yaml --run-id nightly-2026-11-21 --json'
    """
    from distml.spec.base import check_name

    check_name(run_id, "submission id")
    return shlex.join(["python", "-m", "distml", "run", SPEC_FILE, "--run-id", run_id, "--json"])


def _overrides(overrides: Mapping[str, Any] | Iterable[str] | None,
               output: str | os.PathLike | None) -> dict[str, Any]:
    from distml.spec.load import parse_override

    merged: dict[str, Any] = {}
    if overrides:
        merged.update(overrides if isinstance(overrides, Mapping)
                      else dict(parse_override(s) for s in overrides))
    if output is not None:
        merged["output.dir"] = str(output)
    return merged


def _local_path_warnings(spec) -> list[str]:
    """Paths that mean something else on the cluster: relative data, a relative output root."""
    notes = []
    for field_name, value in (("data.source", spec.data.source),
                              ("data.test_source", spec.data.test_source)):
        if value and ":" not in value.split("/")[0] and not os.path.isabs(value):
            notes.append(f"{field_name} {value!r} is a relative path: on the cluster it is read "
                         "relative to the job's working dir, which holds only the spec; use an "
                         "absolute path on shared storage or a URL (s3://, gs://)")
    if not os.path.isabs(spec.output.dir) and "://" not in spec.output.dir:
        notes.append(f"output.dir {spec.output.dir!r} is relative: the run directory will be "
                     "written inside the job's temporary working dir on the node that runs the "
                     "driver; pass --output /shared/path to keep it")
    return notes


def submit(spec: "str | os.PathLike | Mapping | Any",
           overrides: Mapping[str, Any] | Iterable[str] | None = None, *,
           address: str | None = None, submission_id: str | None = None, wait: bool = False,
           output: str | os.PathLike | None = None, pip: Iterable[str] | None = None,
           env_vars: Mapping[str, str] | None = None, stream: TextIO | None = None,
           poll_s: float = 1.0) -> Submission:
    """Submit ``spec`` to the Ray cluster at ``address`` and return the :class:`Submission`.

    The spec is validated here first (SpecError, exit 2, before any contact with the cluster;
    its data are checked on the cluster). ``submission_id`` (default ``NAME-RUNID``) is also the
    run id: if the cluster already has a job with it, that job is reported and nothing is
    submitted. ``wait=True`` follows the job to its end (its log goes to ``stream`` if given).
    ``pip`` / ``env_vars`` add to the job's ``runtime_env`` only when given.
    """
    from distml.api import validate
    from distml.runtime.artifacts import new_run_id
    from distml.spec.base import check_name
    from distml.spec.yamlio import dump_yaml

    job_spec = validate(spec, _overrides(overrides, output), check_data=False)
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

    client = JobsClient(address)
    found = client.find(sid)
    if found is not None:
        log.info("job %s already exists on %s (%s); not resubmitting", sid, client.address,
                 found.status)
        found.existing = True
        return follow(client, sid, stream=stream, poll_s=poll_s, existing=True) if wait \
            else found
    for note in _local_path_warnings(job_spec):
        log.warning("%s", note)
    metadata = {"distml_version": _version(), "distml_name": job_spec.name,
                "distml_kind": job_spec.kind, "distml_run_id": sid}
    # The fields the spec (with --set/--output) sets, validated here; defaults are left to the
    # cluster's distml, so a newer client does not send fields an older cluster does not know.
    shipped = job_spec.model_dump(mode="json", exclude_unset=True)
    with tempfile.TemporaryDirectory(prefix="distml-submit-") as tmp:
        (Path(tmp) / SPEC_FILE).write_text(dump_yaml(shipped, sort_keys=False),
                                           encoding="utf-8")
        try:
            client.submit(entrypoint=entrypoint(sid), submission_id=sid,
                          runtime_env={"working_dir": tmp, **runtime_env}, metadata=metadata)
        except ClusterError:
            # Two submitters raced on the same id: the other one won; report its job.
            raced = client.find(sid)
            if raced is None:
                raise
            raced.existing = True
            return follow(client, sid, stream=stream, poll_s=poll_s, existing=True) if wait \
                else raced
    log.info("submitted %s [%s] as job %s to %s (from %s)", job_spec.name, job_spec.kind, sid,
             client.address, client.source)
    if wait:
        return follow(client, sid, stream=stream, poll_s=poll_s)
    return client.info(sid)


def _version() -> str:
    from distml import __version__

    return __version__


# ------------------------------------------------------------------ following a job

def follow(client: JobsClient, submission_id: str, *, stream: TextIO | None = None,
           poll_s: float = 1.0, existing: bool = False,
           timeout_s: float | None = None) -> Submission:
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
        log.warning("stopped following job %s; it keeps running on the cluster (stop it with "
                    "`distml stop %s --address %s`)", submission_id, submission_id,
                    client.address)
        raise
    text = client.logs(submission_id)
    if stream is not None and len(text) > shown:
        stream.write(text[shown:])
        stream.flush()
    sub.result = job_result(text)
    sub.existing = existing
    if sub.status == "FAILED" and sub.result is None and "No module named distml" in text:
        sub.message = (f"{sub.message or 'the job failed'}; distml is not installed in the "
                       "cluster's Python: run an image built from cluster/Dockerfile, or "
                       "submit with --pip 'distml==VERSION'")
    return sub


def job_result(logs: str) -> dict[str, Any] | None:
    """The ``distml run --json`` object a job printed last, or None.

    >>> job_result('distml: run succeeded\\n{"status": "succeeded", "run_dir": "/r"}\\n')
    {'status': 'succeeded', 'run_dir': '/r'}
    """
    for line in reversed(logs.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "status" in obj:
                return obj
    return None


# ------------------------------------------------------------------ status, logs, stop, list

def status(submission_id: str, *, address: str | None = None, wait: bool = False,
           poll_s: float = 1.0) -> Submission:
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


def follow_logs(submission_id: str, *, address: str | None = None,
                stream: TextIO | None = None, poll_s: float = 1.0) -> Submission:
    """Copy the job's log to ``stream`` (default stdout) until the job ends; returns it."""
    return follow(JobsClient(address), submission_id, stream=stream or sys.stdout,
                  poll_s=poll_s)


def stop(submission_id: str, *, address: str | None = None, wait: bool = True,
         timeout_s: float = 60.0, poll_s: float = 0.5) -> Submission:
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
        raise ClusterError(f"job {submission_id} on {client._where()} is still {sub.status} "
                           f"{timeout_s:.0f} s after the stop request")
    return sub


def list_jobs(*, address: str | None = None, all_jobs: bool = False) -> list[Submission]:
    """The cluster's jobs, oldest first; only distml's unless ``all_jobs``."""
    jobs = JobsClient(address).list()
    return jobs if all_jobs else [j for j in jobs if "distml_run_id" in j.metadata]


def format_table(jobs: list[Submission]) -> str:
    """``jobs list`` for people: one line per job."""
    if not jobs:
        return "no jobs"
    rows = [("SUBMISSION ID", "STATUS", "NAME", "KIND", "STARTED (UTC)", "DURATION")]
    for j in jobs:
        started = (_iso(j.start_time) or "-").replace("+00:00", "")
        rows.append((j.submission_id, j.status, j.metadata.get("distml_name", "-"),
                     j.metadata.get("distml_kind", "-"), started,
                     f"{j.duration_s:.1f}s" if j.duration_s is not None else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


__all__ = ["Submission", "JobsClient", "JobNotFound", "submit", "status", "logs", "stop",
           "list_jobs", "follow", "job_result", "entrypoint", "resolve_jobs_address",
           "load_token", "follow_logs", "is_loopback", "tokens_file"]
