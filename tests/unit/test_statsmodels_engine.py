"""The statsmodels kind without a cluster: formula checks, spec rules, batching, the fitting
engine on local batches, and the mergeable sufficient statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from distml.errors import SpecError
from distml.jobs.statsmodels import FAMILY_LINKS, analyze_formula
from distml.spec import load_spec


def _spec(model: dict, **top):
    return load_spec(
        {
            "name": "t",
            "kind": "statsmodels",
            "data": {"source": "builtin:longley"},
            "model": model,
            **top,
        }
    )


# ---------------------------------------------------------------- formulas


def test_formula_columns_and_row_wise_flags():
    f = analyze_formula('np.log(y) ~ x + C(region) + I(z ** 2) + Q("a b") + x:C(region)')
    assert f.lhs == ["y"] and f.rhs == ["x", "region", "z", "a b"]
    assert f.rowwise and f.categorical == {"C(region)": "region"}
    assert not analyze_formula("y ~ center(x)").rowwise
    assert not analyze_formula("y ~ C(g, Treatment('b'))").rowwise
    assert analyze_formula("y ~ C(g, levels=['a', 'b'])").columns == ["y", "g"]


@pytest.mark.parametrize(
    "formula,text",
    [
        ("y ~ x.mean()", "calls something that is not an allowed function"),
        ("y ~ x.shape", "may not access attributes"),
        ("y ~ I(x[0])", "uses Subscript"),
        ("y ~ I((lambda: 1)())", "calls something"),
        ("y ~ __import__('os').system('true')", "calls something"),
        ("y ~ I(__builtins__)", "may not use '__builtins__'"),
        ("y ~ open('f')", "calls something"),
        ("y1 + y2 ~ x", "needs method glm with family binomial"),  # counts: glm binomial only
        ("y1 + y2 + y3 ~ x", "exactly one response"),
        ("y ~ x ~ z", "cannot be parsed"),
    ],
)
def test_unsafe_or_malformed_formulas_are_spec_errors(formula, text):
    with pytest.raises(SpecError) as e:
        _spec({"formula": formula})
    assert text in str(e.value) and "model.formula" in str(e.value)


# ---------------------------------------------------------------- spec rules


def test_defaults_fit_every_row():
    s = _spec({"formula": "TOTEMP ~ GNP"})
    assert s.data.split == "none" and s.model.method == "ols" and s.group_by == []
    s = load_spec(
        {
            "name": "t",
            "kind": "statsmodels",
            "data": {"source": "builtin:longley", "split": {"valid": 0.3}},
            "model": {"formula": "TOTEMP ~ GNP"},
        }
    )
    assert s.data.split_spec.valid == 0.3


@pytest.mark.parametrize(
    "model,top,text",
    [
        ({"formula": "y ~ x", "cov_type": "cluster"}, {}, "cov_type cluster and model.cov_groups"),
        ({"formula": "y ~ x", "cov_type": "HAC"}, {}, "cov_type HAC and model.maxlags"),
        (
            {"method": "quantreg", "formula": "y ~ x", "cov_type": "HC1"},
            {},
            "nonrobust for quantreg",
        ),
        ({"method": "arima", "endog": "y", "cov_type": "HC0"}, {}, "not available for arima"),
        ({"formula": "y ~ x", "cov_type": "opg"}, {}, "applies to arima/sarimax only"),
        ({"formula": "y ~ x", "family": "poisson"}, {}, "model.family applies to method glm"),
        ({"method": "glm", "formula": "y ~ x", "var_power": 1.5}, {}, "family tweedie only"),
        ({"formula": "y ~ x", "q": 0.2}, {}, "model.q applies to method quantreg"),
        (
            {"method": "arima", "endog": "y", "forecast_steps": 3},
            {"group_by": ["y"]},
            "group_by column 'y' is also a model column",
        ),
        (
            {"formula": "y ~ x", "solver": "suffstats"},
            {"group_by": ["g"]},
            "solver suffstats needs method ols, wls or glm and no group_by",
        ),
        ({"formula": "y ~ center(x)", "solver": "suffstats"}, {}, "needs a row-wise formula"),
        (
            {"endog": "y", "forecast_steps": 2, "method": "arima", "exog": ["x"]},
            {},
            "forecast_steps with exogenous regressors",
        ),
        (
            {"formula": "y ~ x"},
            {"data": {"source": "builtin:longley", "test_source": "x.csv"}},
            "data.test_source is not used by kind statsmodels",
        ),
        ({"exog": ["x"]}, {}, "model.formula or model.endog is required"),
        ({"formula": "y ~ x", "method": "ridge"}, {}, "model.method"),
        ({"formula": "y ~ x", "groups_per_tsak": 5}, {}, "did you mean 'groups_per_task'"),
    ],
)
def test_spec_rules_name_the_field(model, top, text):
    with pytest.raises(SpecError) as e:
        _spec(model, **top)
    assert text in str(e.value)


def test_family_links_are_statsmodels_links():
    import statsmodels.api as sm

    from distml.jobs.statsmodels.fit import FAMILY_CLASSES, LINK_CLASSES

    for family, links in FAMILY_LINKS.items():
        fam = getattr(sm.families, FAMILY_CLASSES[family])
        allowed = {cls.__name__ for cls in fam.links}
        assert {LINK_CLASSES[link] for link in links} <= allowed, family


def test_schema_lists_the_kind():
    from distml.spec import json_schema

    text = str(json_schema())
    assert "statsmodels" in text and "group_by" in text and "forecast_steps" in text


# ---------------------------------------------------------------- batching and partitions


def test_auto_groups_per_task():
    from distml.jobs.statsmodels.many import auto_groups_per_task

    assert auto_groups_per_task(10_000, "ols", 2) == 1250  # 8 tasks: 4 per CPU
    assert auto_groups_per_task(10_000, "ols", 16) == 556  # enough fitting per task
    assert auto_groups_per_task(200, "arima", 2) == 5  # slow fits: fine tasks
    assert auto_groups_per_task(3, "ols", 2) == 2  # a few groups still use both CPUs
    assert auto_groups_per_task(1, "glm", 8) == 1


def test_partitions_keep_pandas_group_order_and_row_order(tmp_path):
    from distml.jobs.statsmodels.many import assemble, map_partition, merge_summaries
    from distml.runtime.plan import files_partition

    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "g": rng.choice(["b", "a", "c", None], 300),
            "h": rng.integers(0, 2, 300),
            "x": np.arange(300.0),
            "s": rng.choice(["u", "v"], 300),
        }
    )
    parts = [df.iloc[:120], df.iloc[120:]]
    outs = []
    for i, p in enumerate(parts):
        p.to_parquet(tmp_path / f"{i}.parquet")
        outs.append(
            map_partition(
                files_partition(str(tmp_path), [str(tmp_path / f"{i}.parquet")], "parquet"),
                ("g", "h"),
                ["x", "s"],
            )
        )
    keys, pieces = merge_summaries([o[0][0] for o in outs], ("g", "h"))
    expected = df.dropna(subset=["g"]).groupby(["g", "h"])
    assert [tuple(k) for k in keys.itertuples(index=False)] == list(expected.groups)
    assert sum(o[0][1] for o in outs) == df["g"].isna().sum()
    batch = assemble(pieces, [o[1] for o in outs], ["x", "s"])
    for i, (_, gdf) in enumerate(expected):
        a, b = batch.bounds[i], batch.bounds[i + 1]
        np.testing.assert_array_equal(batch.cols["x"][a:b], gdf["x"])  # original row order
        assert list(batch.cols["s"][a:b]) == list(gdf["s"])


def test_fit_batch_paths_agree_without_ray():
    """The batch design (formula once) and per-group formulas give identical numbers (on the
    statsmodels path; the vectorised engine is compared with statsmodels in
    test_vectorised.py)."""
    from distml.jobs.statsmodels.batch import Batch, fit_batch
    from distml.jobs.statsmodels.fit import FitConfig

    rng = np.random.default_rng(1)
    n = 240
    cols = {
        "y": rng.normal(size=n),
        "x": rng.normal(size=n),
        "r": np.asarray(rng.choice(["p", "q", "z"], n), dtype=object),
    }
    cols["r"][:30] = "p"  # group 0 has only level 'p'
    cfg = FitConfig.from_spec(
        _spec({"formula": "y ~ x + C(r)", "solver": "statsmodels"}, group_by=["YEAR"])
    )
    batch = Batch(cols, np.arange(0, n + 1, 30), np.arange(8))
    fast, slow = fit_batch(cfg, batch), fit_batch(cfg, batch, fast=False)
    assert fast["n_fast"] == 7 and slow["n_fast"] == 0
    for k in ("estimate", "std_error", "p_value", "ci_low", "ci_high", "gid"):
        np.testing.assert_array_equal(fast["coef"][k], slow["coef"][k])
    assert list(fast["coef"]["term"][:2]) == ["Intercept", "x"]
    assert not any(row.get("error") for row in fast["stats"])


# ---------------------------------------------------------------- sufficient statistics


def test_moments_merge_equals_one_pass():
    from distml.runtime.suffstats import partition_moments

    rng = np.random.default_rng(4)
    X = np.column_stack([np.ones(500), rng.normal(size=(500, 3))])
    y = X @ [1, 2, 3, 4] + rng.normal(size=500)
    w = rng.uniform(0.5, 2, 500)
    whole = partition_moments(X, y, w)
    merged = partition_moments(X[:100], y[:100], w[:100])
    for lo, hi in ((100, 350), (350, 500)):
        merged = merged.merge(partition_moments(X[lo:hi], y[lo:hi], w[lo:hi]))
    np.testing.assert_allclose(merged.r_xy.T @ merged.r_xy, whole.r_xy.T @ whole.r_xy, rtol=1e-12)
    assert merged.n == 500 and merged.y_mean == pytest.approx(whole.y_mean, rel=1e-14)
    assert merged.y_m2 == pytest.approx(whole.y_m2, rel=1e-12)
    assert merged.log_w == pytest.approx(np.log(w).sum(), rel=1e-12)
