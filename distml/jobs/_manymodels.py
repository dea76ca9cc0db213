"""The fitting engine of the statsmodels kind: one model, or thousands of per-group models.

Many-models execution (``group_by``), measured on 2 cores (docs/statsmodels.md, B6):

1. **Partition on the workers.** One *map* task per input partition (a parquet file or a run of
   its row groups, a CSV file, or the whole of a builtin/synthetic source) reads only the
   columns the model needs, drops rows whose group key is missing, and stably sorts its rows by
   group key. It returns a small key summary (group keys, start, count) and the sorted columns
   as numpy arrays, which stay in the object store (zero-copy for the fit tasks on that node).
   The driver only merges the key summaries: the rows never pass through it.
2. **Batch the groups.** Groups are numbered in sorted key order (as ``pandas.groupby`` sorts)
   and cut into contiguous batches, many groups per Ray task: a task costs ~2 ms here and one
   OLS fit ~0.3 ms with its inference, so one group per task is ~8x slower than a loop.
   :func:`auto_groups_per_task` sizes the batches from the method's cost, the group count and
   the cluster's CPUs (override: ``model.groups_per_task``).
3. **Fit a batch.** The task slices its groups out of the partitions (rows keep their original
   order), evaluates the formula **once for the whole batch** and slices the design matrix per
   group, when that is provably the same as evaluating the formula on each group alone: every
   factor is computed row by row and the group has every level of each ``C(col)`` seen in the
   batch. Other groups (and formulas with stateful transforms or explicit contrasts) are fitted
   from their own formula, exactly as a per-group ``smf.<method>(formula, group_df)`` would.
   The array interface (``endog``/``exog``) builds its design once per batch too. Design
   matrices are handed to statsmodels in the memory layout the formula API and
   ``sm.add_constant(DataFrame)`` produce (column-major), so results are bit-for-bit those of a
   plain per-group statsmodels loop.
4. **Collect.** Results come back as columnar arrays as tasks finish (``ray.wait``) and are
   tabulated once.

A group that fails (statsmodels raises, a singular design, too few rows, ``min_rows``, a
missing value under ``missing: raise``) gets its ``error`` filled and ``converged`` false;
statsmodels' warnings are recorded per group in ``warnings`` (a ConvergenceWarning also sets
``converged`` false), never raised.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from distml.errors import DataError, JobFailed
from distml.jobs.base import JobOutput
from distml.jobs._formula import FormulaInfo, analyze_formula, counts_formula, formula_namespace

#: statsmodels methods by family (the kind's spec checks use them too)
REGRESSION = ("ols", "wls", "glm", "logit", "probit", "poisson", "negativebinomial", "quantreg")
TIME_SERIES = ("arima", "sarimax")
DISCRETE = ("logit", "probit", "poisson", "negativebinomial")

#: Rough cost of one fit with its inference, in ms (this machine), used to size batches.
COST_MS = {"ols": 0.35, "wls": 0.4, "quantreg": 3.0, "glm": 3.0, "logit": 3.0, "probit": 3.0,
           "poisson": 3.0, "negativebinomial": 15.0, "arima": 40.0, "sarimax": 120.0}
TASK_MIN_MS = 200.0  # a task should carry at least this much fitting (overhead ~2 ms + setup)
MAX_TASKS_PER_CPU = 4  # beyond this, more tasks only add overhead (tasks are cost-balanced)
LINK_CLASSES = {"identity": "Identity", "log": "Log", "logit": "Logit", "probit": "Probit",
                "cauchy": "Cauchy", "cloglog": "CLogLog", "loglog": "LogLog", "logc": "LogC",
                "inverse_power": "InversePower", "inverse_squared": "InverseSquared",
                "sqrt": "Sqrt"}
FAMILY_CLASSES = {"gaussian": "Gaussian", "binomial": "Binomial", "poisson": "Poisson",
                  "gamma": "Gamma", "negativebinomial": "NegativeBinomial",
                  "tweedie": "Tweedie", "inverse_gaussian": "InverseGaussian"}
BASE_STATS = ["nobs", "r_squared", "adj_r_squared", "aic", "bic", "llf", "converged", "error"]
EXTRA_STATS = {
    "ols": ["df_model", "df_resid", "fvalue", "f_pvalue"],
    "wls": ["df_model", "df_resid", "fvalue", "f_pvalue"],
    "glm": ["df_model", "df_resid", "deviance", "pearson_chi2", "scale", "pseudo_r_squared"],
    "quantreg": ["df_model", "df_resid", "pseudo_r_squared"],
    "arima": ["hqic", "ljung_box_stat", "ljung_box_pvalue", "ljung_box_lags"],
    "sarimax": ["hqic", "ljung_box_stat", "ljung_box_pvalue", "ljung_box_lags"],
    **{m: ["df_model", "df_resid", "pseudo_r_squared", "llnull", "llr_pvalue", "max_abs_score"]
       for m in DISCRETE},
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
            method=m.method, formula=formula,
            finfo=analyze_formula(formula) if formula else None,
            endog=m.endog or d.target if m.formula is None else None,
            exog=tuple(m.exog or d.features or []) if m.formula is None else (),
            add_constant=m.add_constant, group_by=tuple(spec.group_by), family=m.family,
            link=m.link, var_power=m.var_power, family_alpha=m.family_alpha, weights=m.weights,
            offset=m.offset, exposure=m.exposure, cov_groups=m.cov_groups, time=m.time, q=m.q,
            order=tuple(m.order), seasonal_order=tuple(m.seasonal_order) if m.seasonal_order
            else None, trend=m.trend, forecast_steps=m.forecast_steps, cov_type=m.cov_type,
            maxlags=m.maxlags, use_t=m.use_t, alpha=m.alpha, missing=m.missing,
            maxiter=m.maxiter, min_rows=m.min_rows, split=d.split_spec,
            groups_per_task=m.groups_per_task, solver=m.solver)

    @property
    def ts(self) -> bool:
        return self.method in TIME_SERIES

    @property
    def classification(self) -> bool:
        return self.method in ("logit", "probit") or (self.method == "glm"
                                                       and self.family == "binomial")

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
            metrics = ["accuracy", "logloss", "roc_auc"] if self.classification else \
                ["rmse", "mae", "r2"]
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

    return {"ols": sm.OLS, "wls": sm.WLS, "glm": sm.GLM, "logit": sm.Logit, "probit": sm.Probit,
            "poisson": sm.Poisson, "negativebinomial": sm.NegativeBinomial,
            "quantreg": sm.QuantReg}[method]


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
    out: dict[str, Any] = {"nobs": _f(res.nobs), "llf": _f(res.llf), "aic": _f(res.aic),
                           "bic": _f(res.bic)}
    if m in REGRESSION_DF:
        out["condition_number"] = _condition_number(res)
    if m in ("ols", "wls"):
        out.update(r_squared=_f(res.rsquared), adj_r_squared=_f(res.rsquared_adj),
                   fvalue=_f(res.fvalue), f_pvalue=_f(res.f_pvalue))
    if m in REGRESSION_DF:
        out.update(df_model=_f(res.df_model), df_resid=_f(res.df_resid))
    if m == "glm":
        out.update(deviance=_f(res.deviance), pearson_chi2=_f(res.pearson_chi2),
                   scale=_f(res.scale), pseudo_r_squared=_f(res.pseudo_rsquared()))
    elif m in DISCRETE:
        out.update(pseudo_r_squared=_f(res.prsquared), llnull=_f(res.llnull),
                   llr_pvalue=_f(res.llr_pvalue), max_abs_score=_max_abs_score(res))
    elif m == "quantreg":
        out.update(pseudo_r_squared=_f(res.prsquared))
    elif cfg.ts:
        lags = max(1, min(10, int(res.nobs) // 5))
        lb = np.asarray(res.test_serial_correlation("ljungbox", lags=lags))
        out.update(hqic=_f(res.hqic), ljung_box_stat=_f(lb[0, 0, -1]),
                   ljung_box_pvalue=_f(lb[0, 1, -1]), ljung_box_lags=lags)
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
        terms = (list(names) + model_names[len(names):]) if names is not None else model_names
    ci = np.asarray(res.conf_int(alpha=cfg.alpha), dtype=float).reshape(len(params), 2)
    return {"term": np.asarray(terms[:len(params)], dtype=object),
            "estimate": params, "std_error": np.asarray(res.bse, dtype=float),
            "statistic": np.asarray(res.tvalues, dtype=float),
            "p_value": np.asarray(res.pvalues, dtype=float),
            "ci_low": ci[:, 0], "ci_high": ci[:, 1]}


def _warning_text(caught: list) -> tuple[str | None, bool]:
    """Distinct warning messages of one fit, and whether one was a convergence warning."""
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    if not caught:
        return None, False
    texts = list(dict.fromkeys(f"{w.category.__name__}: {' '.join(str(w.message).split())}"
                               for w in caught))
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
        return v.iloc[rows] if isinstance(v, (pd.DataFrame, pd.Series)) else \
            (np.asfortranarray(v[rows]) if getattr(v, "ndim", 1) == 2 else v[rows])

    return GroupData(sub(g.y), sub(g.X), g.names, {k: v[rows] for k, v in g.extra.items()},
                     sub(g.frame), None)


def fit_group(cfg: FitConfig, g: GroupData) -> Any:
    """Build and fit the statsmodels model of one group; returns the results object."""
    cls = model_class(cfg.method)
    kw = model_kwargs(cfg, g.extra)
    if g.frame is not None:
        model = cls.from_formula(cfg.formula, data=g.frame, eval_env=formula_env(), missing="drop",
                                 **kw)
    elif cfg.ts:
        model = cls(g.y, exog=g.X, **kw)
    else:
        model = cls(g.y, g.X, **kw)
    if cfg.method in ("ols", "wls") and cfg.solver != "statsmodels":
        from distml.jobs._vectorised import fit_least_squares

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
        raise GroupFailed(f"singular design: rank {rank} < {k} columns (collinear regressors, "
                          "or a regressor constant within the group)")


def holdout_metrics(cfg: FitConfig, res, g: GroupData, split: str) -> tuple[dict, np.ndarray,
                                                                            np.ndarray]:
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
        figures = M.classification_metrics(y.astype(np.int64), labels,
                                           np.column_stack([1 - pred, pred]), 2)
        figures = {k: figures.get(k) for k in ("accuracy", "logloss", "roc_auc")}
    else:
        figures = M.regression_metrics(y, pred)
    return {f"{split}_n": len(y), **{f"{split}_{k}": v for k, v in figures.items()}}, y, pred


def _formula_endog(cfg: FitConfig, frame: pd.DataFrame) -> np.ndarray:
    from statsmodels.formula._manager import FormulaManager

    mgr = FormulaManager()
    y, _ = mgr.get_matrices(cfg.formula, frame, eval_env=formula_env(), pandas=True,
                            na_action=mgr.get_na_action("drop"))
    return np.asarray(y, dtype=float)[:, 0]


def run_group(cfg: FitConfig, g: GroupData,
              holdout: list | None = None) -> tuple[dict | None, dict, Any]:
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
            stats.update(converged=False, error=msg[:500] if isinstance(e, GroupFailed)
                         else f"{type(e).__name__}: {msg[:480]}")
        text, not_converged = _warning_text(caught)
    stats["warnings"] = text
    if not_converged and coef is not None:
        stats["converged"] = False
    return coef, stats, res


# ------------------------------------------------------------------------ a batch of groups

def is_missing(v: np.ndarray) -> np.ndarray:
    if v.dtype.kind == "f":
        return np.isnan(v)
    if v.dtype.kind == "O":
        return pd.isna(v)
    if v.dtype.kind == "M":
        return np.isnat(v)
    return np.zeros(len(v), dtype=bool)


def _as_float(v: np.ndarray) -> np.ndarray:
    return v if v.dtype == np.float64 else v.astype(np.float64)


@dataclass
class Batch:
    """Rows of consecutive groups: ``cols[c][bounds[i]:bounds[i+1]]`` is group ``gids[i]``."""

    cols: dict[str, np.ndarray]
    bounds: np.ndarray
    gids: np.ndarray


def _prepare(cfg: FitConfig, batch: Batch) -> tuple[Batch, np.ndarray, np.ndarray]:
    """Sort time series by time, drop rows with missing values; returns (batch, n_rows,
    n_missing) with n_rows/n_missing per group (before dropping)."""
    cols, bounds = dict(batch.cols), batch.bounds
    n_rows = np.diff(bounds)
    gid_of_row = np.repeat(np.arange(len(n_rows)), n_rows)
    if cfg.time:
        order = np.lexsort((cols[cfg.time], gid_of_row))
        cols = {k: v[order] for k, v in cols.items()}
    used = [c for c in cfg.model_columns() if c in cols]
    miss = np.zeros(len(gid_of_row), dtype=bool)
    for c in used:
        miss |= is_missing(cols[c])
    n_missing = np.bincount(gid_of_row[miss], minlength=len(n_rows)) if miss.any() else \
        np.zeros(len(n_rows), dtype=np.int64)
    if miss.any():
        keep = ~miss
        cols = {k: v[keep] for k, v in cols.items()}
        bounds = np.concatenate([[0], np.cumsum(n_rows - n_missing)])
    return Batch(cols, bounds, batch.gids), n_rows, n_missing


class _Design:
    """The formula evaluated once on a whole batch, sliced per group when that is exact."""

    def __init__(self, cfg: FitConfig, frame: pd.DataFrame):
        from statsmodels.formula._manager import FormulaManager

        mgr = FormulaManager()
        self.ok = mgr.engine == "patsy"
        if not self.ok:
            return
        y, X = mgr.get_matrices(cfg.formula, frame, eval_env=formula_env(), pandas=True,
                                na_action=mgr.get_na_action("drop"))
        self.names = list(X.columns)
        # a counts response keeps both columns (successes, failures), as statsmodels takes them
        self.y = np.asarray(y, dtype=float)
        self.y = self.y if cfg.finfo.counts else self.y[:, 0]
        self.X = X.to_numpy()
        self.rows = np.asarray(X.index, dtype=np.int64)  # rows of the batch frame kept
        info = mgr.spec
        self.levels: list[tuple[np.ndarray, int]] = []  # (column values, number of levels)
        for factor, finfo in info.factor_infos.items():
            if finfo.type != "categorical":
                continue
            col = cfg.finfo.categorical.get(factor.code) if cfg.finfo else None
            if col is None:
                cols = cfg.finfo.factors.get(factor.code, []) if cfg.finfo else []
                col = cols[0] if len(cols) == 1 and factor.code == cols[0] else None
            if col is None or col not in frame:
                self.ok = False  # a categorical we cannot map to a column: fit per group
                return
            self.levels.append((np.asarray(frame[col].to_numpy(), dtype=object),
                                len(finfo.categories)))

    def group(self, a: int, b: int) -> tuple[int, int] | None:
        """Rows [i, j) of the design for batch rows [a, b), or None if slicing is not exact."""
        i, j = np.searchsorted(self.rows, [a, b])
        if j <= i:
            return None
        for values, n_levels in self.levels:
            if len(set(values[self.rows[i:j]])) != n_levels:
                return None  # the group lacks a level: its own formula codes it differently
        return int(i), int(j)


def fit_batch(cfg: FitConfig, batch: Batch, *, fast: bool = True, keep: bool = False) -> dict:
    """Fit every group of ``batch``; returns columnar results for :func:`collect`.

    ``fast``: evaluate a formula once for the batch where exact; ``keep``: one model, named
    inputs and the statsmodels summary text.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    batch, n_rows, n_missing = _prepare(cfg, batch)
    cols, bounds = batch.cols, batch.bounds
    frame = design = None
    if cfg.formula is not None:
        frame = pd.DataFrame({c: cols[c] for c in cfg.finfo.columns}, copy=False)
        if fast and cfg.finfo.rowwise and len(batch.gids) > 1:
            design = _Design(cfg, frame)
            design = design if design.ok else None
    elif not cfg.ts:
        design = _Arrays(cfg, cols, bounds)
    coef_parts: list[dict] = []
    stats_rows: list[dict] = []
    holdout: list = []
    forecasts: list[dict] = []
    n_fast = 0
    summary = None
    errors = [_precheck(cfg, n_rows[i], n_missing[i], int(bounds[i + 1] - bounds[i]))
              for i in range(len(batch.gids))]
    engine: dict[int, tuple[dict, dict]] = {}
    declined: dict[str, int] = {}
    if fast and design is not None and len(batch.gids) > 1:
        from distml.jobs import _vectorised

        if _vectorised.scope(cfg) is None:
            todo = [i for i, e in enumerate(errors) if e is None]
            engine, declined = _vectorised_fits(cfg, cols, design, bounds, todo)
    for i, gid in enumerate(batch.gids):
        a, b = int(bounds[i]), int(bounds[i + 1])
        stats: dict[str, Any] = {"n_rows": int(n_rows[i]), "n_missing": int(n_missing[i])}
        error = errors[i]
        if i in engine:
            coef, fit_stats = engine[i]
            stats.update(fit_stats)
            stats_rows.append(stats)
            coef["gid"] = np.full(len(coef["term"]), gid, dtype=np.int64)
            coef_parts.append(coef)
            n_fast += cfg.formula is not None
            continue
        if error is not None:
            stats.update(nobs=float(b - a), converged=False, error=error)
            stats_rows.append(stats)
            continue
        g = _group_data(cfg, cols, frame, design, a, b, keep)
        n_fast += cfg.formula is not None and g.frame is None
        coef, fit_stats, res = run_group(cfg, g, holdout if cfg.split is not None else None)
        stats.update(fit_stats)
        stats.setdefault("nobs", float(b - a))
        stats_rows.append(stats)
        if coef is None:
            continue
        coef["gid"] = np.full(len(coef["term"]), gid, dtype=np.int64)
        coef_parts.append(coef)
        if cfg.forecast_steps:
            try:
                fc = _forecast(cfg, res, cols[cfg.time][a:b] if cfg.time else None)
                fc["gid"] = np.full(len(fc["step"]), gid, dtype=np.int64)
                forecasts.append(fc)
            except Exception as e:
                stats["warnings"] = "; ".join(filter(None, [stats.get("warnings"),
                                                            f"forecast failed: {e}"]))
        if keep:
            summary = _summary(res, cfg)
    return {"gids": np.asarray(batch.gids, dtype=np.int64), "stats": stats_rows,
            "coef": _concat(coef_parts), "forecast": _concat(forecasts), "holdout": holdout,
            "summary": summary, "fit_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0, "n_fast": int(n_fast),
            "n_vectorised": len(engine), "declined": declined}


