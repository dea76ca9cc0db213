"""``distml predict`` keeps stderr to distml's own lines (issue 18 #16): Ray Data's INFO/WARNING
lines ("Starting execution of Dataset…", "Progress bars disabled…", "Data sink … finished") no
longer reach the terminal; they stay in Ray's ``ray-data.log``."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest

import distml
from distml.cli import main
from distml.runtime.ray_logs import quiet_ray_logs

pytestmark = pytest.mark.usefixtures("ray_cluster")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Ray's console format: "2026-12-04 13:20:05,382\tINFO streaming_executor.py:215 -- …",
#: worker lines "(pid=123) …", and Ray Data's log-folder pointer
RAY_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO|WARNING|ERROR)\s"
    r"|^\(\w*pid=|ray-data|streaming_executor|Progress bars disabled"
)


def _ray_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if RAY_LINE.search(ln)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict-logs")
    r = distml.run(
        f"{ROOT}/jobs/quickstart.yaml", output=out / "runs", run_id="p1", model__num_boost_round=10
    )
    return r.run_dir


def test_predict_stderr_has_only_distml_lines(finished_run, tmp_path, capfd):
    assert (
        main(
            [
                "predict",
                str(finished_run),
                "--input",
                "builtin:breast_cancer",
                "--output",
                str(tmp_path / "scores"),
            ]
        )
        == 0
    )
    err = capfd.readouterr().err
    assert "scored 569 rows" in err  # distml's own line is still there
    assert _ray_lines(err) == [], err
    # and the muting ends with the command: Ray Data's console handler is back
    handlers = logging.getLogger("ray.data").handlers
    assert any(h.level <= logging.INFO for h in handlers if "File" not in type(h).__name__)


def test_quiet_ray_logs_keeps_ray_data_file_logging():
    import ray.data  # noqa: F401  (installs Ray Data's handlers)

    logger = logging.getLogger("ray.data")
    before = [(h, h.level) for h in logger.handlers if type(h).__module__.startswith("ray.")]
    kinds = {type(h).__name__ for h, _ in before}
    assert "SessionFileHandler" in kinds and "PlainRayHandler" in kinds, kinds
    with quiet_ray_logs():
        for h, _ in before:
            muted = h.level > logging.CRITICAL
            assert muted != ("File" in type(h).__name__), type(h).__name__
    assert all(h.level == lvl for h, lvl in before)  # restored


@pytest.mark.allow_local_ray
def test_predict_cli_stderr_in_a_fresh_process(finished_run, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "distml",
            "predict",
            str(finished_run),
            "--input",
            "builtin:breast_cancer",
            "--output",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "scored 569 rows" in out.stderr
    assert _ray_lines(out.stderr) == [], out.stderr
