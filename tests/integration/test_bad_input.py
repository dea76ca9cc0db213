"""Bad input is refused before the cluster (RELIABILITY.md T5, issue 18 items 1–5, 17.9).

Every case: ``distml run`` exits 2 with one line naming the field, column or file, no traceback,
no ANSI codes, no run directory and no ``_SUCCESS``, and the cluster is never asked for (the
``cluster`` context manager is replaced by one that fails the test). A worker-side DataError
comes back as the same one sentence. The property test checks that ``validate`` rejects exactly
what ``run`` rejects on generated bad data.
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import distml.api
from distml.cli import main
from distml.errors import DistmlError


@pytest.fixture
def no_cluster(monkeypatch):
    """Any cluster start is a test failure: these checks must run on the driver first."""
    from distml.runtime import cluster

    @contextmanager
    def refuse(*a, **k):
        raise AssertionError("the run asked for a cluster before refusing bad input")
        yield

    monkeypatch.setattr(cluster, "cluster", refuse)


def _spec(tmp_path, kind_model: str, data: str, extra: str = "") -> str:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: bad\n{kind_model}\ndata: {data}\n{extra}")
    return str(path)


_SK_CLF = "kind: sklearn\nmodel: {estimator: logistic_regression}"
_SK_REG = "kind: sklearn\nmodel: {estimator: ridge}"
_XGB = "kind: xgboost"


def _case(tmp_path, case: str) -> tuple[str, list[str], str]:
    """(spec path, extra CLI args, text the message must hold) for one bad input."""
    t = tmp_path
    frame = pd.DataFrame({"x1": np.arange(30.0), "y": ["no", "yes"] * 15})
    if case == "empty_csv":
        (t / "e.csv").write_text("x1,x2,y\n")
        return _spec(t, _SK_CLF, f"{{source: '{t}/e.csv', target: y}}"), [], "has no rows"
    if case == "empty_parquet":
        frame.iloc[:0].to_parquet(t / "e.parquet")
        return _spec(t, _XGB, f"{{source: '{t}/e.parquet', target: y}}"), [], "has no rows"
    if case == "string_target_regressor":
        frame.to_csv(t / "d.csv", index=False)
        return (
            _spec(t, _SK_REG, f"{{source: '{t}/d.csv', target: y}}"),
            [],
            "column 'y' in data.source has dtype",
        )
    if case in ("single_class_sklearn", "single_class_xgboost"):
        frame.assign(y="yes").to_csv(t / "d.csv", index=False)
        kind = _SK_CLF if case.endswith("sklearn") else _XGB
        return (
            _spec(t, kind, f"{{source: '{t}/d.csv', target: y}}"),
            [],
            "column 'y' has a single class ('yes')",
        )
    if case == "cv_class_too_small":
        frame.assign(y=["a"] * 28 + ["b"] * 2).to_csv(t / "d.csv", index=False)
        return (
            _spec(t, _SK_CLF, f"{{source: '{t}/d.csv', target: y, split: {{cv: 5}}}}"),
            [],
            "needs at least 5 rows of every class; class 'b' has 2",
        )
    if case == "duplicate_csv":
        (t / "d.csv").write_text("x1,x1,y\n" + "".join(f"{i},{i},{i % 2}\n" for i in range(20)))
        return (
            _spec(t, _SK_CLF, f"{{source: '{t}/d.csv', target: y}}"),
            [],
            "has the column 'x1' more than once",
        )
    if case == "duplicate_parquet":
        pq.write_table(
            pa.Table.from_arrays(
                [pa.array(np.arange(20.0))] * 2 + [pa.array(np.arange(20) % 2)],
                names=["x1", "x1", "y"],
            ),
            t / "d.parquet",
        )
        return (
            _spec(t, _XGB, f"{{source: '{t}/d.parquet', target: y}}"),
            [],
            "has the column 'x1' more than once",
        )
    if case == "directory_without_data":
        (t / "dir").mkdir()
        (t / "dir" / "readme.txt").write_text("hello")
        return (
            _spec(t, _XGB, f"{{source: '{t}/dir', target: y}}"),
            [],
            "holds no parquet or CSV files (1 other file skipped)",
        )
    if case == "http_source":
        return (
            _spec(t, _XGB, "{source: 'https://example.com/d.csv', target: y}"),
            [],
            "the 'https' protocol is not allowed by default",
        )
    if case == "output_is_a_file":
        (t / "afile").write_text("")
        return (
            _spec(t, _XGB, "{source: 'builtin:iris', target: target}"),
            ["--output", str(t / "afile")],
            "--output: ",
        )
    if case == "output_dir_url":
        return (
            _spec(
                t,
                _XGB,
                "{source: 'builtin:iris', target: target}",
                "output: {dir: 's3://bucket/runs'}\n",
            ),
            [],
            "output.dir must be a local path",
        )
    if case == "huge_n_estimators":
        return (
            _spec(
                t,
                "kind: sklearn\nmodel: {estimator: random_forest_classifier, "
                "params: {n_estimators: 1000000000000}}",
                "{source: 'builtin:iris', target: target}",
            ),
            [],
            "model.params.n_estimators must be a whole number",
        )
    raise AssertionError(case)


CASES = [
    "empty_csv",
    "empty_parquet",
    "string_target_regressor",
    "single_class_sklearn",
    "single_class_xgboost",
    "cv_class_too_small",
    "duplicate_csv",
    "duplicate_parquet",
    "directory_without_data",
    "http_source",
    "output_is_a_file",
    "output_dir_url",
    "huge_n_estimators",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_before_the_cluster(tmp_path, capsys, no_cluster, case, monkeypatch):
    monkeypatch.delenv("DISTML_ALLOWED_PROTOCOLS", raising=False)
    spec, extra, expect = _case(tmp_path, case)
    out_dir = tmp_path / "runs"
    args = ["run", spec, "--progress", "off"] + (extra or ["--output", str(out_dir)])
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("distml: error: "), err
    assert expect in err[0] and "\x1b" not in err[0]
    assert not out_dir.exists() or not any(out_dir.rglob("*"))  # no run dir, no _SUCCESS
    assert main(["validate", spec]) == (0 if extra else 2)  # validate says the same
    if not extra:
        assert expect in capsys.readouterr().err


@pytest.mark.usefixtures("ray_cluster")
def test_worker_data_error_is_one_sentence(tmp_path, capsys, monkeypatch):
    """Were a target check to slip past the driver, the worker's DataError still reaches the
    user as its one sentence (exit 2), not as a Ray task traceback with colour codes."""
    from distml.runtime import data

    monkeypatch.setattr(data, "check_target_task", lambda *a, **k: None)  # driver check off
    spec, _, _ = _case(tmp_path, "string_target_regressor")
    out_dir = tmp_path / "runs"
    assert main(["run", spec, "--output", str(out_dir), "--progress", "off"]) == 2
    text = capsys.readouterr().err
    err = [ln for ln in text.splitlines() if ln.startswith("distml: error")]
    assert (
        len(err) == 1
        and err[0].startswith("distml: error: data.target: column 'y' has dtype ")
        and err[0].endswith("but a regression target must be numeric")
    ), err
    assert "\x1b" not in text and "Traceback" not in text and "RayTaskError" not in text
    manifest = json.loads(next(out_dir.rglob("manifest.json")).read_text())
    assert manifest["status"] == "failed" and manifest["error"]["type"] == "DataError"
    assert "Traceback" not in manifest["error"]["message"]
    assert not list(out_dir.rglob("_SUCCESS"))


# ------------------------------------------------------------------ validate ≡ run (property)


@st.composite
def _bad_jobs(draw):
    rows = draw(st.sampled_from([0, 1, 3, 6, 24]))
    target = draw(st.sampled_from(["float", "two", "one_class", "strings", "rare"]))
    model = draw(st.sampled_from(["ridge", "logistic_regression", "xgboost"]))
    split = draw(st.sampled_from(["default", "none", "cv2", "cv3_plain"]))
    defects = draw(st.sets(st.sampled_from(["nan", "dup", "missing_target"]), max_size=1))
    fmt = draw(st.sampled_from(["csv", "parquet"]))
    return rows, target, model, split, sorted(defects), fmt


def _make(tmp, rows, target, model, split, defects, fmt) -> dict:
    i = np.arange(rows)
    y = {
        "float": i * 1.5,
        "two": i % 2,
        "one_class": np.array(["a"] * rows, dtype=object),
        "strings": np.array([f"s{k % 3}" for k in i], dtype=object),
        "rare": np.array(["a"] * (rows - 1) + ["b"] if rows else [], dtype=object),
    }[target]
    frame = pd.DataFrame({"x1": i * 0.5, "x2": (i * 7) % 5, "y": y})
    if "nan" in defects and rows:
        frame["y"] = frame["y"].astype(object)
        frame.loc[0, "y"] = None
    path = tmp / f"d.{fmt}"
    if "dup" in defects and fmt == "csv":
        frame.to_csv(path, index=False, header=["x1", "x1", "y"])
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    data = {
        "source": str(path),
        "target": "label" if "missing_target" in defects else "y",
        "split": {
            "default": {"valid": 0.25},
            "none": "none",
            "cv2": {"cv": 2},
            "cv3_plain": {"cv": 3, "stratify": False},
        }[split],
    }
    if model == "xgboost":
        return {"name": "prop", "kind": "xgboost", "data": data, "model": {"num_boost_round": 3}}
    return {"name": "prop", "kind": "sklearn", "data": data, "model": {"estimator": model}}


@pytest.mark.usefixtures("ray_cluster")
@settings(
    max_examples=16,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(job=_bad_jobs())
def test_validate_rejects_exactly_what_run_rejects(tmp_path_factory, monkeypatch, job):
    """Generated bad data: if ``validate`` accepts, the run succeeds; if it refuses, the run
    refuses with the same error before asking for a cluster."""
    from distml.runtime import cluster

    tmp = tmp_path_factory.mktemp("prop")
    spec = _make(tmp, *job)
    real, asked = cluster.cluster, []

    @contextmanager
    def watched(*a, **k):
        asked.append(1)
        with real(*a, **k) as info:
            yield info

    monkeypatch.setattr(cluster, "cluster", watched)
    try:
        distml.api.validate(spec)
        refused = None
    except DistmlError as e:
        refused = e
    if refused is not None:
        with pytest.raises(type(refused)) as ran:
            distml.api.run(spec, output=str(tmp / "runs"))
        assert str(ran.value) == str(refused) and not asked, (job, str(refused))
        assert not list((tmp / "runs").rglob("_SUCCESS"))
        return
    try:
        result = distml.api.run(spec, output=str(tmp / "runs"))
    except DistmlError as e:
        pytest.fail(f"validate accepted {job} but run refused it: {type(e).__name__}: {e}")
    assert result.metrics and asked
