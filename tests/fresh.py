"""What tests that need a fresh interpreter share: run a snippet of Python in one and take
its output (for what a process imports, or in what order, before anything else has)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def stdout_of(code: str, timeout: float = 120) -> str:
    """The stripped standard output of ``python -c code``; a failure raises with its
    output (``CalledProcessError``)."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=True
    )
    return out.stdout.strip()


def json_of(code: str, timeout: float = 180, env: dict | None = None) -> dict:
    """The JSON object the last line of ``python -c code``'s output holds; a failure fails
    the test with the process's error output."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def unpinned_env() -> dict:
    """This process's environment without the thread variables (``OMP_NUM_THREADS``…): what
    a user who set none has."""
    return {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
