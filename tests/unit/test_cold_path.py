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


def test_a_runs_own_cluster_starts_without_the_idle_monitors(monkeypatch):
    """distml.runtime.cluster._start_local makes Ray's Node skip its autoscaler monitor and
    log monitor while ray.init runs (private Ray API: this fails loudly when Ray renames the
    two starters) and puts them back after, also when ray.init fails; DISTML_DASHBOARD=1
    keeps them."""
    import ray
    from ray._private.node import Node

    from distml.runtime import cluster

    originals = {name: getattr(Node, name) for name in cluster.IDLE_MONITORS}
    assert all(callable(f) for f in originals.values())
    seen = {}

    def fake_init(**kwargs):
        seen.update({name: getattr(Node, name) for name in cluster.IDLE_MONITORS})
        seen["kwargs"] = kwargs
        raise RuntimeError("no cluster in a unit test")

    monkeypatch.setattr(ray, "init", fake_init)
    with pytest.raises(RuntimeError, match="no cluster"):
        cluster._start_local(2, None)
    assert all(seen[name] is not originals[name] for name in cluster.IDLE_MONITORS)
    assert seen[cluster.IDLE_MONITORS[0]](object()) is None
    assert seen["kwargs"]["address"] == "local" and seen["kwargs"]["log_to_driver"] is False
    assert {name: getattr(Node, name) for name in cluster.IDLE_MONITORS} == originals

    monkeypatch.setenv("DISTML_DASHBOARD", "1")
    with pytest.raises(RuntimeError, match="no cluster"):
        cluster._start_local(2, None)
    assert {name: seen[name] for name in cluster.IDLE_MONITORS} == originals
