"""The statsmodels kind's spec: methods, families and links, covariance types, and the rules
that tie them to the data (checked before any cluster work)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from distml.jobs.statsmodels.fit import DISCRETE, REGRESSION, TIME_SERIES  # noqa: F401
from distml.jobs.statsmodels.formula import (  # noqa: F401
    NUMPY_FUNCS,
    FormulaInfo,
    analyze_formula,
    check_engine,
    formula_namespace,
)
from distml.spec.base import JobSpec, StrictModel

ROBUST_COV = ("HC0", "HC1", "HC2", "HC3", "cluster", "HAC")
TS_COV = ("opg", "oim", "approx", "robust", "robust_oim", "robust_approx", "none")
#: GLM family → links distml accepts (the ones statsmodels lists as safe for the family).
FAMILY_LINKS: dict[str, tuple[str, ...]] = {
    "gaussian": ("identity", "log", "inverse_power"),
    "binomial": ("logit", "probit", "cauchy", "log", "logc", "cloglog", "loglog", "identity"),
    "poisson": ("log", "identity", "sqrt"),
    "gamma": ("inverse_power", "identity", "log"),
    "negativebinomial": ("log", "cloglog", "identity"),
    "tweedie": ("log",),
    "inverse_gaussian": ("inverse_squared", "inverse_power", "identity", "log"),
}
Method = Literal[
    "ols",
    "wls",
    "glm",
    "logit",
    "probit",
    "poisson",
    "negativebinomial",
    "quantreg",
    "arima",
    "sarimax",
]
CovType = Literal[
    "nonrobust",
    "HC0",
    "HC1",
    "HC2",
    "HC3",
    "cluster",
    "HAC",
    "opg",
    "oim",
    "approx",
    "robust",
    "robust_oim",
    "robust_approx",
    "none",
]


class StatsmodelsModel(StrictModel):
    """The ``model`` section of a statsmodels job."""

    method: Method = Field(
        "ols",
        description="Estimator: ols, wls, glm, logit, probit, poisson, "
        "negativebinomial, quantreg, arima, sarimax.",
    )
    formula: str | None = Field(
        None,
        min_length=3,
        description="patsy formula, e.g. 'y ~ x1 + C(region)' (regression methods).",
    )
    endog: str | None = Field(
        None, description="Array interface: the response column (default: data.target)."
    )
    exog: list[str] | None = Field(
        None, description="Array interface: regressor columns (default: data.features)."
    )
    add_constant: bool = Field(
        True, description="Array interface: prepend a 'const' column (statsmodels add_constant)."
    )
    family: (
        Literal[
            "gaussian",
            "binomial",
            "poisson",
            "gamma",
            "negativebinomial",
            "tweedie",
            "inverse_gaussian",
        ]
        | None
    ) = Field(None, description="glm family (default gaussian).")
    link: (
        Literal[
            "identity",
            "log",
            "logit",
            "probit",
            "cauchy",
            "cloglog",
            "loglog",
            "logc",
            "inverse_power",
            "inverse_squared",
            "sqrt",
        ]
        | None
    ) = Field(None, description="glm link (default: the family's canonical link).")
    var_power: float | None = Field(None, ge=1, le=2, description="tweedie variance power.")
    family_alpha: float | None = Field(
        None, gt=0, description="negativebinomial glm family dispersion (statsmodels' alpha)."
    )
    weights: str | None = Field(None, description="Weights column: wls weights, glm var_weights.")
    offset: str | None = Field(None, description="Offset column (glm, poisson, negativebinomial).")
    exposure: str | None = Field(
        None,
        description="Exposure column (glm, poisson, negativebinomial); log(exposure) is offset.",
    )
    q: float = Field(0.5, gt=0, lt=1, description="quantreg quantile.")
    order: tuple[int, int, int] = Field((1, 0, 0), description="arima/sarimax (p, d, q).")
    seasonal_order: tuple[int, int, int, int] | None = Field(
        None, description="arima/sarimax seasonal (P, D, Q, s)."
    )
    trend: Literal["n", "c", "t", "ct"] | None = Field(None, description="arima/sarimax trend.")
    time: str | None = Field(
        None, description="Time column the rows are sorted by (time series; otherwise row order)."
    )
    forecast_steps: int = Field(
        0,
        ge=0,
        le=100_000,
        description="Time series: steps to forecast into tables/forecast.parquet.",
    )
    cov_type: CovType = Field(
        "nonrobust",
        description="Covariance: nonrobust, HC0-HC3, cluster "
        "(cov_groups), HAC (maxlags); time series also opg, oim, approx, "
        "robust.",
    )
    cov_groups: str | None = Field(None, description="Cluster column for cov_type cluster.")
    maxlags: int | None = Field(None, ge=0, description="HAC lags (cov_type HAC).")
    use_t: bool | None = Field(
        None, description="t instead of normal for inference (default: statsmodels' choice)."
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="Confidence intervals are 1 - alpha.")
    missing: Literal["drop", "raise"] = Field(
        "drop",
        description="Rows with a missing value: drop them (counted in model_stats) or "
        "fail (the group, or the job for a single model).",
    )
    maxiter: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Iteration limit of iterative fits (default: statsmodels').",
    )
    min_rows: int | None = Field(
        None, ge=1, description="Groups with fewer rows fail with an error instead of being fitted."
    )
    groups_per_task: int | None = Field(
        None,
        ge=1,
        description="Groups fitted per Ray task "
        "(default: chosen from group count and cluster CPUs).",
    )
    trials: str | None = Field(
        None,
        description="glm binomial with a proportion response: "
        "the column of trials per row (the response then is successes "
        "/ trials, as R's glm weights).",
    )
    solver: Literal["auto", "statsmodels", "suffstats"] = Field(
        "auto",
        description="auto: the vectorised engine for many-models OLS/WLS/GLM and "
        "the scaled QR for OLS/WLS; statsmodels: statsmodels' own solvers "
        "everywhere; suffstats (ols/wls/glm without group_by): merged "
        "per-partition R factors (distributed IRLS for glm) for data bigger "
        "than a worker, picked by auto above 1 GiB for ols/wls.",
    )

    @field_validator("formula")
    @classmethod
    def _formula_syntax(cls, v: str | None) -> str | None:
        if v is not None:
            analyze_formula(v)  # raises ValueError with the parse error
        return v


class Spec(JobSpec):
    """A statsmodels job: one model, or one per group with group_by."""

    kind: Literal["statsmodels"]
    group_by: list[str] = Field(
        default_factory=list, description="Fit one model per group of these columns."
    )
    model: StatsmodelsModel = Field(default_factory=StatsmodelsModel)

    @field_validator("group_by")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dup = sorted({c for c in v if v.count(c) > 1})
        if dup:
            raise ValueError(f"must list each column once; got duplicates {dup}")
        return v

    @model_validator(mode="after")
    def _checks(self) -> "Spec":
        m, d = self.model, self.data
        if "split" not in d.model_fields_set:
            d.split = "none"  # inference uses every row unless a split is asked for
        ts = m.method in TIME_SERIES
        if m.formula is not None:
            if ts:
                raise ValueError(
                    f"model.formula is not supported for method {m.method}; name "
                    "the series with model.endog (and regressors with model.exog)"
                )
            for name, value in (
                ("model.endog", m.endog),
                ("model.exog", m.exog),
                ("data.target", d.target),
                ("data.features", d.features),
            ):
                if value is not None:
                    raise ValueError(
                        f"model.formula and {name} conflict: the formula names the "
                        f"response and regressors; got {name}={value!r}; drop one"
                    )
        else:
            if m.endog and d.target and m.endog != d.target:
                raise ValueError(
                    f"model.endog and data.target conflict; got {m.endog!r} and "
                    f"{d.target!r}; set one"
                )
            if not (m.endog or d.target):
                raise ValueError(
                    "model.formula or model.endog is required (e.g. formula: "
                    "'y ~ x1 + x2', or endog: y with exog: [x1, x2])"
                )
            if m.exog is not None and d.features is not None and m.exog != d.features:
                raise ValueError("model.exog and data.features conflict; set one")
            if not ts and not (m.exog or d.features or m.add_constant):
                raise ValueError(
                    f"model.exog is required for method {m.method} with the array "
                    "interface (or add_constant: true for an intercept-only model)"
                )
        _check_method_fields(m)
        _check_binomial_counts(m, d)
        if d.test_source is not None:
            raise ValueError(
                "data.test_source is not used by kind statsmodels; for "
                "out-of-sample figures set data.split (e.g. {valid: 0.2})"
            )
        if ts and m.forecast_steps and (m.exog or d.features):
            raise ValueError(
                "model.forecast_steps with exogenous regressors (model.exog) needs "
                "their future values, which a spec cannot carry yet; drop "
                "model.exog or model.forecast_steps"
            )
        if ts and d.split != "none":
            raise ValueError(
                f"data.split is not supported for method {m.method}; use "
                "model.forecast_steps for out-of-sample figures"
            )
        if m.solver == "suffstats":
            if m.method not in ("ols", "wls", "glm") or self.group_by:
                raise ValueError(
                    "model.solver suffstats needs method ols, wls or glm and no "
                    f"group_by; got method {m.method!r}, group_by {self.group_by}"
                )
            if m.cov_type == "HAC" or d.split != "none":
                raise ValueError(
                    "model.solver suffstats supports cov_type nonrobust, HC0-HC3 "
                    "and cluster, and no data.split"
                )
            if m.method == "glm":
                _check_out_of_core_glm(m)
            if m.formula is not None and not analyze_formula(m.formula).rowwise:
                raise ValueError(
                    "model.solver suffstats needs a row-wise formula (no center(), "
                    "standardize(), splines or explicit contrasts); got "
                    f"{m.formula!r}"
                )
        for col in self.group_by:
            if col in (m.endog, d.target, m.weights, m.offset, m.exposure, m.time):
                raise ValueError(
                    f"group_by column {col!r} is also a model column; group "
                    "columns are constant within each group"
                )
        return self


def _check_binomial_counts(m: StatsmodelsModel, d) -> None:
    """A counts response (successes + failures, or a proportion with model.trials) is a
    binomial GLM's, fitted in memory, without a split."""
    counts = m.formula is not None and analyze_formula(m.formula).counts
    if not (counts or m.trials):
        return
    what = (
        f"a two-column response (successes + failures) in model.formula {m.formula!r}"
        if counts
        else f"model.trials ({m.trials!r})"
    )
    if m.method != "glm" or (m.family or "gaussian") != "binomial":
        raise ValueError(
            f"{what} needs method glm with family binomial; got method "
            f"{m.method!r}, family {m.family!r}"
        )
    if counts and m.trials:
        raise ValueError(
            "model.trials and a successes + failures response conflict: the two "
            "columns already give the trials; drop model.trials"
        )
    if m.trials and m.formula is None:
        raise ValueError(
            "model.trials needs model.formula (e.g. 'share ~ x1 + x2' with the "
            "proportion on the left)"
        )
    if m.trials and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", m.formula.split("~")[0].strip()):
        raise ValueError(
            "model.trials needs a plain column as the response of model.formula "
            f"(the proportion of successes); got {m.formula!r}"
        )
    if d.split != "none":
        raise ValueError(f"{what}: data.split is not supported with a counts response")
    if m.solver == "suffstats":
        raise ValueError(f"{what}: model.solver suffstats does not fit counts responses")