def _precheck(cfg: FitConfig, n_rows: int, n_missing: int, n_left: int) -> str | None:
    """Why a group is not fitted at all (missing values, too few rows), or None."""
    if cfg.missing == "raise" and n_missing:
        return (f"{int(n_missing)} of {int(n_rows)} rows have missing values "
                "(model.missing is 'raise')")
    if n_left == 0:
        return "no rows left after dropping missing values"
    if cfg.min_rows and n_left < cfg.min_rows:
        return f"too few rows: {n_left} (model.min_rows is {cfg.min_rows})"
    return None


ENGINE_STATS = {"ols": ["r_squared", "adj_r_squared", "fvalue", "f_pvalue"],
                "wls": ["r_squared", "adj_r_squared", "fvalue", "f_pvalue"],
                "glm": ["deviance", "pearson_chi2", "scale", "pseudo_r_squared"]}


def _vectorised_fits(cfg: FitConfig, cols: dict, design, bounds: np.ndarray,
                     todo: list[int]) -> tuple[dict[int, tuple[dict, dict]], dict[str, int]]:
    """Fit the batch's groups ``todo`` with the vectorised engine where their design can be
    sliced from the batch's (every group then has the same terms); returns
    ``{group index: (coef columns, stats)}`` for the groups it fitted and a count of the
    reasons it declined the others, which statsmodels then fits one by one."""
    from distml.jobs import _vectorised

    picked, spans, names = [], [], None
    for i in todo:
        a, b = int(bounds[i]), int(bounds[i + 1])
        if isinstance(design, _Arrays):
            if design.k0 and design.skip[design._index[a]]:
                continue
            picked.append(i)
            spans.append((a, b, np.arange(a, b)))
            names = design.names
        else:
            span = design.group(a, b)
            if span is None:
                continue
            picked.append(i)
            spans.append((span[0], span[1], design.rows[span[0]:span[1]]))
            names = design.names
    if not picked:
        return {}, {}
    rows = np.concatenate([r for _, _, r in spans])
    if isinstance(design, _Arrays):
        X, y = design.X[rows], _as_float(cols[cfg.endog][rows])
    else:
        sel = np.concatenate([np.arange(i, j) for i, j, _ in spans])
        X, y = design.X[sel], design.y[sel]
    sizes = np.array([len(r) for _, _, r in spans], dtype=np.int64)
    gb = np.concatenate([[0], np.cumsum(sizes)])
    w = _as_float(cols[cfg.weights][rows]) if cfg.weights and cfg.method != "ols" else None
    offset = None
    if cfg.offset or cfg.exposure:
        offset = np.zeros(len(rows))
        if cfg.offset:
            offset += _as_float(cols[cfg.offset][rows])
        if cfg.exposure:
            with np.errstate(divide="ignore", invalid="ignore"):
                offset += np.log(_as_float(cols[cfg.exposure][rows]))
            if not np.isfinite(offset).all():
                return {}, {"non-positive exposure": len(picked)}
    clusters = cols[cfg.cov_groups][rows] if cfg.cov_type == "cluster" else None
    fit = _vectorised.fit_groups(cfg, X, y, gb, weights=w, offset=offset, clusters=clusters)
    warning = _domain_warning(cfg)
    terms = np.asarray(names, dtype=object)
    done: dict[int, tuple[dict, dict]] = {}
    declined: dict[str, int] = {}
    keep = ["nobs", "llf", "aic", "bic", "df_model", "df_resid", "condition_number",
            *ENGINE_STATS[cfg.method]]
    for j, i in enumerate(picked):
        if not fit.ok[j]:
            declined[fit.reason[j]] = declined.get(fit.reason[j], 0) + 1
            continue
        coef = {"term": terms.copy(), "estimate": fit.params[j], "std_error": fit.bse[j],
                "statistic": fit.statistic[j], "p_value": fit.p_value[j],
                "ci_low": fit.ci_low[j], "ci_high": fit.ci_high[j]}
        stats = {c: float(fit.stats[c][j]) for c in keep}
        stats.update(converged=True, warnings=warning, engine="vectorised")
        done[i] = (coef, stats)
    return done, declined


