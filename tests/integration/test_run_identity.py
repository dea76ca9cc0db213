"""One run id is one run (RELIABILITY.md promise 7, T12): the run directory's lock, distml's
marker, leftovers of a killed run, a rerun with another spec, tampered artifacts, resume
fingerprints, and the local cluster a run starts (always its own, never a stray one)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from distml.cli import main
from distml.errors import SpecError
from distml.runtime.artifacts import LOCK, MARKER, RunDir, run_fingerprint

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "jobs" / "quickstart.yaml"

LONG = {  # searches until it is killed; `--set tune.num_samples=2` makes it short
    "name": "ident",
    "kind": "sklearn",
    "data": {"source": "builtin:iris", "target": "target", "split": {"valid": 0.3}},
    "model": {"estimator": "sklearn.dummy.DummyClassifier"},
    "tune": {
        "metric": "valid.accuracy",
        "num_samples": 5000,
        "seed": 0,
        "space": {"model.params.strategy": {"choice": ["prior", "stratified"]}},
    },
}


def _runs(env: dict, out: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "distml", "runs", "--output", str(out), "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return {r["run_id"]: r for r in json.loads(done.stdout)["runs"]}


@pytest.mark.allow_local_ray
@pytest.mark.cluster
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock, /proc")
def test_one_run_id_is_one_run(tmp_path):
    """Two runs of one id at once: the second exits 3 naming the first. SIGKILL: `distml runs`
    says abandoned, the rerun cleans the dead run's leftovers and finishes. Rerunning the
    finished id: the same spec is reused, another is exit 2 naming the field, a tampered
    artifact is refused. All with a `ray start --head` recorded in Ray's temp folder: every
    run starts its own cluster, with the CPUs Ray detects, and leaves the stray one alone."""
    from test_submit_cluster import MARK, LocalRayCluster

    stray = LocalRayCluster(token=None)
    ray_tmp = tempfile.mkdtemp(prefix="dmi", dir="/tmp")  # short: Unix socket paths
    first = None
    try:
        stray.start_head(num_cpus=7)
        # where a plain ray.init() looks for "the cluster of the last `ray start`"
        os.makedirs(os.path.join(ray_tmp, "ray"))
        Path(ray_tmp, "ray", "ray_current_cluster").write_text(stray.gcs)
        env = {
            **{k: v for k, v in stray.env.items() if k != MARK},  # not the stray's own
            "RAY_TMPDIR": ray_tmp,
            "PYTHONPATH": str(ROOT),
        }
        spec = tmp_path / "ident.yaml"
        spec.write_text(json.dumps(LONG))
        out = tmp_path / "runs"
        cmd = [
            sys.executable,
            "-m",
            "distml",
            "run",
            str(spec),
            "--output",
            str(out),
            "--run-id",
            "r1",
            "--json",
        ]
        run_dir = out / "ident" / "r1"

        first = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and first.poll() is None:
            if list((run_dir / "checkpoints" / "tune").glob("experiment_state-*.json")):
                break  # searching: past its cluster start
            time.sleep(0.1)
        assert first.poll() is None, first.communicate()[1].decode()[-3000:]

        t0 = time.monotonic()
        second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 3, second.stderr[-3000:]
        assert f"pid {first.pid}" in second.stderr and "since 20" in second.stderr
        assert "Traceback" not in second.stderr and time.monotonic() - t0 < 30
        assert _runs(env, out)["r1"]["status"] == "running"

        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
        assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"
        assert (run_dir / f".run.log.tmp-{first.pid}").is_file()
        assert _runs(env, out)["r1"]["status"] == "abandoned"

        short = cmd + ["--set", "tune.num_samples=2"]
        rerun = subprocess.run(
            short, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["status"] == "succeeded" and manifest["digests"]
        assert manifest["cluster"]["mode"] == "local"
        assert manifest["cluster"]["resources"]["CPU"] != 7  # its own cluster, not the stray
        leftovers = [p.name for p in run_dir.rglob(".*") if ".tmp-" in p.name]
        assert not leftovers and not (run_dir / LOCK).exists() and (run_dir / MARKER).is_file()
        assert _runs(env, out)["r1"]["status"] == "succeeded"
        assert stray.pids(), "the run stopped the stray cluster"

        same = subprocess.run(short, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert same.returncode == 0 and json.loads(same.stdout)["reused"] is True, same.stderr
        other = subprocess.run(
            cmd + ["--set", "tune.num_samples=3"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert other.returncode == 2, other.stderr[-3000:]
        assert "tune.num_samples" in other.stderr and "new --run-id" in other.stderr
        with open(run_dir / "metrics.json", "a") as fh:
            fh.write(" ")
        tampered = subprocess.run(
            short, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert tampered.returncode == 2 and "metrics.json" in tampered.stderr, tampered.stderr
        assert "artifacts changed" in tampered.stderr and "Traceback" not in tampered.stderr
        assert _runs(env, out)["r1"]["status"] == "unverified"
    finally:
        if first is not None and first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=60)
        stray.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_folder_distml_did_not_make_is_never_touched(tmp_path, capsys):
    """A user folder at OUTPUT/NAME/RUN_ID: exit 2 before any cluster work, nothing deleted
    (the autouse guard fails the test if a cluster starts)."""
    user = tmp_path / "quickstart" / "mine"
    user.mkdir(parents=True)
    (user / "notes.txt").write_text("keep me")
    code = main(["run", str(QUICKSTART), "--output", str(tmp_path), "--run-id", "mine"])
    err = capsys.readouterr().err
    assert code == 2 and "not made by distml" in err and "refusing to touch it" in err
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    assert (user / "notes.txt").read_text() == "keep me"


def _interrupted_run(tmp_path, spec, *, fingerprint: bool) -> RunDir:
    """A run dir as an interrupted run of ``spec`` leaves it: checkpoints, maybe a fingerprint."""
    from distml.jobs import kind_module

    rd = RunDir(tmp_path, spec.name, "r1")
    rd.prepare()
    if fingerprint:
        rd.write_fingerprint(run_fingerprint(spec, kind_module(spec.kind).Job(spec).check_data()))
    (rd.path / "checkpoints" / "train" / "checkpoint_0").mkdir(parents=True)
    rd.write_json("manifest.json", {"status": "interrupted", "kind": spec.kind})
    return rd


def test_resume_refuses_another_spec_or_no_fingerprint_before_the_cluster(tmp_path, capsys):
    from distml.spec import load_spec

    spec = load_spec(str(QUICKSTART))
    rd = _interrupted_run(tmp_path, spec, fingerprint=True)
    argv = ["run", str(QUICKSTART), "--output", str(tmp_path), "--run-id", "r1", "--resume"]
    code = main(argv + ["--set", "model.params.max_depth=3"])
    err = capsys.readouterr().err
    assert code == 2 and "model.params.max_depth" in err and "new --run-id" in err, err
    assert (rd.path / "checkpoints" / "train" / "checkpoint_0").is_dir()  # kept
    (rd.path / ".distml-fingerprint.json").unlink()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "cannot be trusted" in err, err
    os.chmod(rd.path, 0o777)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "writable by other users" in err, err
    os.chmod(rd.path, 0o755)


def test_train_and_tune_resume_check_the_fingerprint(tmp_path):
    """The kinds' own checks (behind the one in distml.run): Train's run configuration and
    Tune's restore refuse a missing or different fingerprint."""
    from distml.jobs import kind_module
    from distml.runtime import workers
    from distml.spec import load_spec

    spec = load_spec(str(QUICKSTART))
    info = kind_module(spec.kind).Job(spec).check_data()
    rd = _interrupted_run(tmp_path, spec, fingerprint=False)
    ctx = SimpleNamespace(spec=spec, data=info, run_dir=rd, resume=True)
    with pytest.raises(SpecError, match="cannot be trusted"):
        workers.run_config(ctx, 0)
    rd.write_fingerprint(
        run_fingerprint(load_spec(str(QUICKSTART), {"model.num_boost_round": 10}), info)
    )
    with pytest.raises(SpecError, match="model.num_boost_round"):
        workers.run_config(ctx, 0)
    rd.write_fingerprint(run_fingerprint(spec, info))
    assert workers.run_config(ctx, 0).name == workers.EXPERIMENT

    # Tune: an experiment that can be restored, and no fingerprint
    from ray import tune

    from distml.tune import runner

    tune_spec = load_spec(LONG, {"tune.num_samples": 2})
    tune_info = kind_module("sklearn").Job(tune_spec).check_data()
    trd = RunDir(tmp_path, "ident", "t1")
    trd.prepare()
    tctx = SimpleNamespace(
        spec=tune_spec,
        data=tune_info,
        run_dir=trd,
        resume=True,
        log=__import__("logging").getLogger("test"),
    )
    exp = trd.file("checkpoints") / "tune"
    exp.mkdir(parents=True)
    orig = tune.Tuner.can_restore
    tune.Tuner.can_restore = staticmethod(lambda path: str(path) == str(exp))
    try:
        with pytest.raises(SpecError, match="cannot be trusted"):
            runner._tuner(tctx, None, None, {}, 1, None, 1, 2)
        trd.write_fingerprint(run_fingerprint(load_spec(LONG), tune_info))
        with pytest.raises(SpecError, match="tune.num_samples"):
            runner._tuner(tctx, None, None, {}, 1, None, 1, 2)
    finally:
        tune.Tuner.can_restore = orig


