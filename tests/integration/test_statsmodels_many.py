"""statsmodels many-models on the shared cluster, compared with a plain per-group statsmodels loop.

Every method is run through ``distml.run`` with ``group_by`` and compared, group by group, with
what a user gets from ``for key, gdf in df.groupby(...)`` and the statsmodels formula/array API:
estimates, standard errors, statistics, p-values and intervals must be identical (bit for bit:
distml runs statsmodels on the same numbers in the same memory layout).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import distml
from distml.runtime.data import split_indices

pytestmark = pytest.mark.usefixtures("ray_cluster")

GROUPS = [f"s{i:02d}" for i in range(9)]


def _panel(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for i, g in enumerate(GROUPS):
        n = 40 + 3 * i
        regions = ["east", "north", "south"] if i % 3 else ["north", "south"]  # some lack a level
        t = rng.permutation(n)  # rows arrive out of time order
        x1, x2 = rng.normal(size=n), rng.uniform(0.5, 3, n)
        region = rng.choice(regions, n)
        eta = 0.3 + 0.8 * x1 - 0.4 * np.log(x2) + 0.5 * (region == "south")
        frames.append(
            pd.DataFrame(
                {
                    "store": g,
                    "t": t,
                    "x1": x1,
                    "x2": x2,
                    "region": region,
                    "w": rng.uniform(0.5, 2, n),
                    "cl": rng.integers(0, 6, n),
                    "y": eta + rng.normal(size=n) * (1 + x2 / 3),
                    "bin": (eta + rng.logistic(size=n) > 0.3).astype(float),
                    "cnt": rng.poisson(np.exp(0.5 + 0.4 * x1)).astype(float),
                    "nb": rng.negative_binomial(2, 2 / (2 + np.exp(1 + 0.4 * x1))).astype(float),
                    "pos": rng.gamma(2.0, np.exp(0.2 + 0.3 * x1) / 2.0),
                    "expo": rng.uniform(1, 3, n),
                    "ts": np.cumsum(rng.normal(size=n)) * 0.3 + 0.5 * x1,
                }
            )
        )
    return pd.concat(frames, ignore_index=True).sample(frac=1, random_state=1)


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    df = _panel()
    path = tmp_path_factory.mktemp("panel") / "panel.parquet"
    df.to_parquet(path, index=False)
    return df, str(path)


def _run(path, model: dict, tmp_path, solver: str = "auto", **top):
    if solver != "auto":
        model = {**model, "solver": solver}
    spec = {
        "name": "mm",
        "kind": "statsmodels",
        "data": {"source": path},
        "group_by": ["store"],
        "model": model,
        **top,
    }
    return distml.run(spec, output=tmp_path)


# Both paths of many-models are held to a plain statsmodels loop: `solver: statsmodels` gives
# statsmodels' own numbers bit for bit; the vectorised engine (the default where it applies)
# equals them to a relative 1e-10 (least squares) or 1e-8 (GLM).
SOLVERS = pytest.mark.parametrize("solver", ["statsmodels", "auto"])


def _rtol(r) -> float:
    """0 (bit-equal) where statsmodels' own solver fitted every group, else the tolerance of
    distml's: the scaled QR of OLS/WLS (1e-10) or the vectorised GLM (1e-8)."""
    import yaml

    stats, method = r.tables["model_stats"], r.metrics["method"]
    solver = yaml.safe_load((r.run_dir / "spec.yaml").read_text())["model"]["solver"]
    if solver == "statsmodels":
        assert (stats["engine"].dropna() == "statsmodels").all()
        return 0.0
    if method in ("ols", "wls"):
        return 1e-10
    return 1e-8 if (stats["engine"] == "vectorised").any() else 0.0


def _eq(actual, desired, rtol: float, err_msg: str = "") -> None:
    if rtol == 0:
        np.testing.assert_array_equal(actual, desired, err_msg=err_msg)
    else:
        np.testing.assert_allclose(
            np.asarray(actual, float),
            np.asarray(desired, float),
            rtol=rtol,
            atol=0,
            err_msg=err_msg,
        )