def _domain_warning(cfg: FitConfig) -> str | None:
    """The warning statsmodels records for every fit of this configuration (a link outside
    the family's safe links), so the engine's groups carry the same text as statsmodels'."""
    if cfg.method != "glm" or not cfg.link:
        return None
    return _glm_init_warning(cfg.family or "gaussian", cfg.link)


@functools.lru_cache(maxsize=32)
def _glm_init_warning(family: str, link: str) -> str | None:
    import statsmodels.api as sm

    cfg = FitConfig(method="glm", formula=None, finfo=None, endog=None, exog=(),
                    add_constant=False, group_by=(), family=family, link=link)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sm.GLM(np.array([1.0, 2.0, 3.0]), np.ones((3, 1)), family=glm_family(cfg))
    return _warning_text(caught)[0]


def _group_data(cfg: FitConfig, cols: dict, frame: pd.DataFrame | None, design, a: int, b: int,
                keep: bool) -> GroupData:
    """The statsmodels inputs of batch rows [a, b)."""
    if cfg.formula is not None:
        span = design.group(a, b) if design is not None else None
        if span is not None:
            i, j = span
            rows = design.rows[i:j]
            extra = {c: cols[c][rows] for c in cfg.extras}
            X = np.asfortranarray(design.X[i:j])
            return GroupData(design.y[i:j], X, design.names, extra)
        sub = frame.iloc[a:b]
        extra = {c: cols[c][a:b] for c in cfg.extras}
        lhs = cfg.finfo.lhs[0]
        split_y = np.asarray(cols[lhs][a:b], dtype=float) if cfg.split is not None else None
        return GroupData(None, None, None, extra, frame=sub, split_y=split_y)
    extra = {c: cols[c][a:b] for c in cfg.extras}
    y = _as_float(cols[cfg.endog][a:b])
    if cfg.ts:
        X = pd.DataFrame({c: _as_float(cols[c][a:b]) for c in cfg.exog}) if cfg.exog else None
        return GroupData(pd.Series(y, name=cfg.endog) if keep else y, X, None, extra)
    X, names = design.group(a, b)
    if keep:  # one model: named inputs, so the summary shows the names
        return GroupData(pd.Series(y, name=cfg.endog), pd.DataFrame(X, columns=names), None,
                         extra)
    return GroupData(y, X, names, extra)


