"""statsmodels single models, the sufficient-statistics path, and validation before the cluster.

Single models are compared with statsmodels called directly on the same data; the
sufficient-statistics OLS/WLS (partitions merged on the cluster) with statsmodels on the
concatenated data in memory.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

import distml
from distml.cli import main

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _eq(actual, desired, rtol: float = 0.0) -> None:
    """Bit-equal (rtol 0: statsmodels' own solver) or within rtol (distml's scaled QR)."""
    if rtol == 0:
        np.testing.assert_array_equal(actual, desired)
    else:
        np.testing.assert_allclose(
            np.asarray(actual, float), np.asarray(desired, float), rtol=rtol, atol=0
        )


def _same_coefficients(coef: pd.DataFrame, ref, alpha: float = 0.05, rtol: float = 0.0) -> None:
    assert list(coef.columns) == [
        "term",
        "estimate",
        "std_error",
        "statistic",
        "p_value",
        "ci_low",
        "ci_high",
    ]
    names = list(getattr(ref, "param_names", None) or ref.model.exog_names)
    assert list(coef.term) == names
    _eq(coef.estimate, np.asarray(ref.params), rtol)
    _eq(coef.std_error, np.asarray(ref.bse), rtol)
    _eq(coef.statistic, np.asarray(ref.tvalues), rtol)
    _eq(coef.p_value, np.asarray(ref.pvalues), rtol)
    _eq(coef[["ci_low", "ci_high"]].to_numpy(), np.asarray(ref.conf_int(alpha=alpha)), rtol)


# NIST StRD certified values for Longley (https://www.itl.nist.gov/div898/strd/lls/data/LINKS/
# DATA/Longley.dat): estimates and standard errors, const first
LONGLEY_CERTIFIED = (
    [
        -3482258.63459582,
        15.0618722713733,
        -0.358191792925910e-01,
        -2.02022980381683,
        -1.03322686717359,
        -0.511041056535807e-01,
        1829.15146461355,
    ],
    [
        890420.383607373,
        84.9149257747669,
        0.334910077722432e-01,
        0.488399681651699,
        0.214274163161675,
        0.226073200069370,
        455.478499142212,
    ],
)


def _strip_clock(text: str) -> str:
    return re.sub(r"(Date|Time):\s+\S.*?(?=\s{2,}|$)", "", text, flags=re.M)


@pytest.mark.parametrize("solver", ["statsmodels", "auto"])
def test_ols_longley_example(tmp_path, project_root, solver):
    """`solver: statsmodels` is statsmodels bit for bit; the default (the QR of the scaled
    design) agrees with it to 1e-10 and is at least as close to NIST's certified values."""
    import statsmodels.formula.api as smf

    from distml.runtime.datasets import load_builtin

    r = distml.run(
        f"{project_root}/jobs/statsmodels_ols_longley.yaml", output=tmp_path, model__solver=solver
    )
    ref = smf.ols(
        "TOTEMP ~ GNPDEFL + GNP + UNEMP + ARMED + POP + YEAR", load_builtin("longley")
    ).fit()
    rtol = 0.0 if solver == "statsmodels" else 1e-10
    coef = r.tables["coefficients"]
    _same_coefficients(coef, ref, rtol=rtol)
    stats = r.tables["model_stats"].iloc[0]
    for ours, theirs in (
        ("r_squared", "rsquared"),
        ("adj_r_squared", "rsquared_adj"),
        ("aic", "aic"),
        ("bic", "bic"),
        ("llf", "llf"),
        ("fvalue", "fvalue"),
    ):
        _eq(stats[ours], getattr(ref, theirs), rtol)
        _eq(r.metrics[ours], getattr(ref, theirs), rtol)
    assert r.metrics["nobs"] == 16 and r.metrics["n_groups"] == 1 and r.metrics["converged"]
    est, se = (np.asarray(v) for v in LONGLEY_CERTIFIED)

    def lre(got, want):  # log relative error: correct significant digits
        return -np.log10(np.abs(np.asarray(got) - want) / np.abs(want))

    assert lre(coef.estimate, est).min() >= lre(ref.params, est).min() - 0.05
    assert lre(coef.estimate, est).min() > 10 and lre(coef.std_error, se).min() > 10
    assert stats["condition_number"] == pytest.approx(ref.condition_number, rel=1e-8)
    summary = (r.run_dir / "summary.txt").read_text()
    assert _strip_clock(summary) == _strip_clock(str(ref.summary()))
    assert r.manifest["execution"]["path"] == "single"
    import yaml

    # inference uses every row: no split unless the spec asks for one
    assert yaml.safe_load((r.run_dir / "spec.yaml").read_text())["data"]["split"] == "none"


