"""examples/spark/train_on_spark.py run by the real ``spark-submit --master local[2]``
(docs/batch_platforms.md): the quickstart trains on Ray on Spark and leaves ``_SUCCESS``; a bad
spec and node sizes local mode cannot honour exit 2 with one line and no traceback; no process
started for the run (the Spark JVM, Ray's head and workers) outlives it.

Needs pyspark (the ``spark`` extra, which ``make test`` installs: without it the tests fail) and
Java, which the machine provides. Without Java the tests skip with that reason, except with
``DISTML_REQUIRE_SPARK=1`` or under CI (``CI=true``), where a skip would hide that the platform
is not tested: there they fail (the ``DISTML_REQUIRE_AIRFLOW`` pattern).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from test_submit_cluster import MARK, LocalRayCluster

from distml.remote import job_result

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "examples", "spark", "train_on_spark.py")

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.allow_local_ray,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="finds its processes through /proc"
    ),
]


@pytest.fixture(scope="module")
def spark_submit() -> str:
    import pyspark  # the `spark` extra: `make test` installs it, so missing is a failure

    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        why = "no Java runtime (spark-submit needs Java 17+; the machine provides it)"
        if os.environ.get("DISTML_REQUIRE_SPARK") == "1" or os.environ.get("CI", "").lower() in (
            "true",
            "1",
        ):
            pytest.fail(f"the Spark platform test must run: {why}")
        pytest.skip(why)

    path = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")
    return path if os.path.isfile(path) else shutil.which("spark-submit")


@pytest.fixture
def tracked():
    """A marker in the environment of everything the run starts, and a short Ray temp root:
    after the run, no process carrying either may be left."""
    procs = LocalRayCluster()  # not started: only its marker, temp dir and /proc scan
    yield procs
    left = _gone(procs)  # (as the tests: Ray's worker node drains after the run returns)
    procs.stop()
    assert left == [], f"processes of the Spark run survived it: {left}"


def _run(
    spark_submit: str, procs: LocalRayCluster, *args: str, timeout: float = 420
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SPARK_"))}
    env.update(
        {
            MARK: procs.mark,
            "PYSPARK_PYTHON": sys.executable,
            # a home of its own: no ~/.ray/auth_token of another local cluster
            "HOME": os.path.join(procs.base, "home"),
            "RAY_AUTH_MODE": "disabled",
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": ROOT + os.pathsep + env.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1",  # an activated virtualenv: `ray` on PATH
            "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        }
    )
    return subprocess.run(
        [
            spark_submit,
            "--master",
            "local[2]",
            "--conf",
            "spark.ui.enabled=false",
            SCRIPT,
            *args,
            "--ray-temp-root-dir",
            procs.base,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def _gone(procs: LocalRayCluster, timeout_s: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := procs.pids()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def test_spark_submit_trains_the_quickstart(spark_submit, tracked, tmp_path):
    out = _run(
        spark_submit,
        tracked,
        "jobs/quickstart.yaml",
        "--output",
        str(tmp_path),
        "--run-id",
        "s1",
        "--max-worker-nodes",
        "1",
        "--set",
        "model.num_boost_round=20",
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    result = job_result(out.stdout)  # the last JSON line: distml's result
    assert result is not None, f"no result line in spark-submit's stdout: {out.stdout[-4000:]}"
    run_dir = tmp_path / "quickstart" / "s1"
    assert result["status"] == "succeeded" and result["run_dir"] == str(run_dir)
    assert (run_dir / "_SUCCESS").is_file() and result["metrics"]["valid"]["roc_auc"] > 0.9
    assert _gone(tracked) == [], "Ray on Spark left processes behind"


def test_spark_submit_refuses_bad_input_with_exit_2(spark_submit, tracked, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nkind: xgboost\ndata: {source: builtin:iris, target: target, "
        "split: {valid: 1.5}}\n"
    )
    out = _run(spark_submit, tracked, str(bad), "--output", str(tmp_path), "--run-id", "b1")
    text = out.stdout + out.stderr  # spark-submit merges the driver's stderr into stdout
    assert out.returncode == 2, text[-4000:]
    assert "train_on_spark: data.split.valid must be < 1" in text and "Traceback" not in text
    assert job_result(out.stdout)["error"]["exit_code"] == 2
    assert not (tmp_path / "bad").exists()
    # node sizes that local-mode Spark cannot honour: one sentence saying what to do
    out = _run(
        spark_submit,
        tracked,
        "jobs/quickstart.yaml",
        "--output",
        str(tmp_path),
        "--run-id",
        "b2",
        "--cpus-per-node",
        "1",
    )
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-4000:]
    assert "local mode (local[2]) cannot size Ray worker nodes: drop --cpus-per-node" in text
    assert "Traceback" not in text and job_result(out.stdout)["error"]["exit_code"] == 2
    assert not (tmp_path / "quickstart").exists()
    assert _gone(tracked) == []
