"""Moved to :mod:`distml.runtime.workers` (the one worker-group launcher). This name stays only
for importers outside the data-plane change (``tune/runner.py``, two tests); import
``distml.runtime.workers`` instead."""

from distml.runtime.workers import EXPERIMENT, Cadence, Execution, choose, run_config  # noqa: F401
