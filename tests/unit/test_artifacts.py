"""Run directory: atomic writes, paths kept under the root, _SUCCESS last (RELIABILITY T6)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from distml.errors import SpecError
from distml.runtime.artifacts import RunDir, new_run_id, to_jsonable


def test_layout_and_atomic_files(tmp_path):
    rd = RunDir(tmp_path, "job", "r1")
    rd.prepare()
    rd.write_json("metrics.json", {"a": float("nan"), "b": [1, 2]})
    rd.write_parquet("tables/t.parquet", pd.DataFrame({"x": [1, 2]}))
    rd.write_bytes("model/m.bin", b"abc")
    assert json.loads((rd.path / "metrics.json").read_text()) == {"a": None, "b": [1, 2]}
    assert pd.read_parquet(rd.path / "tables" / "t.parquet")["x"].tolist() == [1, 2]
    assert not rd.complete
    rd.mark_success()
    assert rd.complete
    assert rd.listing() == ["_SUCCESS", "metrics.json", "model/m.bin", "tables/t.parquet"]
    assert not [p for p in rd.path.rglob("*") if ".tmp-" in p.name]


def test_names_and_paths_stay_under_root(tmp_path):
    for bad in ("../x", "a/b", "..", ".hidden", "a..b", ""):
        with pytest.raises((SpecError, ValueError)):
            RunDir(tmp_path, "job", bad)
        with pytest.raises((SpecError, ValueError)):
            RunDir(tmp_path, bad or "", "r1")
    rd = RunDir(tmp_path, "job", "r1")
    with pytest.raises(SpecError):
        rd.file("../../escape.txt")
    with pytest.raises(SpecError):
        rd.file("/etc/passwd")
    assert len(new_run_id()) > 15 and new_run_id() != new_run_id()


def test_a_failed_write_leaves_no_file(tmp_path):
    rd = RunDir(tmp_path, "job", "r1")
    rd.prepare()
    with pytest.raises(RuntimeError):
        with rd.atomic_path("model/m.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not (rd.path / "model" / "m.bin").exists()
    assert not list((rd.path / "model").iterdir())


def test_writer_killed_mid_write_leaves_only_hidden_temp(tmp_path):
    """SIGKILL during a large write: the final name never appears; prepare() cleans up."""
    code = textwrap.dedent(f"""
        import sys, time
        from distml.runtime.artifacts import RunDir
        rd = RunDir({str(tmp_path)!r}, "job", "r1")
        rd.prepare()
        rd.write_json("manifest.json", {{"status": "running"}})
        with rd.atomic_path("model/big.bin") as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"x" * 1000)
                fh.flush()
                print("writing", flush=True)
                time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    run = tmp_path / "job" / "r1"
    assert not (run / "model" / "big.bin").exists()
    assert not (run / "_SUCCESS").exists()
    leftovers = [p for p in run.rglob("*") if p.is_file() and ".tmp-" in p.name]
    assert leftovers and all(p.name.startswith(".") for p in leftovers)
    rd = RunDir(tmp_path, "job", "r1")
    assert rd.listing() == ["manifest.json"]  # temp files are never presented as results
    rd.prepare()  # a rerun of the same id starts clean
    assert not [p for p in run.rglob("*") if p.is_file()]


def test_to_jsonable_handles_numpy():
    import numpy as np

    assert to_jsonable({"a": np.float32(1.5), "b": np.arange(2), "c": float("inf")}) == {
        "a": 1.5, "b": [0, 1], "c": None}