def test_logit_and_arima_examples(tmp_path, project_root):
    import statsmodels.formula.api as smf
    from statsmodels.tsa.arima.model import ARIMA

    from distml.runtime.datasets import load_builtin

    r = distml.run(f"{project_root}/jobs/statsmodels_logit_spector.yaml", output=tmp_path)
    ref = smf.logit("GRADE ~ GPA + TUCE + PSI", load_builtin("spector")).fit(disp=0, cov_type="HC1")
    _same_coefficients(r.tables["coefficients"], ref)
    assert r.metrics["pseudo_r_squared"] == ref.prsquared
    assert "Logit Regression Results" in (r.run_dir / "summary.txt").read_text()

    r = distml.run(f"{project_root}/jobs/statsmodels_arima_sunspots.yaml", output=tmp_path)
    sun = load_builtin("sunspots").sort_values("YEAR")
    ref = ARIMA(sun["SUNACTIVITY"].to_numpy(), order=(2, 0, 1), trend="c").fit()
    _same_coefficients(r.tables["coefficients"], ref)
    fc, f = r.tables["forecast"], ref.get_forecast(10)
    np.testing.assert_array_equal(fc["mean"], f.predicted_mean)
    np.testing.assert_array_equal(fc[["ci_low", "ci_high"]].to_numpy(), f.conf_int())
    assert list(fc["time"]) == list(np.arange(2009.0, 2019.0))
    assert "SUNACTIVITY" in (r.run_dir / "summary.txt").read_text()


def test_single_model_split_and_failures(tmp_path):
    import statsmodels.formula.api as smf

    from distml.runtime.data import split_indices
    from distml.runtime.datasets import load_builtin
    from distml.spec import load_spec

    spec = {
        "name": "sp",
        "kind": "statsmodels",
        "data": {"source": "builtin:spector", "split": {"valid": 0.25, "seed": 1}},
        "model": {"method": "probit", "formula": "GRADE ~ GPA + PSI"},
    }
    r = distml.run(spec, output=tmp_path)
    df = load_builtin("spector")
    parts = split_indices(
        df["GRADE"].to_numpy(), load_spec(spec).data.split_spec, classification=True
    )
    ref = smf.probit("GRADE ~ GPA + PSI", df.iloc[parts["train"]]).fit(disp=0)
    _same_coefficients(r.tables["coefficients"], ref)
    assert r.metrics["nobs"] == len(parts["train"])
    assert set(r.metrics["valid"]) >= {"accuracy", "logloss", "roc_auc"}
    # a single model that cannot be fitted is a failed job (exit 4)
    bad = {
        "name": "bad",
        "kind": "statsmodels",
        "data": {"source": "builtin:longley"},
        "model": {"formula": "TOTEMP ~ GNP + I(2 * GNP)"},
    }
    with pytest.raises(distml.JobFailed, match="singular design"):
        distml.run(bad, output=tmp_path)


def _write_parts(df: pd.DataFrame, folder, n: int = 4) -> str:
    folder.mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(df)), n)):
        df.iloc[rows].to_parquet(folder / f"part-{i}.parquet", index=False)
    return str(folder / "*.parquet")


