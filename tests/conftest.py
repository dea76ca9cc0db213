"""Test-wide setup: a private HOME and explicit Ray auth mode, so nothing leaks onto the machine."""

from __future__ import annotations

import os
import tempfile

# Set before Ray is imported anywhere: Ray reads these at import/init time.
_HOME = tempfile.mkdtemp(prefix="distml-test-home-")
os.environ["HOME"] = _HOME
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.pop("RAY_ADDRESS", None)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def project_root() -> str:
    return ROOT