def _assert_same(r, refs: dict, alpha: float = 0.05):
    """distml's tables equal the plain loop's results for every group."""
    rtol = _rtol(r)
    coef, stats = r.tables["coefficients"], r.tables["model_stats"]
    assert list(coef.columns[:8]) == [
        "store",
        "term",
        "estimate",
        "std_error",
        "statistic",
        "p_value",
        "ci_low",
        "ci_high",
    ]
    assert list(stats.columns[:9]) == [
        "store",
        "nobs",
        "r_squared",
        "adj_r_squared",
        "aic",
        "bic",
        "llf",
        "converged",
        "error",
    ]
    assert list(stats["store"]) == sorted(refs)
    for g, ref in refs.items():
        c = coef[coef.store == g]
        s = stats[stats.store == g].iloc[0]
        assert pd.isna(s["error"]), (g, s["error"])
        names = list(getattr(ref, "param_names", None) or ref.model.exog_names)
        assert list(c.term) == names[: len(c)], g
        _eq(c.estimate, np.asarray(ref.params), rtol, err_msg=g)
        _eq(c.std_error, np.asarray(ref.bse), rtol, err_msg=g)
        _eq(c.statistic, np.asarray(ref.tvalues), rtol, err_msg=g)
        _eq(c.p_value, np.asarray(ref.pvalues), rtol, err_msg=g)
        ci = np.asarray(ref.conf_int(alpha=alpha))
        _eq(c[["ci_low", "ci_high"]].to_numpy(), ci, rtol, err_msg=g)
        assert s["nobs"] == ref.nobs
        _eq([s["llf"], s["aic"], s["bic"]], [ref.llf, ref.aic, ref.bic], rtol, err_msg=g)


def _loop(df, fit_one):
    return {g: fit_one(gdf) for g, gdf in df.groupby("store")}


@SOLVERS
def test_ols_formula_matches_loop_on_both_design_paths(panel, tmp_path, solver):
    import statsmodels.formula.api as smf

    df, path = panel
    f = "y ~ x1 + np.log(x2) + C(region)"
    r = _run(path, {"formula": f}, tmp_path, solver)
    refs = _loop(df, lambda g: smf.ols(f, g).fit())
    _assert_same(r, refs)
    rtol = _rtol(r)
    stats = r.tables["model_stats"].set_index("store")
    for g, ref in refs.items():
        _eq(stats.loc[g, "r_squared"], ref.rsquared, rtol)
        _eq(stats.loc[g, "adj_r_squared"], ref.rsquared_adj, rtol)
        _eq([stats.loc[g, "fvalue"], stats.loc[g, "f_pvalue"]], [ref.fvalue, ref.f_pvalue], rtol)
    # groups lacking the 'east' level were fitted from their own formula, the others from the
    # batch design: both paths ran and both equal the loop
    assert r.metrics["n_groups"] == len(GROUPS) and r.metrics["n_failed"] == 0
    assert 0 < r.manifest["execution"]["formula_evaluated_per_batch_groups"] < len(GROUPS)


@SOLVERS
@pytest.mark.parametrize("cov", ["HC0", "HC3", "cluster", "HAC"])
def test_ols_robust_covariances(panel, tmp_path, cov, solver):
    import statsmodels.formula.api as smf

    df, path = panel
    f = "y ~ x1 + x2"
    model = {"formula": f, "cov_type": cov, "alpha": 0.1}
    kw = {}
    if cov == "cluster":
        model["cov_groups"] = "cl"
    if cov == "HAC":
        model["maxlags"] = 2

    def fit(g):
        if cov == "cluster":
            kw["cov_kwds"] = {"groups": g["cl"].to_numpy()}
        if cov == "HAC":
            kw["cov_kwds"] = {"maxlags": 2}
        return smf.ols(f, g).fit(cov_type=cov, **kw)

    _assert_same(_run(path, model, tmp_path, solver), _loop(df, fit), alpha=0.1)


@SOLVERS
def test_wls_and_array_interface(panel, tmp_path, solver):
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    df, path = panel
    r = _run(path, {"method": "wls", "formula": "y ~ x1 + x2", "weights": "w"}, tmp_path, solver)
    _assert_same(r, _loop(df, lambda g: smf.wls("y ~ x1 + x2", g, weights=g["w"]).fit()))
    r = _run(path, {"endog": "y", "exog": ["x1", "x2"]}, tmp_path, solver)
    refs = _loop(df, lambda g: sm.OLS(g["y"], sm.add_constant(g[["x1", "x2"]])).fit())
    _assert_same(r, refs)
    assert list(r.tables["coefficients"].term[:3]) == ["const", "x1", "x2"]


