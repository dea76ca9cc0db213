"""Fitting one group with statsmodels: the methods, their calls, and what a fit reports
(inference tables, statistics, convergence). Used by the batch fits and the single model."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from distml.jobs.statsmodels.formula import (
    FormulaInfo,
    analyze_formula,
    counts_formula,
    formula_namespace,
)

#: statsmodels methods by family (the kind's spec checks use them too)

REGRESSION = ("ols", "wls", "glm", "logit", "probit", "poisson", "negativebinomial", "quantreg")
TIME_SERIES = ("arima", "sarimax")
DISCRETE = ("logit", "probit", "poisson", "negativebinomial")

#: Rough cost of one fit with its inference, in ms (this machine), used to size batches.
COST_MS = {
    "ols": 0.35,
    "wls": 0.4,
    "quantreg": 3.0,
    "glm": 3.0,
    "logit": 3.0,
    "probit": 3.0,
    "poisson": 3.0,
    "negativebinomial": 15.0,
    "arima": 40.0,
    "sarimax": 120.0,
}
TASK_MIN_MS = 200.0  # a task should carry at least this much fitting (overhead ~2 ms + setup)
MAX_TASKS_PER_CPU = 4  # beyond this, more tasks only add overhead (tasks are cost-balanced)
LINK_CLASSES = {
    "identity": "Identity",
    "log": "Log",
    "logit": "Logit",
    "probit": "Probit",
    "cauchy": "Cauchy",
    "cloglog": "CLogLog",
    "loglog": "LogLog",
    "logc": "LogC",
    "inverse_power": "InversePower",
    "inverse_squared": "InverseSquared",
    "sqrt": "Sqrt",
}
FAMILY_CLASSES = {
    "gaussian": "Gaussian",
    "binomial": "Binomial",
    "poisson": "Poisson",
    "gamma": "Gamma",
    "negativebinomial": "NegativeBinomial",
    "tweedie": "Tweedie",
    "inverse_gaussian": "InverseGaussian",
}
BASE_STATS = ["nobs", "r_squared", "adj_r_squared", "aic", "bic", "llf", "converged", "error"]
EXTRA_STATS = {
    "ols": ["df_model", "df_resid", "fvalue", "f_pvalue"],
    "wls": ["df_model", "df_resid", "fvalue", "f_pvalue"],
    "glm": ["df_model", "df_resid", "deviance", "pearson_chi2", "scale", "pseudo_r_squared"],
    "quantreg": ["df_model", "df_resid", "pseudo_r_squared"],
    "arima": ["hqic", "ljung_box_stat", "ljung_box_pvalue", "ljung_box_lags"],
    "sarimax": ["hqic", "ljung_box_stat", "ljung_box_pvalue", "ljung_box_lags"],
    **{
        m: ["df_model", "df_resid", "pseudo_r_squared", "llnull", "llr_pvalue", "max_abs_score"]
        for m in DISCRETE
    },
}
TAIL_STATS = ["n_rows", "n_missing", "warnings", "engine", "condition_number"]
REGRESSION_DF = ("ols", "wls", "glm", "quantreg") + DISCRETE
COEF_COLUMNS = ["term", "estimate", "std_error", "statistic", "p_value", "ci_low", "ci_high"]
FORECAST_COLUMNS = ["step", "time", "mean", "std_error", "ci_low", "ci_high"]


@dataclass(frozen=True)
class FitConfig:
    """Everything a worker needs to fit one group (a light, picklable copy of the spec)."""

    method: str
    formula: str | None
    finfo: FormulaInfo | None
    endog: str | None
    exog: tuple[str, ...]
    add_constant: bool
    group_by: tuple[str, ...]
    family: str | None = None
    link: str | None = None
    var_power: float | None = None
    family_alpha: float | None = None
    weights: str | None = None
    offset: str | None = None
    exposure: str | None = None
    cov_groups: str | None = None
    time: str | None = None
    q: float = 0.5
    order: tuple = (1, 0, 0)
    seasonal_order: tuple | None = None
    trend: str | None = None
    forecast_steps: int = 0
    cov_type: str = "nonrobust"
    maxlags: int | None = None
    use_t: bool | None = None
    alpha: float = 0.05
    missing: str = "drop"
    maxiter: int | None = None
    min_rows: int | None = None
    split: Any = None  # SplitSpec or None
    groups_per_task: int | None = None
    solver: str = "auto"  # "statsmodels" forces the reference path for every group

    @classmethod
    def from_spec(cls, spec) -> "FitConfig":
        m, d = spec.model, spec.data
        formula = counts_formula(m)
        return cls(
            method=m.method,
            formula=formula,
            finfo=analyze_formula(formula) if formula else None,
            endog=m.endog or d.target if m.formula is None else None,
            exog=tuple(m.exog or d.features or []) if m.formula is None else (),
            add_constant=m.add_constant,
            group_by=tuple(spec.group_by),
            family=m.family,
            link=m.link,
            var_power=m.var_power,
            family_alpha=m.family_alpha,
            weights=m.weights,
            offset=m.offset,
            exposure=m.exposure,
            cov_groups=m.cov_groups,
            time=m.time,
            q=m.q,
            order=tuple(m.order),
            seasonal_order=tuple(m.seasonal_order) if m.seasonal_order else None,
            trend=m.trend,
            forecast_steps=m.forecast_steps,
            cov_type=m.cov_type,
            maxlags=m.maxlags,
            use_t=m.use_t,
            alpha=m.alpha,
            missing=m.missing,
            maxiter=m.maxiter,
            min_rows=m.min_rows,
            split=d.split_spec,
            groups_per_task=m.groups_per_task,
            solver=m.solver,
        )

    @property
    def ts(self) -> bool:
        return self.method in TIME_SERIES

    @property
    def classification(self) -> bool:
        return self.method in ("logit", "probit") or (
            self.method == "glm" and self.family == "binomial"
        )

    @property
    def extras(self) -> list[str]:
        """Columns passed to the model beside endog/exog."""
        return [c for c in (self.weights, self.offset, self.exposure, self.cov_groups) if c]

    def model_columns(self) -> list[str]:
        """Every column a fit reads (group columns excluded unless the model uses them)."""
        cols = list(self.finfo.columns) if self.finfo else [self.endog, *self.exog]
        cols += self.extras + ([self.time] if self.time else [])
        return list(dict.fromkeys(cols))

    def stat_columns(self) -> list[str]:
        cols = BASE_STATS + EXTRA_STATS[self.method] + TAIL_STATS
        if self.split is not None:
            metrics = (
                ["accuracy", "logloss", "roc_auc"] if self.classification else ["rmse", "mae", "r2"]
            )
            for s in ("valid", "test"):
                if getattr(self.split, s) > 0:
                    cols += [f"{s}_n"] + [f"{s}_{k}" for k in metrics]
        return cols


# ------------------------------------------------------------------------ statsmodels calls


def formula_env() -> dict:
    """Where formulas are evaluated: numpy, the allowed functions, no Python builtins."""
    return formula_namespace()


def model_class(method: str):
    if method == "arima":
        from statsmodels.tsa.arima.model import ARIMA

        return ARIMA
    if method == "sarimax":
        from statsmodels.tsa.statespace.sarimax import SARIMAX

        return SARIMAX
    import statsmodels.api as sm

    return {
        "ols": sm.OLS,
        "wls": sm.WLS,
        "glm": sm.GLM,
        "logit": sm.Logit,
        "probit": sm.Probit,
        "poisson": sm.Poisson,
        "negativebinomial": sm.NegativeBinomial,
        "quantreg": sm.QuantReg,
    }[method]


def glm_family(cfg: FitConfig):
    import statsmodels.api as sm

    kw: dict[str, Any] = {}
    if cfg.link:
        kw["link"] = getattr(sm.families.links, LINK_CLASSES[cfg.link])()
    if cfg.var_power is not None:
        kw["var_power"] = cfg.var_power
    if cfg.family_alpha is not None:
        kw["alpha"] = cfg.family_alpha
    return getattr(sm.families, FAMILY_CLASSES[cfg.family or "gaussian"])(**kw)


def model_kwargs(cfg: FitConfig, extra: dict[str, np.ndarray]) -> dict[str, Any]:
    """Keyword arguments of the statsmodels model constructor (besides endog/exog)."""
    kw: dict[str, Any] = {}
    if cfg.method == "wls":
        kw["weights"] = extra[cfg.weights]
    if cfg.method == "glm":
        kw["family"] = glm_family(cfg)
        if cfg.weights:
            kw["var_weights"] = extra[cfg.weights]
    if cfg.offset:
        kw["offset"] = extra[cfg.offset]
    if cfg.exposure:
        kw["exposure"] = extra[cfg.exposure]
    if cfg.ts:
        kw["order"] = cfg.order
        if cfg.seasonal_order is not None:
            kw["seasonal_order"] = cfg.seasonal_order
        if cfg.trend is not None:
            kw["trend"] = cfg.trend
    return kw


def fit_kwargs(cfg: FitConfig, extra: dict[str, np.ndarray]) -> dict[str, Any]:
    """Keyword arguments of ``model.fit`` — only what differs from statsmodels' defaults."""
    m = cfg.method
    kw: dict[str, Any] = {}
    if m == "quantreg":
        kw["q"] = cfg.q
        if cfg.maxiter:
            kw["max_iter"] = cfg.maxiter
        return kw
    if cfg.ts:
        if cfg.cov_type != "nonrobust":
            kw["cov_type"] = cfg.cov_type
        if m == "sarimax":
            kw["disp"] = False
            if cfg.maxiter:
                kw["maxiter"] = cfg.maxiter
        elif cfg.maxiter:
            kw["method_kwargs"] = {"maxiter": cfg.maxiter}
        return kw
    if cfg.cov_type != "nonrobust":
        kw["cov_type"] = cfg.cov_type
        if cfg.cov_type == "cluster":
            kw["cov_kwds"] = {"groups": extra[cfg.cov_groups]}
        elif cfg.cov_type == "HAC":
            kw["cov_kwds"] = {"maxlags": cfg.maxlags}
    if cfg.use_t is not None:
        kw["use_t"] = cfg.use_t
    if m in DISCRETE:
        kw["disp"] = 0
        if cfg.solver != "statsmodels":
            # Newton with the analytic Hessian converges to the optimum (score ~1e-12) where
            # statsmodels' default for negativebinomial (bfgs, 35 iterations) stops short
            kw["method"] = "newton"
            kw["maxiter"] = MLE_MAXITER
    if cfg.maxiter and m not in ("ols", "wls"):
        kw["maxiter"] = cfg.maxiter
    return kw


