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

from distml.errors import ClusterError, DataError, SpecError
from distml.runtime.artifacts import (
    LOCK,
    MARKER,
    RunDir,
    diff_paths,
    holder_gone,
    new_run_id,
    read_holder,
    to_jsonable,
    verify_finished,
)


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
    # the manifest records every artifact's digest at _SUCCESS time
    assert rd.listing() == [
        "_SUCCESS",
        "manifest.json",
        "metrics.json",
        "model/m.bin",
        "tables/t.parquet",
    ]
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
    rd.prepare()  # a rerun of the same id starts clean (distml's marker stays)
    assert [p.name for p in run.rglob("*") if p.is_file()] == [".distml-run"]


def test_to_jsonable_handles_numpy():
    import numpy as np

    assert to_jsonable({"a": np.float32(1.5), "b": np.arange(2), "c": float("inf")}) == {
        "a": 1.5,
        "b": [0, 1],
        "c": None,
    }


# ---------------------------------------------------------------- run identity (promise 7, T12)

_HOLD = textwrap.dedent("""
    import sys, time
    from distml.runtime.artifacts import RunDir
    rd = RunDir(sys.argv[1], "job", "r1")
    with rd.lock():
        rd.prepare()
        print("holding", flush=True)
        time.sleep(60)
""")


