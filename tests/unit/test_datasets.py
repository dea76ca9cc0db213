"""Built-in and synthetic data sources (distml.runtime.datasets); no Ray, seconds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from distml.errors import DataError, SpecError
from distml.runtime import datasets as ds

KINDS = ("classification", "regression", "blobs", "panel", "timeseries")


@pytest.mark.parametrize("name", ds.BUILTIN_NAMES)
def test_builtin_loads_with_default_target(name: str) -> None:
    frame = ds.load_builtin(name)
    target = ds.builtin_default_target(name)
    assert len(frame) > 10
    assert target in frame.columns
    assert not frame[target].isna().any()
    for column in frame.columns:
        assert column.replace("_", "").isalnum(), column  # parquet/formula friendly
    assert frame.columns.is_unique


def test_builtin_names_and_copies() -> None:
    assert {
        "iris",
        "digits",
        "breast_cancer",
        "diabetes",
        "wine",
        "longley",
        "spector",
        "grunfeld",
        "star98",
        "macrodata",
        "sunspots",
    } <= set(ds.BUILTIN_NAMES)
    iris = ds.load_builtin("builtin:iris")
    assert "sepal_length_cm" in iris.columns and iris["target"].nunique() == 3
    assert "mean_radius" in ds.load_builtin("breast_cancer").columns
    assert "pixel_0_0" in ds.load_builtin("digits").columns
    grunfeld = ds.load_builtin("grunfeld")
    assert pd.api.types.is_string_dtype(grunfeld["firm"])
    assert {"year", "quarter"} <= set(ds.load_builtin("macrodata").columns)
    assert list(ds.load_builtin("sunspots").columns) == ["YEAR", "SUNACTIVITY"]
    iris["target"] = -1  # a copy: the cache is not touched
    assert (ds.load_builtin("iris")["target"] >= 0).all()


def test_unknown_builtin_suggests() -> None:
    with pytest.raises(DataError, match="did you mean 'iris'") as info:
        ds.load_builtin("irs")
    assert "Known:" in str(info.value)
    with pytest.raises(DataError, match="unknown builtin"):
        ds.builtin_default_target("nope")


@pytest.mark.parametrize("kind", KINDS)
def test_synthetic_shapes_and_dtypes(kind: str) -> None:
    frame = ds.synthetic_frame(f"synthetic:{kind}?rows=500&seed=3")
    assert len(frame) == 500
    assert not frame.isna().any().any()
    if kind == "timeseries":
        assert list(frame.columns) == ["t", "x0", "y"]
        assert frame["t"].dtype == np.int64 and (frame["t"] == np.arange(500)).all()
        return
    xs = [f"x{j}" for j in range(10)]
    assert list(frame.columns) == (["group"] if kind == "panel" else []) + xs + ["target"]
    assert all(frame[c].dtype == np.float64 for c in xs)
    if kind in ("classification", "blobs"):
        assert frame["target"].dtype == np.int64
        assert set(frame["target"]) == ({0, 1} if kind == "classification" else {0, 1, 2})
    else:
        assert frame["target"].dtype == np.float64


def test_synthetic_parameters() -> None:
    frame = ds.synthetic_frame("synthetic:classification?rows=3000&features=4&classes=4&seed=1")
    assert frame.shape == (3000, 5) and set(frame["target"]) == {0, 1, 2, 3}
    blobs = ds.synthetic_frame("synthetic:blobs?rows=300&features=2&centers=5&cluster_std=0.1")
    assert blobs["target"].nunique() == 5
    assert blobs.groupby("target")["x0"].std().max() < 0.2
    panel = ds.synthetic_frame("synthetic:panel?rows=1000&groups=7&features=2")
    assert pd.api.types.is_string_dtype(panel["group"])
    assert panel["group"].nunique() == 7 and panel["group"].is_monotonic_increasing
    assert panel["group"].iloc[0] == "g0000"
    series = ds.synthetic_frame("synthetic:timeseries?rows=1000&series=4")
    assert list(series.columns) == ["series", "t", "x0", "y"]
    assert series.groupby("series")["t"].agg(["min", "max"]).to_dict("list") == {
        "min": [0] * 4,
        "max": [249] * 4,
    }


def test_parse_synthetic_defaults() -> None:
    kind, params = ds.parse_synthetic("synthetic:regression?rows=1e3&noise=0.5")
    assert kind == "regression"
    assert params == {"rows": 1000, "seed": 0, "features": 10, "informative": 5, "noise": 0.5}
    assert ds.parse_synthetic("synthetic:blobs")[1]["rows"] == 1000


@pytest.mark.parametrize(
    "source, fragment",
    [
        ("synthetic:classification?rowz=10", "'rowz'.*did you mean 'rows'"),
        ("synthetic:classification?rows=-5", "'rows' must be an integer > 0"),
        ("synthetic:classification?rows=abc", "'rows' must be an integer"),
        ("synthetic:classification?rows=2.5", "'rows' must be an integer"),
        ("synthetic:classification?classes=1", "'classes'"),
        ("synthetic:classification?features=3&informative=4", "'informative' must be <= features"),
        ("synthetic:regression?noise=-1", "'noise'"),
        ("synthetic:regression?noise=nan", "'noise' must be a finite number"),
        ("synthetic:timeseries?phi=1.0", "'phi' must be in \\(-1, 1\\)"),
        ("synthetic:panel?rows=5&groups=6", "'groups' must be <= rows"),
        ("synthetic:regression?rows", "'rows'"),
        ("synthetic:regression?rows=1&rows=2", "'rows' is given twice"),
        ("synthetic:clasification?rows=10", "did you mean 'classification'"),
        ("synthetic:regression?seed=-1", "'seed'"),
    ],
)
def test_bad_synthetic_source(source: str, fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        ds.parse_synthetic(source)


@pytest.mark.parametrize("kind", KINDS)
def test_chunking_does_not_change_data(kind: str) -> None:
    params = (
        {"rows": 150_000, "seed": 7, "features": 3}
        if kind != "timeseries"
        else {"rows": 150_000, "seed": 7, "series": 3}
    )
    small = pd.concat(ds.iter_synthetic(kind, params, chunk_rows=1000), ignore_index=True)
    chunks = list(ds.iter_synthetic(kind, params, chunk_rows=65_536))
    assert [len(c) for c in chunks] == [65_536, 65_536, 150_000 - 2 * 65_536]
    pd.testing.assert_frame_equal(small, pd.concat(chunks, ignore_index=True))
    other_seed = ds.synthetic_frame(kind, {**params, "seed": 8})
    assert not np.allclose(other_seed["x0"], small["x0"])


def test_rows_override_and_prefix() -> None:
    long = ds.synthetic_frame("synthetic:regression?rows=100000&seed=2")
    short = ds.synthetic_frame("synthetic:regression?seed=2", rows=70_000)
    pd.testing.assert_frame_equal(long.iloc[:70_000], short)


def test_timeseries_is_arma_with_exog() -> None:
    frame = ds.synthetic_frame("synthetic:timeseries?rows=4000&phi=0.7&theta=0&noise=1&seed=5")
    # the residual of y on x0 is AR(1) with coefficient phi
    resid = frame["y"] - np.polyval(np.polyfit(frame["x0"], frame["y"], 1), frame["x0"])
    lag1 = np.corrcoef(resid[1:], resid[:-1])[0, 1]
    assert abs(lag1 - 0.7) < 0.06


def test_panel_per_group_ols_recovers_a_linear_model() -> None:
    frame = ds.synthetic_frame("synthetic:panel?rows=2000&groups=4&features=2&noise=0.1")
    for _, group in frame.groupby("group"):
        x = np.column_stack([np.ones(len(group)), group[["x0", "x1"]].to_numpy()])
        coef, *_ = np.linalg.lstsq(x, group["target"].to_numpy(), rcond=None)
        assert np.std(group["target"].to_numpy() - x @ coef) < 0.15


def test_classification_is_learnable() -> None:
    from sklearn.linear_model import LogisticRegression

    frame = ds.synthetic_frame("synthetic:classification?rows=4000&features=10&seed=11")
    x, y = frame.drop(columns="target").to_numpy(), frame["target"].to_numpy()
    model = LogisticRegression(max_iter=1000).fit(x[:2000], y[:2000])
    assert model.score(x[2000:], y[2000:]) > 0.8


def test_generate_dataset_matches_frame(tmp_path) -> None:
    source = "synthetic:panel?groups=9&features=4&seed=3"
    out = tmp_path / "data"
    result = ds.generate_dataset(source, out, rows=140_000, files=3)
    assert [p.rsplit("/", 1)[-1] for p in result["files"]] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert result["rows"] == 140_000 and result["bytes"] > 0
    assert sorted(p.name for p in out.iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]  # no temp files left
    parts = [pd.read_parquet(p) for p in result["files"]]
    assert [len(p) for p in parts] == [46_666, 46_667, 46_667]
    pd.testing.assert_frame_equal(
        pd.concat(parts, ignore_index=True),
        ds.synthetic_frame(source, rows=140_000),
        check_dtype=False,
    )


def test_generate_dataset_builtin_cycles_and_refuses_overwrite(tmp_path) -> None:
    result = ds.generate_dataset("builtin:iris", tmp_path, rows=400, files=2)
    frame = pd.concat([pd.read_parquet(p) for p in result["files"]], ignore_index=True)
    iris = ds.load_builtin("iris")
    assert len(frame) == 400
    pd.testing.assert_frame_equal(frame.iloc[150:300].reset_index(drop=True), iris)
    with pytest.raises(DataError, match="overwrite"):
        ds.generate_dataset("builtin:iris", tmp_path, files=1)
    again = ds.generate_dataset("builtin:iris", tmp_path, files=1, overwrite=True)
    assert again["rows"] == 150 and sorted(p.name for p in tmp_path.iterdir()) == [
        "part-00000.parquet"
    ]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"rows": 0, "files": 1}, "rows must be an integer >= 1"),
        ({"rows": 5, "files": 0}, "files must be an integer >= 1"),
        ({"rows": 2, "files": 3}, "files must be <= rows"),
    ],
)
def test_generate_dataset_validates_counts(tmp_path, kwargs, fragment) -> None:
    with pytest.raises(SpecError, match=fragment):
        ds.generate_dataset("synthetic:blobs", tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_generate_dataset_rejects_other_sources(tmp_path) -> None:
    with pytest.raises(SpecError, match="'synthetic:' or 'builtin:'"):
        ds.generate_dataset("data/*.parquet", tmp_path, rows=10)
    with pytest.raises(SpecError, match="'rowz'"):
        ds.generate_dataset("synthetic:blobs?rowz=3", tmp_path / "y", rows=10)
    assert not (tmp_path / "y").exists()


def test_virtual_sources_get_the_target_checks():
    """builtin: and synthetic: sources pass through the same driver-side target checks."""
    from distml.runtime.data import validate_data
    from distml.spec import DataSpec

    def check(source, target, task, **kw):
        return validate_data(
            DataSpec(source=source, target=target, **kw), needs_target=True, task=task
        )

    check("builtin:iris", "target", "classification", split={"cv": 5})
    check("builtin:diabetes", "target", "regression")
    with pytest.raises(
        DataError,
        match=r"column 'group' in data.source has dtype .* regression "
        r"target must be numeric",
    ):
        check("synthetic:panel?rows=50&groups=5", "group", "regression", exclude=["target"])
    with pytest.raises(
        DataError, match=r"cv=20 needs at least 20 rows of every class; class \d has \d+"
    ):
        check(
            "synthetic:classification?rows=30&classes=3",
            "target",
            "classification",
            split={"cv": 20},
        )
    info = check("synthetic:regression?rows=40", "target", "infer")
    assert info.source.rows == 40


def test_builtin_and_synthetic_sources_need_no_protocol_opt_in(monkeypatch):
    from distml.runtime.data import check_protocol, inspect_source

    monkeypatch.setenv("DISTML_ALLOWED_PROTOCOLS", "")
    check_protocol("builtin:iris")
    check_protocol("synthetic:regression?rows=5")
    assert inspect_source("synthetic:regression?rows=5").rows == 5
