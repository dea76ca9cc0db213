"""Progress of real runs on the shared cluster: plain lines when stderr is not a terminal (in
run.log as well), nothing under --json, the rich panel on a pseudo-terminal; the worker-side
reporter carries xgboost's boosting rounds from inside the Ray task."""

from __future__ import annotations

import json
import os
import pty
import re
import sys
import threading

import pytest

from distml.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = [
    "run",
    f"{ROOT}/jobs/quickstart.yaml",
    "--set",
    "model.num_boost_round=30",
    "--set",
    "model.early_stopping_rounds=null",
]

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _run_log(out_dir) -> str:
    (log,) = out_dir.rglob("run.log")
    return log.read_text()


def test_plain_lines_when_not_a_terminal(tmp_path, capfd):
    assert main([*QUICK, "--output", str(tmp_path)]) == 0  # stderr is a pipe here: plain
    text = _run_log(tmp_path)
    # each stage once and in order (the task's own read/train come after the driver's train)
    stages = re.findall(r"stage: (\w+)", text)
    # run.log opens after validate
    assert stages == ["cluster", "train", "evaluate", "write", "report"], stages
    # the rounds came from inside the Ray task, through the worker reporter
    assert "rounds: 30/30 rounds  valid-logloss=" in text and "(done)" in text
    assert "report: " in capfd.readouterr().out


def test_json_is_quiet(tmp_path, capfd):
    assert main([*QUICK, "--output", str(tmp_path), "--json"]) == 0
    cap = capfd.readouterr()
    payload = json.loads(cap.out)  # one JSON object and nothing else on stdout
    assert payload["status"] == "succeeded"
    assert "stage: " not in cap.err and "stage: " not in _run_log(tmp_path)


def test_counters_of_many_models_out_of_core_and_search(tmp_path):
    assert (
        main(
            [
                "run",
                f"{ROOT}/jobs/statsmodels_grunfeld_firms.yaml",
                "--output",
                str(tmp_path / "g"),
                "--progress",
                "plain",
            ]
        )
        == 0
    )
    assert "groups: 11/11 groups  0 failed (done)" in _run_log(tmp_path / "g")
    assert (
        main(
            [
                "run",
                f"{ROOT}/jobs/pca_out_of_core.yaml",
                "--output",
                str(tmp_path / "p"),
                "--set",
                "data.source=synthetic:blobs?rows=5000&features=4&seed=0",
                "--set",
                "model.n_components=2",
                "--set",
                "model.transform=false",
                "--progress",
                "plain",
            ]
        )
        == 0
    )
    assert "moments pass: 1/1 partitions  5,000 of 5,000 rows (done)" in _run_log(tmp_path / "p")
    assert (
        main(
            [
                "run",
                f"{ROOT}/jobs/tune_sklearn.yaml",
                "--output",
                str(tmp_path / "t"),
                "--set",
                "tune.num_samples=2",
                "--progress",
                "plain",
            ]
        )
        == 0
    )
    text = _run_log(tmp_path / "t")
    assert "trials: 2/2 trials  0 running; best cv.accuracy=" in text
    # cross-validated trials: the best one's final fit is kept, so no refit stage follows
    assert "kept; no refit" in text and "refit of the best configuration" not in text


def test_torch_epochs_from_inside_the_task(tmp_path):
    """torch (one worker: one Ray task) reports each epoch and its valid figures."""
    assert (
        main(
            [
                "run",
                f"{ROOT}/jobs/torch_digits_mlp.yaml",
                "--output",
                str(tmp_path),
                "--set",
                "resources.num_workers=1",
                "--set",
                "model.epochs=3",
                "--set",
                "model.early_stopping=null",
                "--progress",
                "plain",
            ]
        )
        == 0
    )
    text = _run_log(tmp_path)
    assert "epochs: 3/3 epochs  valid.loss=" in text and "valid.accuracy=" in text


def test_rich_panel_on_a_pseudo_terminal(tmp_path, monkeypatch, capfd):
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    term = os.fdopen(slave, "w", buffering=1, encoding="utf-8")
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setattr(sys, "stderr", term)
    try:
        assert main([*QUICK, "--output", str(tmp_path)]) == 0
    finally:
        monkeypatch.undo()
        term.close()
        reader.join(timeout=5)
        os.close(master)
    shown = b"".join(chunks).decode("utf-8", "replace")
    assert "\x1b[" in shown and "\x1b[?25l" in shown  # a live display: cursor control
    # frames come 4 times a second: a short stage may fall between two (seen on a loaded
    # machine), but a counter stays on the panel from its first message to the last frame
    assert "rounds" in shown and "/30" in shown and "stage: done" in shown
    assert "stage: " not in capfd.readouterr().out  # the panel never goes to stdout
