"""Data checks before any cluster work (RELIABILITY.md T5) and the split/CV helpers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from distml.errors import DataError
from distml.runtime.data import (cv_indices, inspect_source, read_frame, resolve_files,
                                 split_indices, validate_data)
from distml.spec import DataSpec, SplitSpec


@pytest.fixture
def frame():
    rng = np.random.default_rng(0)
    return pd.DataFrame({"id": np.arange(100), "x1": rng.normal(size=100),
                         "plan": rng.choice(["a", "b"], 100), "when": pd.Timestamp("2024-01-01"),
                         "y": rng.integers(0, 2, 100)})


def _data(source, **kw):
    return DataSpec(source=str(source), **kw)


def test_parquet_glob_directory_and_csv(tmp_path, frame):
    (tmp_path / "d").mkdir()
    frame.iloc[:60].to_parquet(tmp_path / "d" / "part-0.parquet")
    frame.iloc[60:].to_parquet(tmp_path / "d" / "part-1.parquet")
    (tmp_path / "d" / "_SUCCESS").write_text("")
    for source in (tmp_path / "d", f"{tmp_path}/d/*.parquet", f"file://{tmp_path}/d"):
        info = inspect_source(str(source))
        assert info.format == "parquet" and len(info.files) == 2 and info.rows == 100
        assert info.fingerprint()["bytes"] > 0
    assert len(read_frame(str(tmp_path / "d"), ["x1"])) == 100
    frame.to_csv(tmp_path / "f.csv", index=False)
    info = inspect_source(str(tmp_path / "f.csv"))
    assert info.format == "csv" and "plan" in info.columns
    assert read_frame(str(tmp_path / "f.csv"))["y"].tolist() == frame["y"].tolist()


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"data.source: no file matches '.*nope\.parquet'"):
        resolve_files(str(tmp_path / "nope.parquet"))


def test_truncated_and_not_parquet_name_the_file(tmp_path, frame):
    frame.to_parquet(tmp_path / "good.parquet")
    data = (tmp_path / "good.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"file '.*cut\.parquet' is not readable parquet"):
        inspect_source(str(tmp_path / "cut.parquet"))
    (tmp_path / "text.parquet").write_text("id,x\n1,2\n")
    with pytest.raises(DataError, match=r"file '.*text\.parquet' is not readable parquet"):
        inspect_source(str(tmp_path / "text.parquet"))


def test_mixed_schemas_are_refused(tmp_path, frame):
    frame.to_parquet(tmp_path / "a.parquet")
    frame.drop(columns="x1").to_parquet(tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"different columns.*missing \['x1'\]"):
        inspect_source(str(tmp_path))


def test_missing_column_has_did_you_mean(tmp_path, frame):
    frame.to_parquet(tmp_path / "f.parquet")
    with pytest.raises(DataError, match=r"data.target: column 'yy' is not in .*did you mean 'y'"):
        validate_data(_data(tmp_path / "f.parquet", target="yy"), needs_target=True)
    with pytest.raises(DataError, match=r"data.features: column 'x9'"):
        validate_data(_data(tmp_path / "f.parquet", target="y", features=["x9"]),
                      needs_target=True)


def test_nan_target_counts_rows(tmp_path, frame):
    frame["y"] = frame["y"].astype(float)
    frame.loc[[3, 7, 9], "y"] = np.nan
    frame.to_parquet(tmp_path / "f.parquet")
    with pytest.raises(DataError, match=r"column 'y' has 3 missing values of 100 rows"):
        validate_data(_data(tmp_path / "f.parquet", target="y", exclude=["when"]),
                      needs_target=True)


def test_unusable_dtype_is_named(tmp_path, frame):
    frame.to_parquet(tmp_path / "f.parquet")
    with pytest.raises(DataError, match=r"column 'when' has dtype timestamp"):
        validate_data(_data(tmp_path / "f.parquet", target="y"), needs_target=True)
    info = validate_data(_data(tmp_path / "f.parquet", target="y", exclude=["when", "id"]),
                         needs_target=True)
    assert info.features == ["x1", "plan"] and info.categorical == ["plan"]


def test_target_required_and_empty_data(tmp_path, frame):
    frame.to_parquet(tmp_path / "f.parquet")
    with pytest.raises(DataError, match="data.target is required"):
        validate_data(_data(tmp_path / "f.parquet"), needs_target=True)
    frame.iloc[:0].to_parquet(tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="has no rows"):
        validate_data(_data(tmp_path / "empty.parquet", target="y"), needs_target=True)


def test_test_source_must_have_the_columns(tmp_path, frame):
    frame.to_parquet(tmp_path / "f.parquet")
    frame.drop(columns="x1").to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"data.test_source: column 'x1'"):
        validate_data(_data(tmp_path / "f.parquet", target="y", exclude=["when"],
                            test_source=str(tmp_path / "t.parquet")), needs_target=True)


def test_builtin_and_synthetic_sources():
    info = validate_data(_data("builtin:iris", target="target"), needs_target=True)
    assert info.source.rows == 150 and len(info.features) == 4
    info = inspect_source("synthetic:classification?rows=500&features=3&seed=1")
    assert info.rows == 500 and set(info.columns) == {"x0", "x1", "x2", "target"}


def test_split_matches_sklearn_and_is_seeded():
    from sklearn.model_selection import train_test_split

    y = np.repeat([0, 1, 2], [50, 30, 20])
    split = SplitSpec(valid=0.2, test=0.1, seed=5)
    parts = split_indices(y, split, classification=True)
    assert sum(len(v) for v in parts.values()) == 100
    assert len(set(np.concatenate(list(parts.values())))) == 100
    rest, test = train_test_split(np.arange(100), test_size=0.1, random_state=5, stratify=y)
    assert sorted(test) == parts["test"].tolist()
    # stratified: class shares are kept in valid
    assert np.bincount(y[parts["valid"]]).tolist() == [10, 6, 4]
    again = split_indices(y, split, classification=True)
    assert all((parts[k] == again[k]).all() for k in parts)
    assert list(split_indices(y, None, classification=True)) == ["train"]


def test_cv_folds_are_stratified_and_cover_every_row():
    y = np.repeat([0, 1], [80, 20])
    folds = cv_indices(y, 5, 0, stratify=True)
    assert len(folds) == 5
    assert sorted(np.concatenate([va for _, va in folds]).tolist()) == list(range(100))
    assert all(np.bincount(y[va]).tolist() == [16, 4] for _, va in folds)
    with pytest.raises(DataError, match="data.split.cv=50"):
        cv_indices(y, 50, 0, stratify=True)
