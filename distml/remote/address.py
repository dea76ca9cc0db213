"""Where the Jobs API is and which token it gets (``--address`` / environment / tokens file)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

from distml.errors import ClusterError, one_line

ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
TOKEN_HINT = (
    "set RAY_AUTH_TOKEN to the cluster's token, RAY_AUTH_TOKEN_PATH to a file "
    "holding it, or map the address to such a file in ~/.config/distml/tokens.json "
    "(~/.ray/auth_token is sent only to loopback addresses); on the head node "
    "`ray get-auth-token` prints it"
)
TOKEN_PLACES = (
    "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.config/distml/tokens.json, or "
    "~/.ray/auth_token for a loopback address"
)


def resolve_jobs_address(address: str | None) -> tuple[str, str]:
    """(dashboard URL, where it came from): ``--address``, RAY_API_SERVER_ADDRESS, RAY_ADDRESS.

    >>> resolve_jobs_address("http://head:8265/")
    ('http://head:8265', '--address')
    """
    source = "--address"
    if not address:
        for var in ADDRESS_ENV:
            if os.environ.get(var):
                address, source = os.environ[var], var
                break
    if not address:
        raise ClusterError(
            "no cluster address: pass --address http://HEAD:8265 (the Ray "
            "dashboard / Jobs API URL) or set RAY_ADDRESS"
        )
    address = address.strip().rstrip("/")
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        hint = ""
        if parsed.scheme == "" and ":" in address:
            hint = f"; if {address} is the head node's GCS address, use http://HOST:8265"
        raise ClusterError(
            f"cluster address {address!r} (from {source}) is not a Ray Jobs API URL; distml "
            f"submits through the dashboard at http://HOST:8265{hint}"
        )
    try:
        _ = parsed.port  # raises ValueError for a port that is not a number
    except ValueError:
        raise ClusterError(
            f"cluster address {address!r} (from {source}) has an invalid port"
        ) from None
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
        raise ClusterError(
            f"{source} names {path!r}, which cannot be read ({e.strerror or e}); {TOKEN_HINT}"
        ) from None
    if not token:
        raise ClusterError(f"{source} names {path!r}, which is empty; {TOKEN_HINT}")
    return token


def _configured_token_path(address: str) -> str | None:
    """The token file tokens.json maps this address to (scheme, host and port must match)."""
    path = tokens_file()
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ClusterError(
            f"{path} is not a readable JSON object ({one_line(e)}); it maps "
            'cluster addresses to token files: {"http://head:8265": '
            '"~/secrets/head.token"}'
        ) from None
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ClusterError(
            f"{path} must be a JSON object mapping cluster addresses to token "
            'file paths: {"http://head:8265": "~/secrets/head.token"}'
        )
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