def test_a_failed_write_marks_the_manifest_failed(tmp_path, monkeypatch, ray_cluster):
    """Disk full while writing the artifacts: the manifest says failed (not running), no
    _SUCCESS, and the lock is released."""
    import distml
    from distml.runtime import artifacts

    def full(self, rel, frame):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifacts.RunDir, "write_parquet", full)
    with pytest.raises(OSError, match="No space left"):
        distml.run(str(QUICKSTART), output=tmp_path, run_id="w1", model__num_boost_round=5)
    run_dir = tmp_path / "quickstart" / "w1"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "No space left" in manifest["error"]["message"]
    assert not (run_dir / "_SUCCESS").exists() and not (run_dir / LOCK).exists()
    assert (run_dir / "run.log").is_file()


def test_rays_sigterm_exit_during_cluster_start_is_an_interruption(tmp_path, monkeypatch):
    """ray.init's own SIGTERM handler exits with status 15: distml records an interruption."""
    import distml
    from distml.runtime import cluster

    def ray_handler_fired(*a, **k):
        raise SystemExit(15)

    import ray

    monkeypatch.setattr(cluster, "_start_local", ray_handler_fired)
    # as if no Ray were running in this process (the session's shared one may be), and leave
    # that one alone when the start is cleaned up
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster, "_shutdown", lambda started_here: None)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        distml.run(str(QUICKSTART), output=tmp_path, run_id="s1")
    manifest = json.loads((tmp_path / "quickstart" / "s1" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and "SIGTERM" in manifest["error"]["message"]