@pytest.mark.parametrize(
    "family,link,y,extra",
    [
        ("binomial", None, "bin", {}),
        ("poisson", None, "cnt", {"exposure": "expo"}),
        ("gamma", "log", "pos", {"cov_type": "HC1"}),
        ("gaussian", None, "y", {"weights": "w"}),
        ("negativebinomial", None, "nb", {"family_alpha": 0.5}),
        ("tweedie", None, "pos", {"var_power": 1.5}),
    ],
)
@SOLVERS
def test_glm_families(panel, tmp_path, family, link, y, extra, solver):
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    df, path = panel
    f = f"{y} ~ x1 + x2"
    model = {"method": "glm", "formula": f, "family": family, **extra}
    if link:
        model["link"] = link

    def fit(g):
        fam_kw = {}
        if link:
            fam_kw["link"] = sm.families.links.Log()
        if "family_alpha" in extra:
            fam_kw["alpha"] = extra["family_alpha"]
        if "var_power" in extra:
            fam_kw["var_power"] = extra["var_power"]
        fam = {
            "binomial": sm.families.Binomial,
            "poisson": sm.families.Poisson,
            "gamma": sm.families.Gamma,
            "gaussian": sm.families.Gaussian,
            "negativebinomial": sm.families.NegativeBinomial,
            "tweedie": sm.families.Tweedie,
        }[family](**fam_kw)
        kw = {}
        if "exposure" in extra:
            kw["exposure"] = g["expo"]
        if "weights" in extra:
            kw["var_weights"] = g["w"]
        fit_kw = {"cov_type": extra["cov_type"]} if "cov_type" in extra else {}
        return smf.glm(f, g, family=fam, **kw).fit(**fit_kw)

    r = _run(path, model, tmp_path, solver)
    refs = _loop(df, fit)
    _assert_same(r, refs)
    rtol = _rtol(r)
    stats = r.tables["model_stats"].set_index("store")
    for g, ref in refs.items():
        _eq(stats.loc[g, "deviance"], ref.deviance, rtol)
        _eq(stats.loc[g, "pseudo_r_squared"], ref.pseudo_rsquared(), rtol)


@SOLVERS
@pytest.mark.parametrize(
    "method,y",
    [("logit", "bin"), ("probit", "bin"), ("poisson", "cnt"), ("negativebinomial", "nb")],
)
def test_discrete_models(panel, tmp_path, method, y, solver):
    """`solver: statsmodels` is statsmodels' default fit bit for bit; the default fits by Newton
    to a vanishing score (statsmodels' negativebinomial default, bfgs with 35 iterations, stops
    short) and calls a fit converged only when its score is below the tolerance."""
    import statsmodels.formula.api as smf

    from distml.jobs.statsmodels.fit import SCORE_TOL

    df, path = panel
    f = f"{y} ~ x1 + x2"
    r = _run(path, {"method": method, "formula": f}, tmp_path, solver)
    kw = {} if solver == "statsmodels" else {"method": "newton", "maxiter": 100}
    refs = _loop(df, lambda g: getattr(smf, method)(f, g).fit(disp=0, **kw))
    _assert_same(r, refs)
    stats = r.tables["model_stats"].set_index("store")
    for g, ref in refs.items():
        np.testing.assert_array_equal(stats.loc[g, "pseudo_r_squared"], ref.prsquared)
        score = np.abs(ref.model.score(np.asarray(ref.params))).max()
        assert stats.loc[g, "max_abs_score"] == score
        if solver == "statsmodels":
            assert bool(stats.loc[g, "converged"]) == ref.mle_retvals["converged"]
        else:
            assert bool(stats.loc[g, "converged"]) == (
                ref.mle_retvals["converged"] and score <= SCORE_TOL * ref.nobs
            )
            assert stats.loc[g, "converged"] and score < 1e-6


def test_quantreg(panel, tmp_path):
    import statsmodels.formula.api as smf

    df, path = panel
    r = _run(path, {"method": "quantreg", "formula": "y ~ x1 + x2", "q": 0.3}, tmp_path)
    refs = _loop(df, lambda g: smf.quantreg("y ~ x1 + x2", g).fit(q=0.3))
    _assert_same(r, refs)