@pytest.mark.parametrize(
    "method,cov", [("ols", "nonrobust"), ("ols", "HC3"), ("wls", "HC1"), ("wls", "cluster")]
)
def test_sufficient_statistics_equal_statsmodels_in_memory(tmp_path, method, cov):
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(11)
    n = 6000
    df = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.uniform(0.5, 4, n),
            "region": rng.choice(["e", "n", "s", "w"], n),
            "w": rng.uniform(0.5, 2, n),
            "firm": rng.integers(0, 30, n),
        }
    )
    df["y"] = (
        1
        + 2 * df.x1
        - np.log(df.x2)
        + 0.5 * (df.region == "s")
        + rng.normal(size=n) * (1 + df.x2 / 4)
    )
    df.loc[5, "x1"] = np.nan  # dropped, as statsmodels' formula API drops it
    source = _write_parts(df, tmp_path / "parts")
    f = "y ~ x1 + np.log(x2) + C(region)"
    model = {"method": method, "formula": f, "solver": "suffstats", "cov_type": cov}
    if method == "wls":
        model["weights"] = "w"
    if cov == "cluster":
        model["cov_groups"] = "firm"
    r = distml.run(
        {"name": "ss", "kind": "statsmodels", "data": {"source": source}, "model": model},
        output=tmp_path / "runs",
    )
    assert r.manifest["execution"]["path"] == "suffstats"
    assert r.manifest["execution"]["partitions"] >= 4
    clean = df.dropna()
    mod = smf.wls(f, clean, weights=clean["w"]) if method == "wls" else smf.ols(f, clean)
    kw = {"cov_kwds": {"groups": clean["firm"].to_numpy()}} if cov == "cluster" else {}
    ref = mod.fit(cov_type=cov, **kw)
    coef, stats = r.tables["coefficients"], r.tables["model_stats"].iloc[0]
    assert list(coef.term) == list(ref.params.index)
    tight = dict(rtol=1e-10, atol=0)
    np.testing.assert_allclose(coef.estimate, ref.params, **tight)
    np.testing.assert_allclose(coef.std_error, ref.bse, **tight)
    np.testing.assert_allclose(coef.statistic, ref.tvalues, **tight)
    np.testing.assert_allclose(coef.p_value, ref.pvalues, rtol=1e-8, atol=1e-300)
    np.testing.assert_allclose(coef[["ci_low", "ci_high"]], ref.conf_int(), **tight)
    for ours, theirs in (
        ("r_squared", "rsquared"),
        ("adj_r_squared", "rsquared_adj"),
        ("llf", "llf"),
        ("aic", "aic"),
        ("bic", "bic"),
        ("fvalue", "fvalue"),
        ("f_pvalue", "f_pvalue"),
        ("df_resid", "df_resid"),
        ("df_model", "df_model"),
    ):
        np.testing.assert_allclose(stats[ours], getattr(ref, theirs), rtol=1e-9, err_msg=ours)
    assert stats["nobs"] == ref.nobs == n - 1
    assert "sufficient statistics" in (r.run_dir / "summary.txt").read_text()


def test_sufficient_statistics_array_interface(tmp_path):
    import statsmodels.api as sm

    rng = np.random.default_rng(2)
    df = pd.DataFrame({"a": rng.normal(size=3000), "b": rng.normal(size=3000)})
    df["y"] = 3 - df.a + 0.2 * df.b + rng.normal(size=3000)
    source = _write_parts(df, tmp_path / "p", 3)
    r = distml.run(
        {
            "name": "ssa",
            "kind": "statsmodels",
            "data": {"source": source},
            "model": {"endog": "y", "exog": ["a", "b"], "solver": "suffstats"},
        },
        output=tmp_path / "runs",
    )
    ref = sm.OLS(df["y"], sm.add_constant(df[["a", "b"]])).fit()
    coef = r.tables["coefficients"]
    assert list(coef.term) == ["const", "a", "b"]
    np.testing.assert_allclose(coef.estimate, ref.params, rtol=1e-11)
    np.testing.assert_allclose(coef.std_error, ref.bse, rtol=1e-11)
    assert r.metrics["r_squared"] == pytest.approx(ref.rsquared, rel=1e-12)


# ---------------------------------------------------------------- validation before the cluster


@pytest.fixture
def no_cluster(monkeypatch):
    """Any cluster use during the call is a test failure: validation must come first."""
    import distml.runtime.cluster as cl

    def refuse(*a, **k):
        raise AssertionError("the cluster was touched before validation finished")

    monkeypatch.setattr(cl, "cluster", refuse)


