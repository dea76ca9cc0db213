"""Binomial counts responses: `NSUCC + NFAIL ~ x` (R's cbind(successes, failures)) and a
proportion with `model.trials`, one model and many, against statsmodels on the same data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import distml

pytestmark = pytest.mark.usefixtures("ray_cluster")

RHS = "LOWINC + PERASIAN + PERBLACK + PERHISP"


def _reference(df: pd.DataFrame):
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    return smf.glm(f"NABOVE + NBELOW ~ {RHS}", df, family=sm.families.Binomial()).fit()


def _same(coef: pd.DataFrame, stats: pd.Series, ref) -> None:
    assert list(coef.term) == list(ref.params.index)
    for ours, theirs in (
        ("estimate", ref.params),
        ("std_error", ref.bse),
        ("p_value", ref.pvalues),
    ):
        np.testing.assert_array_equal(coef[ours].to_numpy(), np.asarray(theirs), err_msg=ours)
    for ours, theirs in (
        ("llf", ref.llf),
        ("deviance", ref.deviance),
        ("pearson_chi2", ref.pearson_chi2),
        ("nobs", ref.nobs),
    ):
        assert stats[ours] == theirs, ours


def test_successes_and_failures_as_in_r(tmp_path):
    from distml.runtime.datasets import load_builtin

    spec = {
        "name": "star98",
        "kind": "statsmodels",
        "data": {"source": "builtin:star98"},
        "model": {"method": "glm", "family": "binomial", "formula": f"NABOVE + NBELOW ~ {RHS}"},
    }
    r = distml.run(spec, output=tmp_path)
    ref = _reference(load_builtin("star98"))
    _same(r.tables["coefficients"], r.tables["model_stats"].iloc[0], ref)
    assert "NABOVE" in (r.run_dir / "summary.txt").read_text()


def test_proportion_with_trials_equals_the_counts(tmp_path):
    from distml.runtime.datasets import load_builtin

    df = load_builtin("star98")
    df["share"] = df["NABOVE"] / (df["NABOVE"] + df["NBELOW"])
    df["tested"] = df["NABOVE"] + df["NBELOW"]
    df.to_parquet(tmp_path / "star.parquet")
    spec = {
        "name": "share",
        "kind": "statsmodels",
        "data": {"source": str(tmp_path / "star.parquet")},
        "model": {
            "method": "glm",
            "family": "binomial",
            "formula": f"share ~ {RHS}",
            "trials": "tested",
        },
    }
    r = distml.run(spec, output=tmp_path / "runs")
    ref = _reference(df)
    coef = r.tables["coefficients"]
    np.testing.assert_allclose(coef.estimate, ref.params, rtol=1e-10)
    np.testing.assert_allclose(coef.std_error, ref.bse, rtol=1e-10)
    assert r.tables["model_stats"].iloc[0]["llf"] == pytest.approx(ref.llf, rel=1e-10)


def test_many_models_counts_per_group(tmp_path):
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(5)
    rows = []
    for g in range(6):
        n = 80
        x = rng.normal(size=n)
        trials = rng.integers(5, 40, n)
        succ = rng.binomial(trials, 1 / (1 + np.exp(-(0.3 * g - 0.5 + 0.8 * x))))
        rows.append(
            pd.DataFrame(
                {"g": f"g{g}", "x": x, "s": succ.astype(float), "f": (trials - succ).astype(float)}
            )
        )
    df = pd.concat(rows, ignore_index=True)
    df.to_parquet(tmp_path / "c.parquet")
    spec = {
        "name": "cnt",
        "kind": "statsmodels",
        "data": {"source": str(tmp_path / "c.parquet")},
        "group_by": ["g"],
        "model": {"method": "glm", "family": "binomial", "formula": "s + f ~ x"},
    }
    r = distml.run(spec, output=tmp_path / "runs")
    coef, stats = r.tables["coefficients"], r.tables["model_stats"].set_index("g")
    assert (stats["engine"] == "statsmodels").all()
    assert (
        r.manifest["execution"]["engine"]["out_of_scope"]
        == "binomial counts responses are fitted by statsmodels"
    )
    for g, gdf in df.groupby("g"):
        ref = smf.glm("s + f ~ x", gdf, family=sm.families.Binomial()).fit()
        c = coef[coef.g == g]
        np.testing.assert_array_equal(c.estimate.to_numpy(), np.asarray(ref.params))
        np.testing.assert_array_equal(c.std_error.to_numpy(), np.asarray(ref.bse))
        assert stats.loc[g, "deviance"] == ref.deviance


@pytest.mark.parametrize(
    "model,words",
    [
        (
            {"method": "ols", "formula": "NABOVE + NBELOW ~ LOWINC"},
            "needs method glm with family binomial",
        ),
        (
            {"method": "glm", "family": "poisson", "formula": "NABOVE + NBELOW ~ LOWINC"},
            "family binomial",
        ),
        (
            {
                "method": "glm",
                "family": "binomial",
                "formula": "NABOVE ~ LOWINC",
                "trials": "NBELOX",
            },
            "model.trials: column 'NBELOX' is not in",
        ),
        (
            {
                "method": "glm",
                "family": "binomial",
                "formula": "NABOVE + NBELOW ~ LOWINC",
                "trials": "NBELOW",
            },
            "conflict",
        ),
        (
            {
                "method": "glm",
                "family": "binomial",
                "formula": "np.log(NABOVE) ~ LOWINC",
                "trials": "NBELOW",
            },
            "plain column as the response",
        ),
        (
            {
                "method": "glm",
                "family": "binomial",
                "formula": "NABOVE + NBELOW + PERHISP ~ LOWINC",
            },
            "exactly one response",
        ),
    ],
)
def test_counts_rules_are_checked_before_the_cluster(model, words):
    spec = {
        "name": "x",
        "kind": "statsmodels",
        "data": {"source": "builtin:star98"},
        "model": model,
    }
    with pytest.raises((distml.SpecError, distml.DataError), match=words):
        distml.api.validate(spec)