class _Arrays:
    """The array interface's design for a whole batch, built once: column-major with the
    constant first, as ``sm.add_constant(group_df[exog])`` gives it for each group."""

    def __init__(self, cfg: FitConfig, cols: dict, bounds: np.ndarray):
        k0 = int(cfg.add_constant)
        n = int(bounds[-1])
        self.X = np.empty((n, len(cfg.exog) + k0), order="F")
        if k0:
            self.X[:, 0] = 1.0
        for k, c in enumerate(cfg.exog):
            self.X[:, k + k0] = cols[c]
        self.names = (["const"] if k0 else []) + list(cfg.exog)
        self.k0 = k0
        self.skip = np.zeros(len(bounds) - 1, dtype=bool)
        starts, sizes = bounds[:-1], np.diff(bounds)
        if k0 and len(cfg.exog) and n and (sizes > 0).any():
            # add_constant(has_constant="skip") adds nothing to a group where some regressor
            # is already a nonzero constant
            raw = self.X[:, 1:]
            at = starts[sizes > 0]
            lo, hi = np.minimum.reduceat(raw, at), np.maximum.reduceat(raw, at)
            self.skip[sizes > 0] = ((lo == hi) & (lo != 0)).any(axis=1)
        self._index = {int(a): i for i, a in enumerate(starts)}

    def group(self, a: int, b: int) -> tuple[np.ndarray, list[str]]:
        if self.k0 and self.skip[self._index[a]]:
            return np.asfortranarray(self.X[a:b, 1:]), self.names[1:]
        return np.asfortranarray(self.X[a:b]), self.names


