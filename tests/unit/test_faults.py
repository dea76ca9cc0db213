"""The one fault-injection hook (distml.runtime.faults): parsing, the earlier variable names as
aliases, and "once" (a marker file) for the process-exiting and the driver variants."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from distml.errors import SpecError
from distml.runtime import faults

ALL_ENVS = (faults.ENV, faults.TRAIN_ENV, faults.STAGE_ENV, faults.TUNE_ENV)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for env in ALL_ENVS:
        monkeypatch.delenv(env, raising=False)


def test_parse_names_place_step_partition_and_marker(tmp_path):
    f = faults.parse(f"kmeans.minibatch:3:1@{tmp_path / 'm'}")
    assert f == faults.Fault(frozenset({"kmeans.minibatch"}), 3, str(tmp_path / "m"), 1)
    assert f.at("kmeans.minibatch", 3, 1) and not f.at("kmeans.minibatch", 3, 0)
    assert not f.at("kmeans.lloyd", 3, 1) and not f.at("kmeans.minibatch", 2, 1)
    assert faults.parse("pca.moments:2").partition == 0  # a task's partition defaults to 0
    epoch = faults.parse("train.epoch:2")  # synonyms of train.iteration
    assert epoch.where == {"train.iteration"} and epoch.partition is None
    assert faults.parse("train.round:2").where == epoch.where
    assert epoch.marker != faults.parse("train.iteration:3").marker  # one marker per fault


@pytest.mark.parametrize(
    "text,match",
    [
        ("kmeans.minibach:3", "unknown place 'kmeans.minibach'"),
        ("train.iteration", "must be WHERE:K"),
        ("train.iteration:x", "must be WHERE:K"),
        ("train.iteration:1:2", "must be WHERE:K"),
        ("pca.moments:1:2:3", "must be WHERE:K"),
    ],
)
def test_parse_rejects_bad_text(text, match):
    with pytest.raises(SpecError, match=match):
        faults.parse(text)


def test_from_env_only_returns_faults_for_the_asked_places(monkeypatch, tmp_path):
    assert faults.from_env("train.iteration") is None
    monkeypatch.setenv(faults.ENV, "kmeans.pass:2")
    assert faults.from_env("train.iteration") is None
    assert faults.from_env("kmeans.pass", "kmeans.sample").step == 2


def test_earlier_variable_names_are_aliases(monkeypatch, tmp_path):
    marker = str(tmp_path / "m")
    monkeypatch.setenv(faults.TRAIN_ENV, f"{marker}:4")
    for where in ("train.iteration", "manymodels.groups", "kmeans.pass"):
        f = faults.from_env(where)
        assert f.step == 4 and f.marker == marker and f.at(where, 4)
    assert faults.from_env("tune.iteration") is None
    monkeypatch.setenv(faults.STAGE_ENV, f"{marker}:minibatch:1:2")
    f = faults.from_env("kmeans.minibatch")
    assert f.at("kmeans.minibatch", 2, partition=1) and not f.at("kmeans.minibatch", 2, 0)
    assert faults.from_env("pca.moments") is None
    monkeypatch.setenv(faults.TUNE_ENV, f"{marker}:3")
    assert faults.from_env("tune.iteration").at("tune.iteration", 3)


def test_once_fires_the_first_time_only(tmp_path):
    f = faults.parse(f"manymodels.groups:10@{tmp_path / 'm'}")
    assert not faults.once(f, "manymodels.groups", 9)
    assert not faults.once(f, "kmeans.pass", 10)
    assert faults.once(f, "manymodels.groups", 12)  # reached (tasks return several groups)
    assert json.loads((tmp_path / "m").read_text())["iteration"] == 12
    passes = faults.parse(f"kmeans.pass:2@{tmp_path / 'p'}")  # a driver place of a task kind
    assert faults.once(passes, "kmeans.pass", 2)
    assert json.loads((tmp_path / "p").read_text())["iteration"] == 2
    assert not faults.once(f, "manymodels.groups", 20)  # the rerun goes through
    assert not faults.once(None, "manymodels.groups", 20)


def _crash_in_child(fault: str, where: str, step: int, **kw) -> int:
    code = (
        "from distml.runtime import faults\n"
        f"faults.crash(faults.parse({fault!r}), {where!r}, {step}, **{kw!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", code], env=env, timeout=60).returncode


def test_crash_exits_the_process_once(tmp_path):
    fault = f"pca.transform:2:1@{tmp_path / 'm'}"
    assert _crash_in_child(fault, "pca.transform", 2, partition=0) == 0  # other partition
    assert _crash_in_child(fault, "pca.transform", 1, partition=1) == 0  # other batch
    assert not (tmp_path / "m").exists()
    assert _crash_in_child(fault, "pca.transform", 2, partition=1) == 1
    record = json.loads((tmp_path / "m").read_text())
    assert (record["stage"], record["partition"], record["batch"]) == ("transform", 1, 2)
    assert _crash_in_child(fault, "pca.transform", 2, partition=1) == 0  # the retry


def test_crash_in_a_group_stops_the_last_rank_only(tmp_path):
    fault = f"train.iteration:3@{tmp_path / 'm'}"
    assert _crash_in_child(fault, "train.iteration", 3, rank=0, world=2) == 0
    assert _crash_in_child(fault, "train.iteration", 3, rank=1, world=2) == 1
    record = json.loads((tmp_path / "m").read_text())
    assert (record["iteration"], record["rank"]) == (3, 1)
