"""Moved to :mod:`distml.runtime.workers` (the one worker-group launcher). This name stays only
for ``tune/runner.py`` (``choose``), outside the data-plane change; import
``distml.runtime.workers`` instead, then delete this file."""

from distml.runtime.workers import choose  # noqa: F401