def _concat(parts: list[dict]) -> dict | None:
    if not parts:
        return None
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _summary(res, cfg: FitConfig) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return str(res.summary(alpha=cfg.alpha))
        except TypeError:
            return str(res.summary())


def _forecast(cfg: FitConfig, res, t: np.ndarray | None) -> dict:
    steps = cfg.forecast_steps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fc = res.get_forecast(steps)
        ci = np.asarray(fc.conf_int(alpha=cfg.alpha), dtype=float)
        mean = np.asarray(fc.predicted_mean, dtype=float)
        se = np.asarray(fc.se_mean, dtype=float)
    return {"step": np.arange(1, steps + 1, dtype=np.int64), "time": _future_times(t, steps),
            "mean": mean, "std_error": se, "ci_low": ci[:, 0], "ci_high": ci[:, 1]}


def _future_times(t: np.ndarray | None, steps: int) -> np.ndarray:
    """Times of the forecast steps when the time column is evenly spaced, else NaN."""
    nan = np.full(steps, np.nan)
    if t is None or len(t) < 2:
        return nan
    if t.dtype.kind == "M":
        freq = pd.infer_freq(pd.DatetimeIndex(t)) if len(t) >= 3 else None
        if freq is None:
            return np.full(steps, np.datetime64("NaT"), dtype=t.dtype)
        return pd.date_range(t[-1], periods=steps + 1, freq=freq)[1:].to_numpy()
    if t.dtype.kind in "iuf":
        d = np.diff(t.astype(float))
        if np.allclose(d, d[0]) and d[0] > 0:
            return t[-1] + d[0] * np.arange(1, steps + 1)
    return nan


# ------------------------------------------------------------------------ partitions (map side)

def column_array(s: pd.Series) -> np.ndarray:
    """A column as numpy: numbers/bools/datetimes as they are, everything else as objects
    (what statsmodels' formula API turns strings and categoricals into)."""
    dt = s.dtype
    if isinstance(dt, pd.CategoricalDtype) or not isinstance(dt, np.dtype):
        if pd.api.types.is_numeric_dtype(dt) and not pd.api.types.is_bool_dtype(dt):
            return s.to_numpy(dtype=np.float64, na_value=np.nan)
        return s.to_numpy(dtype=object, na_value=None)
    return s.to_numpy()


