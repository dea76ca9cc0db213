"""examples/airflow/distml_dag.py run by Airflow 3 itself (docs/batch_platforms.md).

A temporary ``AIRFLOW_HOME`` with SQLite and its DAGs folder at ``examples/airflow``: the DAG
imports with no errors (``DagBag``); ``airflow dags test distml_nightly DATE`` against a real
``ray start --head`` on loopback runs both tasks (``distml submit --wait`` and the in-process
``distml.run``) to ``_SUCCESS``; the same logical date again reuses the finished runs; a spec
with a missing column fails both tasks at once, without retries (exit 2 →
AirflowFailException).

Airflow's pins conflict with nothing here but take minutes to install, so it lives in its own
virtualenv, ``.venv-airflow`` (``make airflow-venv``: apache-airflow plus this project). Without
it the tests skip; with ``DISTML_REQUIRE_AIRFLOW=1`` (``make test`` sets it whenever it built
that venv, and always under ``CI=true`` when examples/ or distml/remote changed) they fail.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest
from test_submit_cluster import LocalRayCluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.environ.get("DISTML_AIRFLOW_VENV", os.path.join(ROOT, ".venv-airflow"))
BIN = os.path.join(VENV, "bin")
DATE = "2026-12-01"

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.allow_local_ray,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="finds its Ray processes through /proc"
    ),
]


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    if not os.path.isfile(os.path.join(BIN, "airflow")):
        why = f"no Airflow virtualenv at {VENV} (make airflow-venv creates it)"
        if os.environ.get("DISTML_REQUIRE_AIRFLOW") == "1":
            pytest.fail(f"the Airflow platform test must run: {why}")
        pytest.skip(why)
    home = tmp_path_factory.mktemp("airflow")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_", "AIRFLOW", "DISTML_", "PYTEST_"))
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": os.path.join(ROOT, "examples", "airflow"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": BIN + os.pathsep + env.get("PATH", ""),
            "PYTHONPATH": ROOT,
            "OMP_NUM_THREADS": "1",
        }
    )
    out = subprocess.run(
        [os.path.join(BIN, "airflow"), "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return env


@pytest.fixture(scope="module")
def head():
    cluster = LocalRayCluster(token=secrets.token_hex(16))
    try:
        cluster.start_head(num_cpus=2)
        yield cluster
    finally:
        cluster.stop()


def _airflow(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [os.path.join(BIN, "airflow"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_the_dag_imports_cleanly(airflow_env):
    code = (
        "import json\n"
        "try:\n    from airflow.dag_processing.dagbag import DagBag\n"
        "except ImportError:\n    from airflow.models.dagbag import DagBag\n"
        f"b = DagBag(dag_folder={os.path.join(ROOT, 'examples', 'airflow')!r})\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in b.import_errors.items()}, "
        "'dags': sorted(b.dag_ids), 'tasks': sorted(t.task_id for t in "
        "b.get_dag('distml_nightly').tasks)}))\n"
    )
    out = subprocess.run(
        [os.path.join(BIN, "python"), "-c", code],
        env=airflow_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    bag = json.loads(out.stdout.strip().splitlines()[-1])
    assert bag == {
        "errors": {},
        "dags": ["distml_nightly"],
        "tasks": ["train_in_process", "train_on_ray"],
    }


def test_airflow_runs_both_tasks_then_reuses_then_fails_bad_input(airflow_env, head, tmp_path):
    spec = tmp_path / "nightly.yaml"
    spec.write_text(
        "name: quickstart\nkind: xgboost\n"
        "data: {source: builtin:breast_cancer, target: target}\n"
        "model: {num_boost_round: 10}\n"
    )
    runs = tmp_path / "runs"
    env = {
        **airflow_env,
        "DISTML_SPEC": str(spec),
        "DISTML_ADDRESS": head.url,
        "DISTML_OUTPUT": str(runs),
        "RAY_AUTH_TOKEN": head.token,
    }
    out = _airflow(env, "dags", "test", "distml_nightly", DATE)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    on_ray = runs / "quickstart" / f"nightly-{DATE}"
    local = runs / "quickstart" / f"nightly-{DATE}-local"
    assert (on_ray / "_SUCCESS").is_file() and (local / "_SUCCESS").is_file()
    stamps = {p: (p / "_SUCCESS").stat().st_mtime_ns for p in (on_ray, local)}

    # the same logical date again: the finished job and run are reported, nothing reruns
    out = _airflow(env, "dags", "test", "distml_nightly", DATE)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert {p: (p / "_SUCCESS").stat().st_mtime_ns for p in stamps} == stamps
    jobs = head.get("/api/jobs/")
    assert [j["submission_id"] for j in jobs].count(f"nightly-{DATE}") == 1

    # a missing column: exit 2 inside the job and in process: failed at once, no retries
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: badcol\nkind: xgboost\n"
        "data: {source: builtin:breast_cancer, target: no_such_column}\n"
    )
    env["DISTML_SPEC"] = str(bad)
    out = _airflow(env, "dags", "test", "distml_nightly", "2026-12-02", timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "distml exit 2 (not retried)" in text and "no_such_column" in text
    assert "up_for_retry" not in text.lower().replace(" ", "_")
    assert not (runs / "badcol").exists() or not any((runs / "badcol").rglob("_SUCCESS"))
