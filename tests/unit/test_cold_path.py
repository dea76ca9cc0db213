"""What keeps ``distml --help`` and ``distml validate`` instant (issue 14: under 0.5 s of CPU,
measured by benchmarks/probe_cli_cpu.py, not here): the real CLI entry, ``python -m distml``,
run in a fresh interpreter with ``-X importtime``, imports no heavy library. Structural, not
timed: a module at the top of a kind that imports pandas, or a validation that loads a data set
it could know from distml/runtime/builtin_facts.py, fails it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])
HEAVY = (
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
    "sklearn",
    "ray",
    "xgboost",
    "torch",
    "lightgbm",
    "statsmodels",
    "dask",
    "fsspec",
)


def _cli_imports(*argv: str) -> tuple[int, set[str], str]:
    """Exit code, the top-level packages imported, and stdout of ``python -m distml ARGV``."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "distml", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    modules = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in out.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    assert "distml" in modules, out.stderr[-2000:]  # the probe sees imports at all
    return out.returncode, modules, out.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ("--help",),
        ("validate", "jobs/quickstart.yaml"),
        ("validate", "jobs/quickstart.yaml", "--no-data"),
    ],
)
def test_help_and_validate_import_no_heavy_library(argv):
    code, modules, stdout = _cli_imports(*argv)
    assert code == 0, stdout
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))
    if argv[0] == "validate":
        assert "is valid" in stdout


def test_the_probe_sees_a_heavy_import():
    """The same probe on a command that must load data (a target that is not the bundled data
    set's default one, so its figures are not recorded) reports pandas: the assertion above
    can fail."""
    code, modules, _ = _cli_imports(
        "validate",
        "jobs/quickstart.yaml",
        "--set",
        "data.source=builtin:wine",
        "--set",
        "data.target=alcohol",
    )
    assert code in (0, 2) and "pandas" in modules