@dataclass
class Coded:
    """An object column in transit: integer codes (-1: missing) and the distinct values."""

    codes: np.ndarray
    values: np.ndarray

    def take(self, a: int, b: int) -> np.ndarray:
        lookup = np.append(self.values, None).astype(object)
        return lookup[self.codes[a:b]]


def _encode(v: np.ndarray):
    if v.dtype.kind != "O":
        return v
    codes, uniques = pd.factorize(v, use_na_sentinel=True)
    return Coded(codes.astype(np.int32), np.asarray(uniques, dtype=object))


def map_partition(part, group_by: tuple[str, ...], columns: list[str]) -> tuple:
    """Map task: read a partition (a :class:`distml.runtime.plan.Partition`), sort its rows by
    group key (stable), and return ``(summary, data)``: the keys with start/count, and the
    sorted model columns."""
    from distml.runtime.read import read_partition

    c0 = time.process_time()
    frame = read_partition(part, list(dict.fromkeys(list(group_by) + columns)))
    n = len(frame)
    codes = []
    valid = np.ones(n, dtype=bool)
    for c in group_by:
        k, _ = pd.factorize(frame[c], sort=True, use_na_sentinel=True)
        codes.append(k)
        valid &= k >= 0
    idx = np.flatnonzero(valid)
    order = idx[np.lexsort([k[idx] for k in reversed(codes)])] if len(idx) else idx
    if len(order):
        sorted_codes = np.stack([k[order] for k in codes])
        change = np.flatnonzero((np.diff(sorted_codes, axis=1) != 0).any(axis=0)) + 1
        starts = np.concatenate([[0], change])
    else:
        starts = np.zeros(0, dtype=np.int64)
    counts = np.diff(np.append(starts, len(order)))
    summary = frame[list(group_by)].iloc[order[starts]].reset_index(drop=True)
    summary["_start"] = starts
    summary["_count"] = counts
    data = {c: _encode(column_array(frame[c])[order]) for c in columns}
    return (summary, int(n - len(idx)), time.process_time() - c0), data


def merge_summaries(summaries: list[pd.DataFrame], group_by: tuple[str, ...]):
    """Number the groups in sorted key order; returns (keys, pieces) with pieces an int64 array
    of rows ``(gid, part, start, count)`` sorted by gid then part."""
    frames = [s.assign(_part=i) for i, s in enumerate(summaries) if len(s)]
    if not frames:
        return summaries[0][list(group_by)].iloc[:0], np.zeros((0, 4), dtype=np.int64)
    allsum = pd.concat(frames, ignore_index=True)
    gid = allsum.groupby(list(group_by), sort=True, dropna=True).ngroup().to_numpy()
    pieces = np.column_stack([gid, allsum["_part"].to_numpy(), allsum["_start"].to_numpy(),
                              allsum["_count"].to_numpy()]).astype(np.int64)
    pieces = pieces[np.lexsort((pieces[:, 1], pieces[:, 0]))]
    first = np.unique(gid, return_index=True)[1]
    keys = allsum[list(group_by)].iloc[first].reset_index(drop=True)
    return keys, pieces


def assemble(pieces: np.ndarray, parts: list[dict], columns: list[str]) -> Batch:
    """Fit-task side: the rows of a batch's groups, cut out of the partitions in group order."""
    runs: list[list[int]] = []  # [slot, start, end]: adjacent pieces of one part merged
    for _, slot, start, count in pieces:
        if runs and runs[-1][0] == slot and runs[-1][2] == start:
            runs[-1][2] += count
        else:
            runs.append([int(slot), int(start), int(start + count)])
    cols = {}
    for c in columns:
        chunks = [parts[s][c].take(a, b) if isinstance(parts[s][c], Coded) else parts[s][c][a:b]
                  for s, a, b in runs]
        cols[c] = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    gids, first = np.unique(pieces[:, 0], return_index=True)
    sizes = np.add.reduceat(pieces[:, 3], first) if len(first) else np.zeros(0, np.int64)
    return Batch(cols, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), gids)


def fit_task(cfg: FitConfig, pieces: np.ndarray, columns: list[str], *parts) -> dict:
    """Fit task: assemble the batch from the partitions it needs and fit every group."""
    slots = sorted(set(pieces[:, 1].tolist()))
    local = {s: i for i, s in enumerate(slots)}
    remapped = pieces.copy()
    remapped[:, 1] = [local[s] for s in pieces[:, 1]]
    return fit_batch(cfg, assemble(remapped, list(parts), columns))


def auto_groups_per_task(n_groups: int, method: str, n_cpus: int) -> int:
    """Groups per Ray task: enough fitting per task to bury the ~2 ms task cost
    (``TASK_MIN_MS``), at most ``MAX_TASKS_PER_CPU`` tasks per CPU for fast methods, and at
    least one task per CPU when there are enough groups to share.

    >>> auto_groups_per_task(10_000, "ols", 2), auto_groups_per_task(200, "arima", 2)
    (1250, 5)
    """
    n_cpus = max(1, int(n_cpus))
    min_per_task = max(1, math.ceil(TASK_MIN_MS / COST_MS[method]))
    tasks = min(math.ceil(n_groups / min_per_task), MAX_TASKS_PER_CPU * n_cpus)
    if method in TIME_SERIES:  # slow, uneven fits: finer tasks balance the tail
        tasks = math.ceil(n_groups / min_per_task)
    tasks = max(tasks, min(n_cpus, n_groups), 1)
    return math.ceil(n_groups / tasks)


# ------------------------------------------------------------------------ driver side

def runner(spec):
    """The task runner of the statsmodels paths (:class:`distml.runtime.tasks.Runner`). Map and
    fit tasks are pure functions of their inputs: a task lost with its worker or node is simply
    run again (Ray's default 3 retries, or more with resources.max_failures); a Python error
    inside a fit is the group's error, never a task failure. All tasks may run at once."""
    from distml.runtime.tasks import Runner

    return Runner(spec.resources, min_retries=3, limit_concurrency=False)