MLE_MAXITER = 100
# A maximum-likelihood fit counts as converged only when its score (the gradient of the
# log-likelihood) is this small per observation, whatever the optimizer's own stopping rule said.
SCORE_TOL = 1e-8


def _converged(res, cfg: FitConfig) -> bool:
    if cfg.method in ("ols", "wls", "quantreg"):
        return True
    if cfg.method == "glm":
        return bool(getattr(res, "converged", True))
    retvals = getattr(res, "mle_retvals", None) or {}
    ok = bool(retvals.get("converged", True))
    if cfg.method in DISCRETE and cfg.solver != "statsmodels":
        ok &= _max_abs_score(res) <= SCORE_TOL * max(1.0, float(res.nobs))
    return ok


def _max_abs_score(res) -> float:
    """The largest |∂ llf / ∂ θ| at the estimates: zero at the optimum."""
    try:
        return float(np.max(np.abs(res.model.score(np.asarray(res.params)))))
    except Exception:  # a figure for the table, never a reason for the group to fail
        return float("nan")


def _rank(res, cfg: FitConfig) -> int | None:
    rank = getattr(res.model, "rank", None)
    if rank is None and cfg.method in ("glm",) + DISCRETE:
        rank = int(round(res.df_model)) + 1
    return None if rank is None else int(rank)


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _stats(res, cfg: FitConfig) -> dict[str, Any]:
    """model_stats figures read off a statsmodels results object."""
    m = cfg.method
    out: dict[str, Any] = {
        "nobs": _f(res.nobs),
        "llf": _f(res.llf),
        "aic": _f(res.aic),
        "bic": _f(res.bic),
    }
    if m in REGRESSION_DF:
        out["condition_number"] = _condition_number(res)
    if m in ("ols", "wls"):
        out.update(
            r_squared=_f(res.rsquared),
            adj_r_squared=_f(res.rsquared_adj),
            fvalue=_f(res.fvalue),
            f_pvalue=_f(res.f_pvalue),
        )
    if m in REGRESSION_DF:
        out.update(df_model=_f(res.df_model), df_resid=_f(res.df_resid))
    if m == "glm":
        out.update(
            deviance=_f(res.deviance),
            pearson_chi2=_f(res.pearson_chi2),
            scale=_f(res.scale),
            pseudo_r_squared=_f(res.pseudo_rsquared()),
        )
    elif m in DISCRETE:
        out.update(
            pseudo_r_squared=_f(res.prsquared),
            llnull=_f(res.llnull),
            llr_pvalue=_f(res.llr_pvalue),
            max_abs_score=_max_abs_score(res),
        )
    elif m == "quantreg":
        out.update(pseudo_r_squared=_f(res.prsquared))
    elif cfg.ts:
        lags = max(1, min(10, int(res.nobs) // 5))
        lb = np.asarray(res.test_serial_correlation("ljungbox", lags=lags))
        out.update(
            hqic=_f(res.hqic),
            ljung_box_stat=_f(lb[0, 0, -1]),
            ljung_box_pvalue=_f(lb[0, 1, -1]),
            ljung_box_lags=lags,
        )
    return out


def _condition_number(res) -> float:
    """σ_max/σ_min of the design as the fit weighs it: statsmodels' ``condition_number`` of
    the whitened design for least squares; X·√W at the solution for GLM (W the IRLS weights);
    the plain design for the other methods. Never raises (NaN when it cannot be computed)."""
    from statsmodels.genmod.generalized_linear_model import GLM

    try:
        if isinstance(res.model, GLM):
            w = res.model.family.weights(res.mu) * res.model.var_weights
            X = np.asarray(res.model.exog, dtype=float) * np.sqrt(w)[:, None]
        else:
            X = np.asarray(getattr(res.model, "wexog", res.model.exog), dtype=float)
        sv = np.linalg.svd(X, compute_uv=False)
    except Exception:  # a figure for the table, never a reason for the group to fail
        return float("nan")
    return float(sv[0] / sv[-1]) if len(sv) and sv[-1] > 0 else float("inf")


def _coef(res, cfg: FitConfig, names: list[str] | None) -> dict[str, np.ndarray]:
    params = np.asarray(res.params, dtype=float)
    if cfg.ts:
        terms = list(res.param_names)
    else:
        model_names = list(res.model.exog_names or [])
        terms = (list(names) + model_names[len(names) :]) if names is not None else model_names
    ci = np.asarray(res.conf_int(alpha=cfg.alpha), dtype=float).reshape(len(params), 2)
    return {
        "term": np.asarray(terms[: len(params)], dtype=object),
        "estimate": params,
        "std_error": np.asarray(res.bse, dtype=float),
        "statistic": np.asarray(res.tvalues, dtype=float),
        "p_value": np.asarray(res.pvalues, dtype=float),
        "ci_low": ci[:, 0],
        "ci_high": ci[:, 1],
    }


def warning_text(caught: list) -> tuple[str | None, bool]:
    """Distinct warning messages of one fit, and whether one was a convergence warning."""
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    if not caught:
        return None, False
    texts = list(
        dict.fromkeys(f"{w.category.__name__}: {' '.join(str(w.message).split())}" for w in caught)
    )
    bad = any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return "; ".join(texts)[:1000], bad


class GroupFailed(Exception):
    """A group cannot be fitted; the message goes to model_stats.error."""


# ------------------------------------------------------------------------ one group


@dataclass
class GroupData:
    """The rows of one group, ready for statsmodels (missing rows already removed)."""

    y: Any  # endog: ndarray (or Series)
    X: Any  # exog: ndarray in column-major order, DataFrame, or None
    names: list[str] | None  # term names when X is an ndarray
    extra: dict[str, np.ndarray]
    frame: pd.DataFrame | None = None  # formula fitted from the group's own rows
    split_y: np.ndarray | None = None  # response used to draw the split (stratification)


def _take(g: GroupData, rows: np.ndarray) -> GroupData:
    def sub(v):
        if v is None:
            return None
        return (
            v.iloc[rows]
            if isinstance(v, (pd.DataFrame, pd.Series))
            else (np.asfortranarray(v[rows]) if getattr(v, "ndim", 1) == 2 else v[rows])
        )

    return GroupData(
        sub(g.y), sub(g.X), g.names, {k: v[rows] for k, v in g.extra.items()}, sub(g.frame), None
    )


def fit_group(cfg: FitConfig, g: GroupData) -> Any:
    """Build and fit the statsmodels model of one group; returns the results object."""
    cls = model_class(cfg.method)
    kw = model_kwargs(cfg, g.extra)
    if g.frame is not None:
        model = cls.from_formula(
            cfg.formula, data=g.frame, eval_env=formula_env(), missing="drop", **kw
        )
    elif cfg.ts:
        model = cls(g.y, exog=g.X, **kw)
    else:
        model = cls(g.y, g.X, **kw)
    if cfg.method in ("ols", "wls") and cfg.solver != "statsmodels":
        from distml.jobs.statsmodels.engine import fit_least_squares

        return fit_least_squares(model, **fit_kwargs(cfg, g.extra))
    return model.fit(**fit_kwargs(cfg, g.extra))


def check_fit(res, cfg: FitConfig) -> None:
    """Turn fits that statsmodels returns but that carry no inference into group failures."""
    if cfg.ts:
        return
    k = int(np.shape(res.model.exog)[1])
    if res.nobs <= k or res.df_resid < 1:
        raise GroupFailed(f"too few rows: {int(res.nobs)} rows for {k} parameters")
    rank = _rank(res, cfg)
    if rank is not None and rank < k:
        raise GroupFailed(
            f"singular design: rank {rank} < {k} columns (collinear regressors, "
            "or a regressor constant within the group)"
        )


def holdout_metrics(
    cfg: FitConfig, res, g: GroupData, split: str
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Out-of-sample figures of one fitted group on its held-out rows."""
    from distml.runtime import metrics as M

    kw = {k: g.extra[c] for k, c in (("offset", cfg.offset), ("exposure", cfg.exposure)) if c}
    if g.frame is not None:
        pred = np.asarray(res.predict(g.frame, **kw), dtype=float)
        y = _formula_endog(cfg, g.frame)
    else:
        pred = np.asarray(res.predict(g.X, **kw), dtype=float)
        y = np.asarray(g.y, dtype=float)
    if cfg.classification:
        labels = (pred >= 0.5).astype(np.int64)
        figures = M.classification_metrics(
            y.astype(np.int64), labels, np.column_stack([1 - pred, pred]), 2
        )
        figures = {k: figures.get(k) for k in ("accuracy", "logloss", "roc_auc")}
    else:
        figures = M.regression_metrics(y, pred)
    return {f"{split}_n": len(y), **{f"{split}_{k}": v for k, v in figures.items()}}, y, pred


def _formula_endog(cfg: FitConfig, frame: pd.DataFrame) -> np.ndarray:
    from statsmodels.formula._manager import FormulaManager

    mgr = FormulaManager()
    y, _ = mgr.get_matrices(
        cfg.formula, frame, eval_env=formula_env(), pandas=True, na_action=mgr.get_na_action("drop")
    )
    return np.asarray(y, dtype=float)[:, 0]


def run_group(
    cfg: FitConfig, g: GroupData, holdout: list | None = None
) -> tuple[dict | None, dict, Any]:
    """Fit one group with its warnings recorded; returns (coef columns, stats, results).

    Never raises: a failure is reported as ``stats["error"]`` with ``converged`` false.
    """
    stats: dict[str, Any] = {"engine": "statsmodels"}
    res = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parts = {"train": g}
            if cfg.split is not None:
                from distml.runtime.data import split_indices

                sy = g.split_y if g.split_y is not None else np.asarray(g.y, dtype=float)
                idx = split_indices(sy, cfg.split, classification=cfg.classification)
                parts = {k: _take(g, v) for k, v in idx.items()}
            res = fit_group(cfg, parts["train"])
            # read figures off the unwrapped results: the same arrays, without the wrapper's
            # per-attribute cost (pandas labels are not needed here)
            res = getattr(res, "_results", res)
            check_fit(res, cfg)
            coef = _coef(res, cfg, g.names)
            stats.update(_stats(res, cfg))
            for name in ("valid", "test"):
                if name in parts:
                    figures, y, pred = holdout_metrics(cfg, res, parts[name], name)
                    stats.update(figures)
                    if holdout is not None:
                        holdout.append((name, y, pred))
            stats["converged"] = _converged(res, cfg)
        except Exception as e:  # one group's failure never stops the others
            coef, res = None, None
            msg = " ".join(str(e).split()) or type(e).__name__
            stats.update(
                converged=False,
                error=msg[:500]
                if isinstance(e, GroupFailed)
                else f"{type(e).__name__}: {msg[:480]}",
            )
        text, not_converged = warning_text(caught)
    stats["warnings"] = text
    if not_converged and coef is not None:
        stats["converged"] = False
    return coef, stats, res