@pytest.mark.parametrize(
    "model,extra,error,text",
    [
        ({"formula": "y ~ x1 + x3"}, {}, distml.DataError, "model.formula: column 'x3' is not in"),
        ({"formula": "y ~ x1 + xx2"}, {}, distml.DataError, "did you mean 'x2'?"),
        ({"formula": "y ~ x1 +"}, {}, distml.SpecError, "model.formula cannot be parsed"),
        ({"formula": "y ~ (x1"}, {}, distml.SpecError, "Unmatched '('"),
        (
            {"formula": "name ~ x1"},
            {},
            distml.DataError,
            "column 'name' has dtype large_string, but it must be numeric",
        ),
        ({"endog": "name", "exog": ["x1"]}, {}, distml.DataError, "model.endog: column 'name'"),
        (
            {"formula": "y ~ x1.mean()"},
            {},
            distml.SpecError,
            "calls something that is not an allowed function",
        ),
        (
            {"formula": "y ~ __import__('os').getcwd()"},
            {},
            distml.SpecError,
            "calls something that is not an allowed function",
        ),
        (
            {"formula": "y ~ x1", "cov_type": "cluster", "cov_groups": "firmx"},
            {},
            distml.DataError,
            "model.cov_groups: column 'firmx'",
        ),
        (
            {"formula": "y ~ x1"},
            {"group_by": ["stor"]},
            distml.DataError,
            "group_by: column 'stor' is not in",
        ),
        (
            {"method": "wls", "formula": "y ~ x1"},
            {},
            distml.SpecError,
            "model.weights is required for method wls",
        ),
        (
            {"method": "glm", "family": "poisson", "link": "logit", "formula": "y ~ x1"},
            {},
            distml.SpecError,
            "model.link 'logit' is not valid for family poisson",
        ),
        (
            {"formula": "y ~ x1", "endog": "y"},
            {},
            distml.SpecError,
            "model.formula and model.endog conflict",
        ),
        (
            {"method": "arima", "formula": "y ~ x1"},
            {},
            distml.SpecError,
            "model.formula is not supported for method arima",
        ),
        (
            {"formula": "y ~ x1", "order": [2, 0, 0]},
            {},
            distml.SpecError,
            "model.order applies to method arima / sarimax only",
        ),
    ],
)
def test_bad_specs_fail_before_the_cluster(tmp_path, no_cluster, model, extra, error, text):
    df = pd.DataFrame(
        {
            "store": ["a", "b"] * 5,
            "x1": np.arange(10.0),
            "x2": np.ones(10),
            "y": np.arange(10.0) ** 2,
            "name": list("abcdefghij"),
        }
    )
    df.to_parquet(tmp_path / "d.parquet")
    spec = {
        "name": "bad",
        "kind": "statsmodels",
        "data": {"source": str(tmp_path / "d.parquet")},
        "model": model,
        **extra,
    }
    with pytest.raises(error) as e:
        distml.run(spec, output=tmp_path / "runs")
    assert text in str(e.value)
    assert not list((tmp_path / "runs").rglob("_SUCCESS"))


def test_cli_validate_exits_2_with_one_sentence(tmp_path, capsys):
    pd.DataFrame({"y": [1.0, 2.0, 3.0], "x": [1.0, 0.0, 1.0]}).to_parquet(tmp_path / "d.pq")
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"name: v\nkind: statsmodels\ndata: {{source: '{tmp_path}/d.pq'}}\n"
        "model: {formula: 'y ~ x + z'}\n"
    )
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "model.formula: column 'z' is not in" in err and "Traceback" not in err
    assert main(["run", str(spec), "--json", "--output", str(tmp_path / "runs")]) == 2
    payload = json.loads(capsys.readouterr().out)
    assert payload["error"]["exit_code"] == 2


def test_negative_binomial_converges_to_a_vanishing_score(tmp_path):
    """NB2 on statsmodels' randhie (20,190 rows): statsmodels' default fit (bfgs, 35 iterations)
    stops with a score of ~2 and ~4 correct digits; distml fits by Newton to a score of ~1e-11,
    reports it, and agrees with a tight Newton reference to 1e-8."""
    import warnings

    import statsmodels.api as sm
    from statsmodels.datasets import randhie

    data = randhie.load_pandas()
    df = pd.concat([data.endog, data.exog], axis=1)
    df.to_parquet(tmp_path / "randhie.parquet")
    xs = list(data.exog.columns)
    r = distml.run(
        {
            "name": "nb2",
            "kind": "statsmodels",
            "data": {"source": str(tmp_path / "randhie.parquet")},
            "model": {"method": "negativebinomial", "endog": "mdvis", "exog": xs},
        },
        output=tmp_path / "runs",
    )
    model = sm.NegativeBinomial(df["mdvis"], sm.add_constant(df[xs]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = model.fit(disp=0)
        tight = model.fit(disp=0, method="newton", maxiter=200, tol=1e-12)
    assert (
        np.abs(model.score(np.asarray(default.params))).max() > 1e-3
    )  # statsmodels' default stops short
    stats = r.tables["model_stats"].iloc[0]
    assert stats["converged"] and stats["max_abs_score"] < 1e-8
    np.testing.assert_allclose(r.tables["coefficients"].estimate, tight.params, rtol=1e-8)
