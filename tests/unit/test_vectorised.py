"""The vectorised many-models engine against a plain statsmodels loop on the same groups.

Every method × covariance combination the engine covers is compared group by group: estimates,
standard errors, statistics, p-values, intervals and every model_stats figure, to a relative
1e-10 for least squares and 1e-8 for GLM (ISSUE: statsmodels' own numbers are the reference).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from distml.jobs.statsmodels.batch import Batch, fit_batch
from distml.jobs.statsmodels.engine import fit_groups, scope
from distml.jobs.statsmodels.fit import FitConfig, glm_family
from distml.spec import load_spec

G = 24


def _cfg(**model) -> FitConfig:
    if "endog" not in model:
        model.setdefault("formula", "y ~ x1 + x2 + x3")
    return FitConfig.from_spec(
        load_spec(
            {
                "name": "t",
                "kind": "statsmodels",
                "data": {"source": "builtin:longley"},
                "model": model,
                "group_by": ["YEAR"],
            }
        )
    )


def _close(actual, expected, rtol, what):
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0, err_msg=what)


@pytest.fixture(scope="module")
def groups():
    rng = np.random.default_rng(7)
    sizes = rng.integers(12, 70, G)
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(bounds[-1])
    X = np.column_stack([np.ones(n), rng.normal(size=(n, 3))])
    return {
        "rng": rng,
        "bounds": bounds,
        "X": X,
        "w": rng.uniform(0.3, 3.0, n),
        "clusters": rng.integers(0, 6, n),
        "offset": 0.2 * rng.normal(size=n),
    }


LS_COVS = ["nonrobust", "HC0", "HC1", "HC2", "HC3", "cluster"]


@pytest.mark.parametrize("method", ["ols", "wls"])
@pytest.mark.parametrize("cov_type", LS_COVS)
@pytest.mark.parametrize("use_t", [None, True, False])
def test_least_squares_equal_statsmodels(groups, method, cov_type, use_t):
    X, bounds, rng = groups["X"], groups["bounds"], groups["rng"]
    y = X @ [0.5, 1.0, -1.0, 0.3] + rng.normal(size=len(X)) * (1 + np.abs(X[:, 1]))
    model = {"method": method, "cov_type": cov_type, "use_t": use_t}
    if method == "wls":
        model["weights"] = "w"
    if cov_type == "cluster":
        model["cov_groups"] = "c"
    cfg = _cfg(**model)
    assert scope(cfg) is None
    w = groups["w"] if method == "wls" else None
    cl = groups["clusters"] if cov_type == "cluster" else None
    fit = fit_groups(cfg, X, y, bounds, weights=w, clusters=cl)
    for g in range(G):
        a, b = bounds[g], bounds[g + 1]
        mod = sm.WLS(y[a:b], X[a:b], weights=w[a:b]) if w is not None else sm.OLS(y[a:b], X[a:b])
        kw = {} if cov_type == "nonrobust" else {"cov_type": cov_type}
        if cl is not None:
            kw["cov_kwds"] = {"groups": cl[a:b]}
        if use_t is not None:
            kw["use_t"] = use_t
        r = mod.fit(**kw)
        assert fit.ok[g], fit.reason[g]
        ci = np.asarray(r.conf_int(0.05))
        for what, got, want in [
            ("params", fit.params[g], r.params),
            ("bse", fit.bse[g], r.bse),
            ("statistic", fit.statistic[g], r.tvalues),
            ("p", fit.p_value[g], r.pvalues),
            ("ci_low", fit.ci_low[g], ci[:, 0]),
            ("ci_high", fit.ci_high[g], ci[:, 1]),
            ("r2", fit.stats["r_squared"][g], r.rsquared),
            ("adj_r2", fit.stats["adj_r_squared"][g], r.rsquared_adj),
            ("F", fit.stats["fvalue"][g], r.fvalue),
            ("F p", fit.stats["f_pvalue"][g], r.f_pvalue),
            ("llf", fit.stats["llf"][g], r.llf),
            ("aic", fit.stats["aic"][g], r.aic),
            ("bic", fit.stats["bic"][g], r.bic),
            ("scale", fit.stats["scale"][g], r.scale),
            ("df_model", fit.stats["df_model"][g], r.df_model),
            ("df_resid", fit.stats["df_resid"][g], r.df_resid),
            ("cond", fit.stats["condition_number"][g], r.condition_number),
        ]:
            _close(got, want, 1e-10, f"{method} {cov_type} group {g}: {what}")


def _binary(rng, eta):
    return (rng.uniform(size=len(eta)) < 1 / (1 + np.exp(-eta))).astype(float)


GLM_CASES = [
    ("gaussian", None, lambda rng, e: e + rng.normal(size=len(e))),
    ("gaussian", "log", lambda rng, e: np.exp(0.2 * e) + 0.1 * rng.normal(size=len(e))),
    ("binomial", None, _binary),
    ("binomial", "probit", _binary),
    ("binomial", "cloglog", _binary),
    ("poisson", None, lambda rng, e: rng.poisson(np.exp(0.3 * e)).astype(float)),
    ("poisson", "identity", lambda rng, e: rng.poisson(3 + np.abs(e)).astype(float) + 1),
    ("gamma", None, lambda rng, e: rng.gamma(2.0, 1 / (2.0 * (1 / np.exp(0.2 * e))))),
    ("gamma", "log", lambda rng, e: rng.gamma(2.0, np.exp(0.2 * e) / 2)),
]


@pytest.mark.parametrize(
    "family,link,draw", GLM_CASES, ids=[f"{f}-{lk or 'canonical'}" for f, lk, _ in GLM_CASES]
)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("offset", [False, True])
def test_glm_equal_statsmodels(groups, family, link, draw, weighted, offset):
    X, bounds, rng = groups["X"], groups["bounds"], groups["rng"]
    y = draw(rng, X @ [0.25, 0.5, -0.5, 0.15])
    model = {"method": "glm", "family": family, "link": link}
    cfg = _cfg(**model)
    w = groups["w"] if weighted else None
    off = groups["offset"] if offset else None
    fit = fit_groups(cfg, X, y, bounds, weights=w, offset=off)
    fitted = 0
    for g in range(G):
        a, b = bounds[g], bounds[g + 1]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = sm.GLM(
                y[a:b],
                X[a:b],
                family=glm_family(cfg),
                var_weights=None if w is None else w[a:b],
                offset=None if off is None else off[a:b],
            ).fit()
        if not fit.ok[g]:  # declined: statsmodels did not converge cleanly either
            assert fit.reason[g] in ("IRLS did not converge", "perfect separation")
            assert not r.converged or any("separation" in str(c.message) for c in caught)
            continue
        fitted += 1
        for what, got, want in [
            ("params", fit.params[g], r.params),
            ("bse", fit.bse[g], r.bse),
            ("statistic", fit.statistic[g], r.tvalues),
            ("p", fit.p_value[g], r.pvalues),
            ("ci_low", fit.ci_low[g], np.asarray(r.conf_int())[:, 0]),
            ("llf", fit.stats["llf"][g], r.llf),
            ("aic", fit.stats["aic"][g], r.aic),
            ("bic", fit.stats["bic"][g], r.bic),
            ("deviance", fit.stats["deviance"][g], r.deviance),
            ("pearson", fit.stats["pearson_chi2"][g], r.pearson_chi2),
            ("scale", fit.stats["scale"][g], r.scale),
            ("pseudo_r2", fit.stats["pseudo_r_squared"][g], r.pseudo_rsquared()),
            ("df_resid", fit.stats["df_resid"][g], r.df_resid),
        ]:
            _close(got, want, 1e-8, f"glm {family}/{link} group {g}: {what}")
        assert fit.stats["iterations"][g] == r.fit_history["iteration"]
    assert fitted >= G - 2


def test_scope_names_what_statsmodels_keeps():
    assert (
        scope(_cfg(method="ols", cov_type="HAC", maxlags=2))
        == "cov_type HAC is computed by statsmodels"
    )
    assert "logit" in scope(_cfg(method="logit"))
    assert scope(_cfg(method="glm", family="tweedie", var_power=1.5)).startswith("GLM family")
    assert scope(_cfg(solver="statsmodels")) == "model.solver is statsmodels"
    assert "GLM cov_type" in scope(_cfg(method="glm", family="poisson", cov_type="HC0"))


# ------------------------------------------------------------------ through fit_batch


def _batch(rng, n_groups=30, size=40, missing=True):
    n = n_groups * size
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    region = np.asarray(rng.choice(["n", "s", "e"], n), dtype=object)
    y = 1 + 2 * x1 - x2 + (region == "s") * 0.5 + rng.normal(size=n)
    w = rng.uniform(0.5, 2, n)
    if missing:
        y[rng.choice(n, 25, replace=False)] = np.nan
        x2[rng.choice(n, 25, replace=False)] = np.nan
    cols = {
        "y": y,
        "x1": x1,
        "x2": x2,
        "region": region,
        "w": w,
        "cnt": rng.poisson(np.exp(0.3 * x1)).astype(float),
        "c": rng.integers(0, 4, n),
    }
    return Batch(cols, np.arange(0, n + 1, size, dtype=np.int64), np.arange(n_groups))


@pytest.mark.parametrize(
    "model",
    [
        {"formula": "y ~ x1 + x2 + C(region)", "cov_type": "HC1"},
        {
            "formula": "y ~ x1 + x2",
            "method": "wls",
            "weights": "w",
            "cov_type": "cluster",
            "cov_groups": "c",
        },
        {"formula": "cnt ~ x1 + x2", "method": "glm", "family": "poisson", "weights": "w"},
        {"endog": "y", "exog": ["x1", "x2"], "method": "ols"},
    ],
    ids=["formula-hc1", "wls-cluster", "glm-poisson", "arrays"],
)
def test_fit_batch_engine_equals_statsmodels_path(
    model,
):
    """The same batch fitted by the engine and by the statsmodels path (solver: statsmodels):
    the same groups, terms and figures, missing rows dropped the same way."""
    rng = np.random.default_rng(3)
    batch = _batch(rng)
    fast = fit_batch(_cfg(**model), batch)
    slow = fit_batch(_cfg(**model, solver="statsmodels"), batch)
    assert fast["n_vectorised"] == 30 and slow["n_vectorised"] == 0
    assert list(fast["coef"]["term"]) == list(slow["coef"]["term"])
    np.testing.assert_array_equal(fast["coef"]["gid"], slow["coef"]["gid"])
    rtol = 1e-8 if model.get("method") == "glm" else 1e-10
    for k in ("estimate", "std_error", "statistic", "p_value", "ci_low", "ci_high"):
        _close(fast["coef"][k], slow["coef"][k], rtol, k)
    fs, ss = pd.DataFrame(fast["stats"]), pd.DataFrame(slow["stats"])
    assert (fs["engine"] == "vectorised").all() and (ss["engine"] == "statsmodels").all()
    for c in ss.columns:
        if c in ("engine", "warnings", "error"):
            continue
        if ss[c].dtype == bool:
            assert fs[c].tolist() == ss[c].tolist(), c
        else:
            _close(fs[c], ss[c], 1e-8 if c == "condition_number" else rtol, c)
    assert fs["warnings"].isna().all() and ss["warnings"].isna().all()


def test_declined_groups_fall_back_to_statsmodels():
    """A rank-deficient group and a too-small group go to statsmodels and fail there exactly as
    before; the others are fitted by the engine."""
    rng = np.random.default_rng(4)
    batch = _batch(rng, missing=False)
    batch.cols["x2"][40:80] = 3.0  # group 1: x2 constant next to the intercept
    batch.cols["y"][80:117] = np.nan  # group 2: 3 rows left for 3 parameters
    out = fit_batch(_cfg(formula="y ~ x1 + x2"), batch)
    stats = pd.DataFrame(out["stats"])
    assert stats.loc[1, "engine"] == "statsmodels" and "singular design" in stats.loc[1, "error"]
    assert stats.loc[2, "engine"] == "statsmodels" and "too few rows" in stats.loc[2, "error"]
    assert (stats.drop(index=[1, 2])["engine"] == "vectorised").all()
    assert out["declined"] == {
        "rank-deficient design": 1,
        "too few rows: 3 rows for 3 parameters": 1,
    }


def test_domain_warning_recorded_as_statsmodels_does():
    rng = np.random.default_rng(5)
    batch = _batch(rng, missing=False)
    model = {"formula": "cnt ~ x1", "method": "glm", "family": "poisson", "link": "identity"}
    batch.cols["cnt"] = batch.cols["cnt"] + 1
    fast = fit_batch(_cfg(**model), batch)
    slow = fit_batch(_cfg(**model, solver="statsmodels"), batch)
    texts = {s["warnings"] for s in fast["stats"]} | {s["warnings"] for s in slow["stats"]}
    assert len(texts) == 1 and "DomainWarning" in texts.pop()