def test_the_lock_names_a_live_holder_and_a_crash_releases_it(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "holding"
        rd = RunDir(tmp_path, "job", "r1")
        with pytest.raises(ClusterError) as err:  # exit 3
            with rd.lock():
                pass
        assert err.value.exit_code == 3
        assert f"pid {proc.pid}" in str(err.value) and "since 20" in str(err.value)
        assert (rd.path / LOCK).is_file() and not holder_gone(read_holder(rd.path))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    # SIGKILL left the lock file; its holder is provably gone, so the next run takes it over
    assert holder_gone(read_holder(rd.path))
    with rd.lock() as me:
        assert me["pid"] == os.getpid()
        assert read_holder(rd.path)["pid"] == os.getpid()
    assert not (rd.path / LOCK).exists()  # released on exit


@pytest.mark.parametrize("step", ["flock", "fstat", "ftruncate", "write", "fsync"])
def test_a_stop_while_taking_the_lock_leaves_no_lock_file(tmp_path, monkeypatch, step):
    """SIGTERM (a KeyboardInterrupt here) at any step after the lock file is created and
    before the run holds it: the file goes with the stop, so nothing says the run is still
    held, and the next run takes the lock at once. A slow disk's fsync is the widest window."""
    import fcntl

    rd = RunDir(tmp_path, "job", "r1")
    module = fcntl if step == "flock" else os
    real = getattr(module, step)
    calls = []

    def stop(*a, **k):  # the first such call once the lock file exists
        if not calls and (rd.path / LOCK).exists():
            calls.append(step)
            raise KeyboardInterrupt("terminated by signal 15 (SIGTERM)")
        return real(*a, **k)

    monkeypatch.setattr(module, step, stop)
    with pytest.raises(KeyboardInterrupt):
        with rd.lock():
            pytest.fail("the block must not run")
    monkeypatch.undo()
    assert calls and not (rd.path / LOCK).exists()
    with rd.lock() as me:
        assert read_holder(rd.path)["pid"] == me["pid"] == os.getpid()
    assert not (rd.path / LOCK).exists()


def test_a_stop_while_waiting_on_a_live_holder_leaves_its_lock_file(tmp_path, monkeypatch):
    """The stop lands while this run finds the lock taken: the holder's file stays."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "holding"
        rd = RunDir(tmp_path, "job", "r1")

        def stop(*a, **k):
            raise KeyboardInterrupt("terminated by signal 15 (SIGTERM)")

        monkeypatch.setattr("distml.runtime.artifacts._read_fd", stop)
        with pytest.raises(KeyboardInterrupt):
            with rd.lock():
                pass
        monkeypatch.undo()
        assert read_holder(rd.path)["pid"] == proc.pid
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_a_reused_pid_is_not_the_holder(tmp_path):
    import platform

    me = {"host": platform.node(), "pid": os.getpid(), "pid_start": 1}  # alive, other start
    assert holder_gone(me)
    assert not holder_gone({**me, "host": "another-host"})  # cannot check: taken as alive
    rd = RunDir(tmp_path, "job", "r1")
    rd.prepare()
    (rd.path / LOCK).write_text(json.dumps(me))  # a stale lock file with no flock on it
    with rd.lock() as holder:
        assert holder["pid_start"] != 1


def test_only_folders_distml_made_are_cleaned(tmp_path):
    user = tmp_path / "job" / "r1"
    user.mkdir(parents=True)
    (user / "thesis.tex").write_text("years of work")
    rd = RunDir(tmp_path, "job", "r1")
    for attempt in (rd.prepare, lambda: rd.lock().__enter__()):
        with pytest.raises(SpecError, match="not made by distml"):
            attempt()
    assert (user / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in user.iterdir()) == ["thesis.tex"]
    # an empty folder holds nothing to lose: adopted
    empty = RunDir(tmp_path, "job", "r2")
    empty.path.mkdir()
    empty.prepare()
    assert (empty.path / MARKER).is_file()
    # a file where the run dir would be
    (tmp_path / "job" / "r3").write_text("x")
    with pytest.raises(SpecError, match="not a directory"):
        RunDir(tmp_path, "job", "r3").prepare()


def test_leftovers_of_dead_writers_go_and_live_ones_stay(tmp_path):
    rd = RunDir(tmp_path, "job", "r1")
    rd.prepare()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    (rd.path / f".run.log.tmp-{dead}").write_text("killed")
    live = rd.path / f".m.tmp-{os.getppid()}-ab.bin"  # a live process's write (our parent)
    live.write_text("being written")
    (rd.path / "metrics.json").write_text("{}")
    rd.prepare()
    assert not (rd.path / f".run.log.tmp-{dead}").exists()
    assert not (rd.path / "metrics.json").exists()
    assert (rd.path / MARKER).is_file() and live.read_text() == "being written"


def _finished(tmp_path) -> RunDir:
    rd = RunDir(tmp_path, "job", "r1")
    rd.prepare()
    rd.write_json("manifest.json", {"status": "succeeded", "kind": "sklearn"})
    rd.write_bytes("model/m.bin", b"weights")
    rd.write_json("metrics.json", {"a": 1})
    rd.mark_success()
    return rd


def test_digests_check_out_and_tampering_is_refused(tmp_path):
    rd = _finished(tmp_path)
    manifest = json.loads((rd.path / "manifest.json").read_text())
    assert set(manifest["digests"]) == {"model/m.bin", "metrics.json"}
    verify_finished(rd.path)
    (rd.path / "report.html").write_text("<html>")  # a view `distml report` may rebuild
    verify_finished(rd.path)
    (rd.path / "model" / "m.bin").write_bytes(b"evil")
    with pytest.raises(DataError, match="model/m.bin"):
        verify_finished(rd.path)
    (rd.path / "model" / "m.bin").write_bytes(b"weights")
    (rd.path / "model" / "config.json").write_text("{}")  # planted beside the model
    with pytest.raises(DataError, match="config.json .not there"):
        verify_finished(rd.path)
    (rd.path / "model" / "config.json").unlink()
    manifest["digests"]["model/m.bin"] = "0" * 64  # a rewritten manifest
    (rd.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="manifest.json changed"):
        verify_finished(rd.path)


def test_a_planted_success_or_a_shared_folder_is_not_finished(tmp_path):
    planted = tmp_path / "job" / "p1"
    planted.mkdir(parents=True)
    (planted / "manifest.json").write_text('{"status": "succeeded", "kind": "sklearn"}')
    (planted / "_SUCCESS").write_text("{}")
    with pytest.raises(DataError, match="without a manifest and artifact digests"):
        verify_finished(planted)
    rd = _finished(tmp_path)
    os.chmod(rd.path, 0o777)
    with pytest.raises(DataError, match="writable by other users"):
        verify_finished(rd.path)
    os.chmod(rd.path, 0o755)
    verify_finished(rd.path)


def test_a_group_writable_umask_still_gives_a_private_run_dir(tmp_path):
    old = os.umask(0o002)
    try:
        rd = RunDir(tmp_path, "job", "r1")
        rd.prepare()
    finally:
        os.umask(old)
    assert not rd.path.stat().st_mode & 0o022


def test_resume_compares_the_fingerprint_and_a_missing_one_refuses(tmp_path):
    rd = RunDir(tmp_path, "job", "r1")
    rd.prepare()
    fp = {"spec": {"model": {"params": {"max_depth": 3}}}, "data": {"rows": 10}}
    with pytest.raises(SpecError, match="no readable .distml-fingerprint.json"):
        rd.check_resume(fp)
    rd.write_fingerprint(fp)
    rd.prepare(resume=True)  # kept for --resume
    rd.check_resume(fp)
    with pytest.raises(SpecError, match=r"model\.params\.max_depth.*new --run-id"):
        rd.check_resume({**fp, "spec": {"model": {"params": {"max_depth": 4}}}})
    with pytest.raises(SpecError, match=r"data\.rows"):
        rd.check_resume({**fp, "data": {"rows": 11}})
    rd.prepare()  # a fresh run drops it
    with pytest.raises(SpecError):
        rd.check_resume(fp)


def test_diff_paths():
    assert diff_paths({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 1, "c": 3}, "e": 1}) == [
        "a.c",
        "d",
        "e",
    ]
    assert diff_paths({"a": [1]}, {"a": [1]}) == []


def test_runs_tells_running_from_abandoned_and_unverified(tmp_path):
    from distml.report.runs import list_runs

    def started(run_id):
        rd = RunDir(tmp_path, "job", run_id)
        rd.prepare()
        rd.write_json(
            "manifest.json",
            {
                "name": "job",
                "run_id": run_id,
                "kind": "sklearn",
                "status": "running",
                "started_at": 1.0,
            },
        )
        return rd

    started("killed")
    (tmp_path / "job" / "killed" / ".run.log.tmp-999999").write_text("")
    tampered = _finished(tmp_path)  # job/r1
    (tampered.path / "metrics.json").write_text('{"a": 2}')
    live = started("live")
    with live.lock():
        rows = {r.run_id: r for r in list_runs(tmp_path)}
        assert rows["live"].status == "running" and f"pid {os.getpid()}" in rows["live"].note
    assert rows["killed"].status == "abandoned" and "gone" in rows["killed"].note
    assert rows["r1"].status == "unverified" and "metrics.json" in rows["r1"].note
    assert {r.run_id: r.status for r in list_runs(tmp_path)}["live"] == "abandoned"