def task_options(spec) -> dict:
    """The Ray task options of :func:`runner` (one Ray task of the single-model path)."""
    return runner(spec).opts


def run_many(spec, cfg: FitConfig, ctx) -> JobOutput:
    """Many-models: partition by group on the workers, fit batches of groups in Ray tasks."""
    import ray

    t0, c0 = time.perf_counter(), time.process_time()
    cpus = max(1, int(ctx.cluster.resources.get("CPU", 1) or 1)) if ctx.cluster else 1
    from distml.runtime import plan

    units = plan.by_count(ctx.data.source, 2 * cpus)
    columns = cfg.model_columns()
    tasks = runner(spec)
    from distml import progress

    progress.current().stage("read", f"partitioning by {', '.join(cfg.group_by)}")
    refs = tasks.map(map_partition, units, cfg.group_by, columns, num_returns=2)
    heads = ray.get([r[0] for r in refs])
    parts = [r[1] for r in refs]
    keys, pieces = merge_summaries([h[0] for h in heads], cfg.group_by)
    n_null = sum(h[1] for h in heads)
    n_groups = len(keys)
    if n_groups == 0:
        raise DataError(f"group_by: no row of {spec.data.source!r} has a complete group key "
                        f"({n_null} rows have a missing value in {list(cfg.group_by)})")
    t_partition = time.perf_counter() - t0
    saver = _checkpoints(spec, ctx, keys)
    results = saver.restore()  # tasks an interrupted attempt finished (--resume)
    done_gids = {int(g) for r in results for g in r["gids"]}
    gpt = saver.gpt or cfg.groups_per_task or auto_groups_per_task(n_groups, cfg.method, cpus)
    fitter = tasks.remote(fit_task)
    bounds = np.searchsorted(pieces[:, 0], np.arange(0, n_groups + gpt, gpt).clip(max=n_groups))
    pending = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi > lo and not done_gids.issuperset(pieces[lo:hi, 0].tolist()):
            chunk = pieces[lo:hi]
            slots = sorted(set(chunk[:, 1].tolist()))
            pending.append(fitter.remote(cfg, chunk, columns, *[parts[s] for s in slots]))
    n_tasks = len(pending)
    ctx.log.info("many-models: %d groups in %d partitions -> %d tasks of <= %d groups%s",
                 n_groups, len(units), n_tasks, gpt,
                 f" ({len(done_gids)} groups from the checkpoint)" if done_gids else "")
    show = progress.current()
    show.stage("train", f"many-models: {n_tasks} tasks")
    groups, n_done, n_bad = show.counter("groups", total=n_groups, unit="groups"), 0, 0
    from distml.runtime import faults

    fault = faults.from_env("manymodels.groups")  # tests: the driver stops after K groups
    n_collected = len(done_gids)
    # collect as tasks finish, so results stream back while others fit; leaving the loop early
    # (a lost task, a fault) cancels the others
    with contextlib.closing(tasks.stream(pending)) as finished:
        for batch, n_pending in finished:
            results.extend(batch)
            n_collected += sum(len(r["gids"]) for r in batch)
            crash = faults.once(fault, "manymodels.groups", n_collected) if n_pending else False
            saver.collected(batch, gpt, force=crash)
            if crash:
                raise JobFailed(f"fault injected after {n_collected} groups (manymodels.groups)")
            if show.active:  # groups done and failed so far, on the progress display
                n_done += sum(len(r["gids"]) for r in batch)
                n_bad += sum(bool(s.get("error")) for r in batch for s in r["stats"])
                groups.update(completed=n_done, info=f"{n_bad} failed")
    groups.done()
    del parts, refs, pending
    t_fit = time.perf_counter() - t0 - t_partition
    out = tabulate(cfg, results, keys)
    n_failed = out.metrics["n_failed"]
    if n_failed == n_groups:
        raise JobFailed(f"every group failed ({n_groups}); first errors: "
                        + "; ".join(out.info.pop("first_errors")))
    if n_failed:
        ctx.log.warning("%d of %d groups failed; e.g. %s", n_failed, n_groups,
                        "; ".join(out.info["first_errors"][:3]))
    out.metrics["n_rows_without_group"] = int(n_null)
    out.info["execution"] = {
        "partitions": len(units), "tasks": n_tasks, "groups_per_task": int(gpt),
        "groups_per_task_auto": cfg.groups_per_task is None,
        "formula_evaluated_per_batch_groups": int(sum(r["n_fast"] for r in results)),
        "engine": _engine_summary(cfg, results),
        **saver.ckpt.record(),
        "timings_s": {"partition": round(t_partition, 4), "fit": round(t_fit, 4),
                      "tabulate": round(time.perf_counter() - t0 - t_partition - t_fit, 4),
                      "worker_fit_total": round(sum(r["fit_s"] for r in results), 4),
                      "worker_fit_cpu_total": round(sum(r["cpu_s"] for r in results), 4),
                      "worker_partition_cpu_total": round(sum(h[2] for h in heads), 4),
                      "driver_cpu": round(time.process_time() - c0, 4)}}
    saver.ckpt.discard()  # the tables are in hand; _SUCCESS follows their writing
    return out


def _engine_summary(cfg: FitConfig, results: list[dict]) -> dict:
    """Which engine fitted how many groups, and why the vectorised one declined the rest."""
    from distml.jobs import _vectorised

    declined: dict[str, int] = {}
    for r in results:
        for why, n in r.get("declined", {}).items():
            declined[why] = declined.get(why, 0) + n
    return {"vectorised": int(sum(r.get("n_vectorised", 0) for r in results)),
            "out_of_scope": _vectorised.scope(cfg), "declined": declined}


