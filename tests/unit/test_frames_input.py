"""``distml.run(spec, data=..., test_data=...)`` (and ``distml.validate``) input checks that need
no cluster: wrong types and conflicts name the keyword; columns the spec names are checked
against the frame's schema before anything is written; a pandas frame's bad rows fail after
staging with the frame named (not the staging folder), no ``_SUCCESS`` and no staged copy left;
staging keeps data order."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import distml
from distml.errors import DataError, SpecError
from distml.runtime import frames

SPEC = {
    "name": "frames-unit",
    "kind": "sklearn",
    "data": {"target": "y", "split": {"valid": 0.25, "seed": 0}},
    "model": {"estimator": "logistic_regression"},
}


def _frame(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n), "y": np.arange(n) % 2})


@pytest.mark.parametrize(
    "obj, words",
    [
        ([1, 2, 3], ["data= must be a pandas DataFrame", "got builtins.list"]),
        ({"source": "x.parquet"}, ["got builtins.dict", "data__source="]),
        ("data/x.parquet", ["got builtins.str", "belongs in the spec's data.source"]),
        (pd.Series([1.0, 2.0]), ["got pandas.Series", "to_frame()"]),
    ],
)
def test_wrong_type_is_a_data_error_naming_the_keyword(tmp_path, obj, words):
    with pytest.raises(DataError) as e:
        distml.run(SPEC, data=obj, output=tmp_path / "runs")
    for w in words:
        assert w in str(e.value)
    assert not (tmp_path / "runs").exists()  # before any run directory or cluster work
    with pytest.raises(DataError, match=r"^test_data= must be"):
        distml.run({**SPEC, "data": {**SPEC["data"], "source": "builtin:iris"}}, test_data=obj)


def test_column_names_must_be_distinct_strings():
    with pytest.raises(DataError, match=r"data= has column names that are not strings \(0, 1\)"):
        frames.describe(pd.DataFrame(np.zeros((3, 2))), "data")
    clash = _frame().set_index(pd.Index(range(40), name="x1"))  # a named index is a column
    with pytest.raises(DataError, match="data= has the column 'x1' more than once"):
        frames.describe(clash, "data")


def test_data_and_the_source_override_conflict(tmp_path):
    with pytest.raises(SpecError, match=r"data= and data\.source were both given"):
        distml.run(SPEC, data=_frame(), data__source="x.parquet", output=tmp_path)


@pytest.mark.parametrize(
    "change, where, word",
    [
        ({"target": "why"}, "data.target", "'why'"),
        ({"features": ["x1", "x3"]}, "data.features", "'x3'"),
        ({"exclude": ["z"]}, "data.exclude", "'z'"),
    ],
)
def test_missing_columns_fail_before_staging(tmp_path, change, where, word):
    spec = {**SPEC, "data": {**SPEC["data"], **change}}
    with pytest.raises(DataError) as e:
        distml.run(spec, data=_frame(), output=tmp_path / "runs")
    msg = str(e.value)
    assert msg.startswith(f"{where}: column {word} is not in data= (a pandas DataFrame)")
    assert "columns: x1, x2, y" in msg
    assert not (tmp_path / "runs").exists()


def test_test_data_needs_the_target(tmp_path):
    spec = {**SPEC, "data": {**SPEC["data"], "source": "builtin:breast_cancer", "target": "target"}}
    with pytest.raises(DataError, match=r"data.target: column 'target' is not in test_data="):
        distml.run(spec, test_data=_frame(), output=tmp_path / "runs")


def test_bad_rows_fail_after_staging_naming_the_frame(tmp_path):
    df = _frame().astype({"y": float})
    df.loc[[3, 7], "y"] = np.nan
    with pytest.raises(DataError) as e:
        distml.run(SPEC, data=df, output=tmp_path / "runs", run_id="nan-1")
    msg = str(e.value)
    assert "column 'y' has 2 missing values of 40 rows in data= (a pandas DataFrame)" in msg
    assert "staging" not in msg
    run = tmp_path / "runs" / "frames-unit" / "nan-1"
    assert not (run / "_SUCCESS").exists() and not (run / frames.STAGING).exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"]["type"] == "DataError"
    assert manifest["data"]["source"]["frame"]["rows"] == 40


def test_staging_keeps_order_and_named_index_levels(tmp_path):
    df = _frame(300).set_index(pd.Index(np.arange(300)[::-1], name="row"))
    f = frames.describe(df, "data")
    assert list(f.columns) == ["row", "x1", "x2", "y"] and (f.partitions, f.rows) == (1, 300)
    out = frames.stage(f, tmp_path / "staged")
    assert out == {"files": 1, "rows": 300}
    back = pq.read_table(tmp_path / "staged" / "part-00000.parquet").to_pandas()
    pd.testing.assert_frame_equal(back, df.reset_index())
    # an unnamed index is not data
    g = frames.describe(_frame(5), "data")
    frames.stage(g, tmp_path / "plain")
    assert pq.read_schema(tmp_path / "plain" / "part-00000.parquet").names == ["x1", "x2", "y"]


def test_validate_checks_a_frame_as_run_would_without_a_cluster(tmp_path):
    """distml.validate(spec, data=frame): the spec returned names the frame; wrong types,
    conflicts and columns the spec names fail as in run; a pandas frame's rows get every check
    of a file source (naming the frame, no temporary copy left); no Ray is started."""
    import glob
    import tempfile

    import ray

    was_up = ray.is_initialized()
    spec = distml.validate(SPEC, data=_frame())
    assert spec.data.source == "data=" and spec.data.target == "y"
    with pytest.raises(DataError, match=r"^data= must be a pandas DataFrame"):
        distml.validate(SPEC, data=[1, 2])
    with pytest.raises(SpecError, match=r"data= and data\.source were both given"):
        distml.validate(SPEC, ["data.source=x.parquet"], data=_frame())
    with pytest.raises(DataError, match=r"^data.target: column 'why' is not in data="):
        distml.validate({**SPEC, "data": {**SPEC["data"], "target": "why"}}, data=_frame())
    df = _frame().astype({"y": float})
    df.loc[[3, 7], "y"] = np.nan
    with pytest.raises(DataError) as e:
        distml.validate(SPEC, data=df)
    msg = str(e.value)
    assert "column 'y' has 2 missing values of 40 rows in data= (a pandas DataFrame)" in msg
    assert "distml-validate-" not in msg
    assert not glob.glob(f"{tempfile.gettempdir()}/distml-validate-*")
    # without the data checks: the spec only (a frame's type is still checked)
    assert distml.validate(SPEC, data=df, check_data=False).data.source == "data="
    # test_data= beside a file source: the target must be in it, and its rows are checked
    _frame().to_parquet(tmp_path / "train.parquet")
    files = {**SPEC, "data": {**SPEC["data"], "source": str(tmp_path / "train.parquet")}}
    assert distml.validate(files, test_data=_frame()).data.test_source == "test_data="
    with pytest.raises(DataError, match=r"data.target: column 'y' is not in test_data="):
        distml.validate(files, test_data=_frame().drop(columns="y"))
    with pytest.raises(DataError, match=r"missing values of 40 rows in test_data= \(a pandas"):
        distml.validate(files, test_data=df)
    # a Dask frame: its type and the columns the spec names (its rows need run's cluster)
    dd = pytest.importorskip("dask.dataframe")
    ddf = dd.from_pandas(_frame(), npartitions=2)
    assert distml.validate(SPEC, data=ddf).data.source == "data="
    with pytest.raises(DataError, match=r"column 'why' is not in data= \(a Dask DataFrame\)"):
        distml.validate({**SPEC, "data": {**SPEC["data"], "target": "why"}}, data=ddf)
    assert ray.is_initialized() == was_up
