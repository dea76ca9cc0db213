"""The Ray Jobs API client whose failures are distml errors (exit 3)."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import urlparse

from distml.errors import ClusterError, first_line
from distml.remote.address import (
    ADDRESS_ENV,
    TOKEN_HINT,
    TOKEN_PLACES,
    is_loopback,
    load_token,
    resolve_jobs_address,
)
from distml.remote.jobs import JobNotFound, Submission

log = logging.getLogger("distml")

#: Seconds to connect / to wait for an answer from the Jobs API.
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 10.0, 120.0


def preflight_url(url: str, source: str) -> None:
    """Fail fast when nothing listens at the URL's host and port (no Ray retry loops)."""
    from distml.runtime.cluster import preflight

    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        preflight(f"{parsed.hostname}:{port}", source)
    except ClusterError as e:  # name the URL the user gave, not the host:port we probed
        raise ClusterError(
            str(e).replace(repr(f"{parsed.hostname}:{port}"), repr(url), 1)
        ) from None


@contextmanager
def explicit_address() -> Iterator[None]:
    """Ray's client prefers RAY_API_SERVER_ADDRESS/RAY_ADDRESS over the address it is given;
    hide them while the client is built so the resolved address is the one used."""
    saved = {k: os.environ.pop(k) for k in ADDRESS_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


class JobsClient:
    """A Ray ``JobSubmissionClient`` whose failures are distml errors (exit 3).

    Unreachable, refused (401/403 with what to do about the token) and unknown ids
    (:class:`JobNotFound`) each get one clear sentence naming the address and its source.
    """

    def __init__(self, address: str | None = None):
        self.address, self.source = resolve_jobs_address(address)
        preflight_url(self.address, self.source)
        token, self.token_source = load_token(self.address)
        if token and urlparse(self.address).scheme == "http" and not is_loopback(self.address):
            log.warning(
                "sending the authentication token (from %s) in clear text over plain "
                "http to %s; use https or a tunnel to a loopback port",
                self.token_source,
                self.address,
            )
        if not token and os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token":
            # Ray's client would fall back to ~/.ray/auth_token for any address: refuse here.
            raise ClusterError(
                f"cannot contact {self._where()}: RAY_AUTH_MODE=token is set "
                "here but no authentication token was found for it "
                f"({TOKEN_PLACES}); {TOKEN_HINT}"
            )
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        cls = client_class()
        with explicit_address(), self._errors("connect"):
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
                problem = (
                    f"{self._where()} rejected the authentication token (from "
                    f"{self.token_source}): it is wrong, or belongs to another cluster"
                )
            elif from_server:
                problem = (
                    f"{self._where()} requires an authentication token and none was "
                    f"sent (none configured for it: {TOKEN_PLACES})"
                )
            else:
                problem = (
                    f"cannot contact {self._where()}: RAY_AUTH_MODE=token is set here "
                    f"but no authentication token was found ({TOKEN_PLACES})"
                )
            raise ClusterError(f"{problem}; {TOKEN_HINT}") from None
        except requests.exceptions.Timeout as e:
            raise ClusterError(
                f"{self._where()} did not answer ({action}) within "
                f"{READ_TIMEOUT_S:.0f} s: {first_line(e)}"
            ) from None
        except (requests.exceptions.ConnectionError, ConnectionError) as e:
            raise ClusterError(
                f"cannot reach {self._where()} ({action}): {first_line(e)}; "
                "is the dashboard running and the port open?"
            ) from None
        except (RuntimeError, ValueError, requests.exceptions.RequestException) as e:
            # Ray raises RuntimeError for an HTTP error status; a server that is not a Ray
            # dashboard answers what Ray cannot parse (ValueError)
            text = str(e)
            if job is not None and ("404" in text or "does not exist" in text):
                raise JobNotFound(
                    f"no job with submission id {job!r} on {self._where()}; "
                    "`distml jobs list` shows the jobs there"
                ) from None
            hint = (
                "; is it the Ray dashboard (Jobs API) address, usually port 8265?"
                if action == "connect"
                else ""
            )
            raise ClusterError(
                f"{self._where()} refused the request ({action}): {first_line(e)}{hint}"
            ) from None

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
        return sorted(
            (self._submission(j) for j in jobs), key=lambda s: (s.start_time or 0, s.submission_id)
        )

    def submit(self, **kwargs: Any) -> str:
        with self._errors("submit"):
            return self._client.submit_job(**kwargs)

    def _submission(self, d: Any) -> Submission:
        def secs(ms: int | None) -> float | None:
            return ms / 1000.0 if ms else None

        status = getattr(d.status, "value", d.status)
        return Submission(
            submission_id=d.submission_id or d.job_id,
            address=self.address,
            address_source=self.source,
            status=str(status),
            message=d.message,
            job_id=d.job_id,
            entrypoint=d.entrypoint,
            start_time=secs(d.start_time),
            end_time=secs(d.end_time),
            driver_exit_code=getattr(d, "driver_exit_code", None),
            metadata=dict(d.metadata or {}),
        )


def client_class():
    """JobSubmissionClient with a deadline on every HTTP request (Ray sets none)."""
    from ray.job_submission import JobSubmissionClient

    class _Client(JobSubmissionClient):
        def _do_request(self, method, endpoint, **kwargs):
            kwargs.setdefault("timeout", (CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
            return super()._do_request(method, endpoint, **kwargs)

    return _Client
