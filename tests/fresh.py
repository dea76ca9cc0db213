"""What tests that need a fresh interpreter share: run a snippet of Python in one and take
its output (for what a process imports, or in what order, before anything else has)."""

from __future__ import annotations

import subprocess
import sys


def stdout_of(code: str, timeout: float = 120) -> str:
    """The stripped standard output of ``python -c code``; a failure raises with its
    output (``CalledProcessError``)."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=True
    )
    return out.stdout.strip()