def _check_out_of_core_glm(m: StatsmodelsModel) -> None:
    """What distributed IRLS covers: the vectorised engine's families and links, nonrobust."""
    from distml.jobs.statsmodels.engine import GLM_LINKS

    family = m.family or "gaussian"
    if family not in GLM_LINKS:
        raise ValueError(
            f"model.solver suffstats fits glm families {', '.join(GLM_LINKS)}; "
            f"got model.family {family!r}"
        )
    if m.link is not None and m.link not in GLM_LINKS[family]:
        raise ValueError(
            f"model.solver suffstats fits family {family} with links "
            f"{', '.join(GLM_LINKS[family])}; got model.link {m.link!r}"
        )
    if m.cov_type != "nonrobust":
        raise ValueError(
            f"model.solver suffstats fits glm with cov_type nonrobust; got {m.cov_type!r}"
        )


def _check_method_fields(m: StatsmodelsModel) -> None:
    """Fields that only some methods use must not be set for the others."""
    only = {
        "family": ("glm",),
        "link": ("glm",),
        "var_power": ("glm",),
        "family_alpha": ("glm",),
        "weights": ("wls", "glm"),
        "offset": ("glm", "poisson", "negativebinomial"),
        "exposure": ("glm", "poisson", "negativebinomial"),
        "seasonal_order": TIME_SERIES,
        "trend": TIME_SERIES,
        "trials": ("glm",),
    }
    for name, methods in only.items():
        if getattr(m, name) is not None and m.method not in methods:
            raise ValueError(
                f"model.{name} applies to method {' / '.join(methods)} only; got "
                f"method {m.method!r}; drop model.{name}"
            )
    for name, default in (("q", 0.5), ("order", (1, 0, 0)), ("forecast_steps", 0)):
        if name in m.model_fields_set and getattr(m, name) != default:
            methods = ("quantreg",) if name == "q" else TIME_SERIES
            if m.method not in methods:
                raise ValueError(
                    f"model.{name} applies to method {' / '.join(methods)} only; "
                    f"got method {m.method!r}"
                )
    if m.method == "wls" and not m.weights:
        raise ValueError("model.weights is required for method wls; name the weights column")
    family = m.family or "gaussian"
    if m.link is not None and m.link not in FAMILY_LINKS[family]:
        raise ValueError(
            f"model.link {m.link!r} is not valid for family {family}; use one of "
            f"{', '.join(FAMILY_LINKS[family])}"
        )
    if m.var_power is not None and family != "tweedie":
        raise ValueError("model.var_power applies to family tweedie only")
    if m.family_alpha is not None and family != "negativebinomial":
        raise ValueError("model.family_alpha applies to family negativebinomial only")
    ts = m.method in TIME_SERIES
    if ts and m.cov_type not in ("nonrobust",) + TS_COV:
        raise ValueError(
            f"model.cov_type {m.cov_type!r} is not available for {m.method}; use "
            f"nonrobust (statsmodels' default) or one of {', '.join(TS_COV)}"
        )
    if not ts and m.cov_type in TS_COV:
        raise ValueError(
            f"model.cov_type {m.cov_type!r} applies to arima/sarimax only; use "
            f"nonrobust or one of {', '.join(ROBUST_COV)}"
        )
    if m.method == "quantreg" and m.cov_type != "nonrobust":
        raise ValueError(
            "model.cov_type must be nonrobust for quantreg (statsmodels' quantreg "
            "uses its own kernel-based sandwich); got " + repr(m.cov_type)
        )
    if (m.cov_type == "cluster") != bool(m.cov_groups):
        raise ValueError(
            "model.cov_type cluster and model.cov_groups go together; got cov_type "
            f"{m.cov_type!r} and cov_groups {m.cov_groups!r}"
        )
    if (m.cov_type == "HAC") != (m.maxlags is not None):
        raise ValueError(
            "model.cov_type HAC and model.maxlags go together; got cov_type "
            f"{m.cov_type!r} and maxlags {m.maxlags!r}"
        )
    if m.seasonal_order is not None and m.seasonal_order[3] < 2 and any(m.seasonal_order[:3]):
        raise ValueError(
            f"model.seasonal_order period s must be >= 2; got {list(m.seasonal_order)}"
        )