def _checkpoints(spec, ctx, keys: pd.DataFrame):
    """The run's group checkpoints (:mod:`distml.jobs._groups_checkpoint`), valid only for
    this spec, these data and these groups."""
    from distml.jobs import _resume
    from distml.jobs._groups_checkpoint import FOLDER, GroupCheckpoints

    key = _resume.fingerprint(spec.to_dict(), ctx.data.fingerprint(), len(keys),
                              int(pd.util.hash_pandas_object(keys, index=False).sum()))
    return GroupCheckpoints(_resume.Checkpoints.for_run(ctx, FOLDER, key), len(keys))


def single_task(cfg: FitConfig, source: str, columns: list[str]) -> dict:
    """The one Ray task of a single model: read the columns, fit with statsmodels."""
    from distml.runtime.data import read_frame

    frame = read_frame(source, columns)
    cols = {c: column_array(frame[c]) for c in columns}
    batch = Batch(cols, np.array([0, len(frame)], dtype=np.int64), np.array([0]))
    return fit_batch(cfg, batch, fast=False, keep=True)


def run_single(spec, cfg: FitConfig, ctx) -> JobOutput:
    """One model in one Ray task; adds statsmodels' summary as ``summary.txt``."""
    import ray

    columns = cfg.model_columns()
    result = ray.get(ray.remote(single_task).options(**task_options(spec)).remote(
        cfg, spec.data.source, columns))
    stats = result["stats"][0]
    if stats.get("error"):
        if cfg.missing == "raise" and stats.get("n_missing"):
            raise DataError(f"data.source: {stats['error']}; drop those rows or set "
                            "model.missing: drop")
        raise JobFailed(f"statsmodels {cfg.method} fit failed: {stats['error']}")
    out = tabulate(cfg, [result], None)
    out.texts["summary.txt"] = result["summary"] or ""
    out.info.pop("first_errors", None)
    out.info["execution"] = {"tasks": 1, "timings_s": {"worker_fit": round(result["fit_s"], 4)}}
    return out


def tabulate(cfg: FitConfig, results: list[dict], keys: pd.DataFrame | None) -> JobOutput:
    """Tables and metrics from the tasks' columnar results (``keys`` None: a single model)."""
    results = sorted(results, key=lambda r: int(r["gids"][0]) if len(r["gids"]) else -1)
    gids = np.concatenate([r["gids"] for r in results])
    stat_cols = cfg.stat_columns()
    stats = pd.DataFrame([row for r in results for row in r["stats"]]).reindex(columns=stat_cols)
    stats["converged"] = stats["converged"].fillna(False).astype(bool)
    for c in ("error", "warnings"):
        stats[c] = stats[c].astype(object).where(stats[c].notna(), None)
    coef = _concat([r["coef"] for r in results if r["coef"] is not None])
    coef_df = pd.DataFrame({c: coef[c] for c in COEF_COLUMNS}) if coef else \
        pd.DataFrame({c: pd.Series(dtype=object if c == "term" else float) for c in COEF_COLUMNS})
    fc = _concat([r["forecast"] for r in results if r["forecast"] is not None])
    tables = {"coefficients": coef_df, "model_stats": stats}
    if cfg.forecast_steps:
        tables["forecast"] = pd.DataFrame({c: fc[c] for c in FORECAST_COLUMNS}) if fc else \
            pd.DataFrame(columns=FORECAST_COLUMNS)
    if keys is not None:
        tables["model_stats"] = _with_keys(keys, gids, stats)
        tables["coefficients"] = _with_keys(keys, coef["gid"] if coef else np.zeros(0, np.int64),
                                            coef_df)
        if "forecast" in tables:
            tables["forecast"] = _with_keys(keys, fc["gid"] if fc else np.zeros(0, np.int64),
                                            tables["forecast"])
    failed = stats["error"].notna()
    metrics: dict[str, Any] = {"method": cfg.method, "n_groups": int(len(stats)),
                               "n_fitted": int((~failed).sum()), "n_failed": int(failed.sum()),
                               "n_not_converged": int((~failed & ~stats["converged"]).sum()),
                               "nobs": float(stats["nobs"].where(~failed).sum())}
    if keys is None:
        row = stats.iloc[0]
        for c in stat_cols:
            v = row[c]
            if c in ("error", "warnings", "engine") or c.startswith(("valid_", "test_")) \
                    or pd.isna(v):
                continue
            metrics[c] = bool(v) if c == "converged" else (
                int(v) if c in ("n_rows", "n_missing", "ljung_box_lags") else float(v))
        metrics["n_params"] = int(len(coef_df))
    else:
        for c in ("r_squared", "pseudo_r_squared", "aic"):
            if c in stats and stats[c].notna().any():
                metrics[f"{c}_median"] = float(stats[c].median())
    for split in ("valid", "test"):
        pairs = [(y, p) for r in results for (s, y, p) in r["holdout"] if s == split]
        if pairs:
            metrics[split] = _pooled(cfg, np.concatenate([y for y, _ in pairs]),
                                     np.concatenate([p for _, p in pairs]))
    out = JobOutput(metrics=metrics, tables=tables)
    out.info["first_errors"] = [
        f"{_key_text(keys, g)}: {e}" for g, e in zip(gids[failed.to_numpy()],
                                                      stats["error"][failed].head(5))][:5]
    return out


def _with_keys(keys: pd.DataFrame, gid: np.ndarray, frame: pd.DataFrame) -> pd.DataFrame:
    left = keys.iloc[gid].reset_index(drop=True)
    return pd.concat([left, frame.reset_index(drop=True)], axis=1)


def _key_text(keys: pd.DataFrame | None, gid: int) -> str:
    if keys is None:
        return "model"
    return ", ".join(f"{c}={v}" for c, v in keys.iloc[int(gid)].items())


def _pooled(cfg: FitConfig, y: np.ndarray, pred: np.ndarray) -> dict:
    from distml.runtime import metrics as M

    if cfg.classification:
        return M.classification_metrics(y.astype(np.int64), (pred >= 0.5).astype(np.int64),
                                        np.column_stack([1 - pred, pred]), 2)
    return M.regression_metrics(y, pred)