def test_arima_and_sarimax_with_forecast(panel, tmp_path):
    from statsmodels.tsa.arima.model import ARIMA
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    df, path = panel
    r = _run(
        path,
        {
            "method": "arima",
            "endog": "ts",
            "order": [1, 0, 1],
            "trend": "c",
            "time": "t",
            "forecast_steps": 3,
        },
        tmp_path,
    )

    def arima(g):
        g = g.sort_values("t", kind="stable")
        return ARIMA(g["ts"].to_numpy(), order=(1, 0, 1), trend="c").fit()

    refs = _loop(df, arima)
    _assert_same(r, refs)
    fc = r.tables["forecast"]
    assert list(fc.columns) == ["store", "step", "time", "mean", "std_error", "ci_low", "ci_high"]
    for g, ref in refs.items():
        f = ref.get_forecast(3)
        rows = fc[fc.store == g]
        np.testing.assert_array_equal(rows["mean"], f.predicted_mean)
        np.testing.assert_array_equal(rows["std_error"], f.se_mean)
        np.testing.assert_array_equal(rows[["ci_low", "ci_high"]].to_numpy(), f.conf_int())
        n = int((df.store == g).sum())
        assert list(rows["time"]) == [n, n + 1, n + 2]  # t is 0..n-1: evenly spaced
    stats = r.tables["model_stats"]
    assert {"hqic", "ljung_box_stat", "ljung_box_pvalue"} <= set(stats.columns)

    r = _run(
        path,
        {
            "method": "sarimax",
            "endog": "ts",
            "exog": ["x1"],
            "order": [1, 0, 0],
            "seasonal_order": [1, 0, 0, 4],
            "time": "t",
        },
        tmp_path,
    )

    def sarimax(g):
        g = g.sort_values("t", kind="stable")
        return SARIMAX(
            g["ts"].to_numpy(),
            exog=g[["x1"]].reset_index(drop=True),
            order=(1, 0, 0),
            seasonal_order=(1, 0, 0, 4),
        ).fit(disp=False)

    _assert_same(r, _loop(df, sarimax))


@SOLVERS
def test_split_reports_out_of_sample_metrics(panel, tmp_path, solver):
    import statsmodels.formula.api as smf
    from sklearn.metrics import mean_squared_error

    from distml.spec import load_spec

    df, path = panel
    split = {"valid": 0.25, "seed": 7}
    r = _run(
        path, {"formula": "y ~ x1 + x2"}, tmp_path, solver, data={"source": path, "split": split}
    )
    rtol = _rtol(r)
    sp = load_spec(
        {
            "name": "x",
            "kind": "statsmodels",
            "data": {"source": path, "split": split},
            "model": {"formula": "y ~ x1"},
        }
    ).data.split_spec
    coef, stats = r.tables["coefficients"], r.tables["model_stats"].set_index("store")
    ys, preds = [], []
    for g, gdf in df.groupby("store"):
        parts = split_indices(gdf["y"].to_numpy(), sp, classification=False)
        ref = smf.ols("y ~ x1 + x2", gdf.iloc[parts["train"]]).fit()
        _eq(coef[coef.store == g].estimate, ref.params, rtol)
        valid = gdf.iloc[parts["valid"]]
        pred = ref.predict(valid)
        assert stats.loc[g, "valid_n"] == len(valid)
        assert stats.loc[g, "valid_rmse"] == pytest.approx(
            mean_squared_error(valid["y"], pred) ** 0.5, rel=1e-12
        )
        ys.append(valid["y"].to_numpy())
        preds.append(pred.to_numpy())
    pooled = mean_squared_error(np.concatenate(ys), np.concatenate(preds)) ** 0.5
    assert r.metrics["valid"]["rmse"] == pytest.approx(pooled, rel=1e-12)


