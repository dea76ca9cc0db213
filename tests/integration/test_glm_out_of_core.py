"""One GLM over partitioned parquet by distributed IRLS (`solver: suffstats`), against
statsmodels GLM fitted on the same data held in memory: every figure to a relative 1e-8."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import distml

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _data(tmp_path, n: int = 6000, files: int = 4) -> tuple[pd.DataFrame, str]:
    rng = np.random.default_rng(21)
    x1, x2 = rng.normal(size=n), rng.uniform(0.5, 3.0, n)
    region = rng.choice(["north", "south", "east"], n)
    eta = 0.2 + 0.5 * x1 - 0.3 * x2 + 0.4 * (region == "south")
    expo = rng.uniform(1.0, 4.0, n)
    df = pd.DataFrame(
        {
            "x1": x1,
            "x2": x2,
            "region": region,
            "w": rng.uniform(0.5, 2.0, n),
            "expo": expo,
            "bin": (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float),
            "cnt": rng.poisson(expo * np.exp(0.3 * eta)).astype(float),
            "pos": rng.gamma(3.0, np.exp(0.2 * eta) / 3.0),
            "y": eta + rng.normal(size=n),
        }
    )
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, rows in enumerate(np.array_split(np.arange(n), files)):
        df.iloc[rows].to_parquet(folder / f"part-{i}.parquet", index=False)
    return df, str(folder)


CASES = [
    ("binomial", None, "bin", {}),
    ("binomial", "probit", "bin", {"weights": "w"}),
    ("poisson", None, "cnt", {"exposure": "expo"}),
    ("gamma", "log", "pos", {}),
    ("gaussian", None, "y", {"weights": "w"}),
]


@pytest.mark.parametrize(
    "family,link,y,extra", CASES, ids=[f"{c[0]}-{c[1] or 'canonical'}" for c in CASES]
)
def test_distributed_irls_equals_statsmodels_in_memory(tmp_path, family, link, y, extra):
    import statsmodels.formula.api as smf

    from distml.jobs.statsmodels.fit import FitConfig, glm_family

    df, path = _data(tmp_path)
    formula = f"{y} ~ x1 + x2 + C(region)"
    model = {"method": "glm", "family": family, "formula": formula, "solver": "suffstats", **extra}
    if link:
        model["link"] = link
    r = distml.run(
        {"name": "ooc-glm", "kind": "statsmodels", "data": {"source": path}, "model": model},
        output=tmp_path / "runs",
    )
    spec = distml.load_spec(
        {"name": "x", "kind": "statsmodels", "data": {"source": path}, "model": model}
    )
    kw = {}
    if "weights" in extra:
        kw["var_weights"] = df["w"]
    if "exposure" in extra:
        kw["exposure"] = df["expo"]
    ref = smf.glm(formula, df, family=glm_family(FitConfig.from_spec(spec)), **kw).fit()
    coef, stats = r.tables["coefficients"], r.tables["model_stats"].iloc[0]
    assert list(coef.term) == list(ref.params.index)
    for ours, theirs in (
        ("estimate", ref.params),
        ("std_error", ref.bse),
        ("statistic", ref.tvalues),
        ("p_value", ref.pvalues),
        ("ci_low", ref.conf_int()[0]),
        ("ci_high", ref.conf_int()[1]),
    ):
        np.testing.assert_allclose(coef[ours], np.asarray(theirs), rtol=1e-8, err_msg=ours)
    for ours, theirs in (
        ("llf", ref.llf),
        ("aic", ref.aic),
        ("bic", ref.bic),
        ("deviance", ref.deviance),
        ("pearson_chi2", ref.pearson_chi2),
        ("scale", ref.scale),
        ("pseudo_r_squared", ref.pseudo_rsquared()),
        ("df_resid", ref.df_resid),
        ("df_model", ref.df_model),
    ):
        assert stats[ours] == pytest.approx(theirs, rel=1e-8), ours
    assert stats["converged"] and stats["engine"] == "suffstats"
    ex = r.manifest["execution"]
    assert ex["partitions"] >= 2 and ex["irls_iterations"] == ref.fit_history["iteration"]
    assert r.manifest["execution"]["path"] == "suffstats"
    assert "Deviance" in (r.run_dir / "summary.txt").read_text()


def test_out_of_core_glm_scope_is_validated_before_the_cluster(tmp_path):
    base = {
        "name": "x",
        "kind": "statsmodels",
        "data": {"source": "builtin:star98"},
        "model": {"method": "glm", "formula": "NABOVE ~ LOWINC", "solver": "suffstats"},
    }
    for model, words in (
        ({"family": "tweedie", "var_power": 1.5}, "model.family 'tweedie'"),
        ({"family": "poisson", "link": "logit"}, "model.link 'logit'"),
        ({"family": "poisson", "cov_type": "HC1"}, "cov_type nonrobust"),
    ):
        spec = {**base, "model": {**base["model"], **model}}
        with pytest.raises(distml.SpecError, match=words):
            distml.load_spec(spec)