def test_failed_groups_are_recorded_and_the_rest_succeed(tmp_path):
    rng = np.random.default_rng(3)
    rows = []
    for g, n in (("ok1", 30), ("ok2", 25), ("tiny", 2), ("const", 20), ("nan", 20)):
        x1 = rng.normal(size=n)
        x2 = np.full(n, 2.0) if g == "const" else rng.normal(size=n)
        y = x1 + rng.normal(size=n)
        if g == "nan":
            y[3] = np.nan
        rows.append(pd.DataFrame({"g": g, "x1": x1, "x2": x2, "y": y}))
    path = tmp_path / "d.parquet"
    pd.concat(rows).to_parquet(path)
    spec = {
        "name": "fail",
        "kind": "statsmodels",
        "data": {"source": str(path)},
        "group_by": ["g"],
        "model": {"formula": "y ~ x1 + x2", "missing": "raise"},
    }
    r = distml.run(spec, output=tmp_path / "runs")
    assert r.status == "succeeded"
    stats = r.tables["model_stats"].set_index("g")
    assert stats.loc["tiny", "error"].startswith("too few rows")
    assert stats.loc["const", "error"].startswith("singular design: rank 2 < 3")
    assert "missing values" in stats.loc["nan", "error"]
    assert stats.loc[["ok1", "ok2"], "error"].isna().all()
    assert not stats.loc[["tiny", "const", "nan"], "converged"].any()
    assert set(r.tables["coefficients"].g) == {"ok1", "ok2"}
    assert r.metrics["n_failed"] == 3 and r.metrics["n_fitted"] == 2
    # missing: drop fits the 'nan' group without the bad row; min_rows fails the small groups
    r = distml.run(spec, output=tmp_path / "runs", model__missing="drop", model__min_rows=22)
    stats = r.tables["model_stats"].set_index("g")
    assert stats.loc["nan", "n_missing"] == 1 and stats.loc["nan", "nobs"] == 19
    assert stats.loc["nan", "error"].startswith("too few rows: 19 (model.min_rows is 22)")
    assert pd.isna(stats.loc["ok1", "error"])
    # every group failing is a failed job (exit 4), with nothing marked complete
    with pytest.raises(distml.JobFailed, match="every group failed"):
        distml.run(spec, output=tmp_path / "runs", run_id="allfail", model__min_rows=1000)
    assert not (tmp_path / "runs" / "fail" / "allfail" / "_SUCCESS").exists()


@SOLVERS
def test_groups_spanning_files_and_two_group_columns(tmp_path, solver):
    import statsmodels.formula.api as smf

    df = _panel(5)
    df["half"] = np.where(df["t"] % 2 == 0, "even", "odd")
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, chunk in enumerate(np.array_split(np.arange(len(df)), 3)):  # groups span files
        df.iloc[chunk].to_parquet(folder / f"part-{i}.parquet", index=False)
    spec = {
        "name": "two",
        "kind": "statsmodels",
        "data": {"source": str(folder)},
        "group_by": ["store", "half"],
        "model": {"formula": "y ~ x1 + C(region)", "groups_per_task": 4, "solver": solver},
    }
    r = distml.run(spec, output=tmp_path / "runs")
    assert r.manifest["execution"]["partitions"] >= 2 and r.manifest["execution"]["tasks"] == 5
    rtol = _rtol(r)
    coef = r.tables["coefficients"]
    for (g, h), gdf in df.groupby(["store", "half"]):
        ref = smf.ols("y ~ x1 + C(region)", gdf).fit()
        c = coef[(coef.store == g) & (coef.half == h)]
        _eq(c.estimate, ref.params, rtol)
        _eq(c.p_value, ref.pvalues, rtol)


@SOLVERS
def test_array_interface_follows_add_constant(tmp_path, solver):
    """``add_constant`` adds no constant to a group whose regressor is already a nonzero
    constant (statsmodels' has_constant='skip'); distml does the same per group."""
    import statsmodels.api as sm

    rng = np.random.default_rng(8)
    df = pd.DataFrame(
        {
            "g": np.repeat(["a", "b", "c"], 30),
            "x1": rng.normal(size=90),
            "x2": rng.normal(size=90),
            "y": rng.normal(size=90),
        }
    )
    df.loc[df.g == "b", "x2"] = 3.0
    df.to_parquet(tmp_path / "d.parquet")
    r = distml.run(
        {
            "name": "ac",
            "kind": "statsmodels",
            "data": {"source": str(tmp_path / "d.parquet")},
            "group_by": ["g"],
            "model": {"endog": "y", "exog": ["x1", "x2"], "cov_type": "HC1", "solver": solver},
        },
        output=tmp_path / "runs",
    )
    rtol = _rtol(r)
    coef = r.tables["coefficients"]
    for g, gdf in df.groupby("g"):
        ref = sm.OLS(gdf["y"], sm.add_constant(gdf[["x1", "x2"]])).fit(cov_type="HC1")
        c = coef[coef.g == g]
        assert list(c.term) == list(ref.params.index)
        _eq(c.estimate, ref.params, rtol)
        _eq(c.std_error, ref.bse, rtol)
    assert list(coef[coef.g == "b"].term) == ["x1", "x2"]
