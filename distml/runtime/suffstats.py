"""Exact OLS/WLS on data bigger than one worker, from merged per-partition sufficient statistics.

Each partition contributes, for the whitened design ``Z = sqrt(w) * [X | y]``, the R factor of
its QR decomposition — the numerically stable form of X'WX, X'Wy and y'Wy (``R'R = Z'Z``) —
plus n, the weighted mean and centred sum of squares of y (Chan's merge), Σ log w, the column
minima/maxima of X and the R factor of ``sqrt(w) * [X | 1]`` (to detect an implicit constant as
statsmodels does). Two partitions merge by stacking their R factors and taking one more QR, so
the merged R equals the full data's up to row signs, and the estimates equal statsmodels' on the
concatenated data to rounding. Robust covariances need the residuals: a second pass with the
estimates adds up the HC "meat" (with leverages for HC2/HC3) or per-cluster score sums.

The inference formulas below are statsmodels' own (``RegressionResults``: ``ssr``,
``centered_tss``, ``rsquared``, ``llf``, ``info_criteria``, ``fvalue``, ``cov_HC*``,
``cov_cluster`` with its small-sample correction and ``df_resid_inference``); the tests compare
every figure with statsmodels on the same data held in memory.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from distml.errors import DataError, JobFailed, SpecError

MAX_PARTITION_BYTES = 128 << 20


@dataclass
class Moments:
    """Mergeable statistics of one or more partitions."""

    n: int = 0
    r_xy: np.ndarray | None = None  # R factor of sqrt(w)[X | y]
    r_x1: np.ndarray | None = None  # R factor of sqrt(w)[X | 1]
    w_sum: float = 0.0
    y_mean: float = 0.0  # weighted mean of y
    y_m2: float = 0.0  # weighted centred sum of squares of y
    log_w: float = 0.0
    x_min: np.ndarray | None = None
    x_max: np.ndarray | None = None

    def merge(self, other: "Moments") -> "Moments":
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        w = self.w_sum + other.w_sum
        delta = other.y_mean - self.y_mean
        return Moments(
            n=self.n + other.n, r_xy=_stack_r(self.r_xy, other.r_xy),
            r_x1=_stack_r(self.r_x1, other.r_x1), w_sum=w,
            y_mean=self.y_mean + delta * other.w_sum / w,
            y_m2=self.y_m2 + other.y_m2 + delta * delta * self.w_sum * other.w_sum / w,
            log_w=self.log_w + other.log_w, x_min=np.minimum(self.x_min, other.x_min),
            x_max=np.maximum(self.x_max, other.x_max))


def _stack_r(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.qr(np.vstack([a, b]), mode="r")


def partition_moments(X: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> Moments:
    """The sufficient statistics of one partition's rows."""
    n = len(y)
    if n == 0:
        return Moments()
    sw = np.ones(n) if w is None else np.sqrt(w)
    wx = X * sw[:, None]
    r_xy = np.linalg.qr(np.column_stack([wx, y * sw]), mode="r")
    r_x1 = np.linalg.qr(np.column_stack([wx, sw]), mode="r")
    ww = np.ones(n) if w is None else w
    w_sum = float(ww.sum())
    mean = float(np.dot(ww, y) / w_sum)
    return Moments(n=n, r_xy=r_xy, r_x1=r_x1, w_sum=w_sum, y_mean=mean,
                   y_m2=float(np.dot(ww, (y - mean) ** 2)),
                   log_w=float(np.log(w).sum()) if w is not None else 0.0,
                   x_min=X.min(axis=0), x_max=X.max(axis=0))


@dataclass
class Fit:
    """An OLS/WLS fit from merged moments, with statsmodels' inference figures."""

    names: list[str]
    params: np.ndarray
    ncov: np.ndarray  # (X'WX)^-1, statsmodels' normalized_cov_params
    nobs: int
    rank: int
    k_constant: int
    const_idx: int | None
    ssr: float
    centered_tss: float
    uncentered_tss: float
    log_w: float
    weighted: bool
    cov: np.ndarray | None = None
    use_t: bool = True
    df_inference: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def df_model(self) -> float:
        return float(self.rank - self.k_constant)

    @property
    def df_resid(self) -> float:
        return float(self.nobs - self.rank)


def solve(m: Moments, names: list[str], weighted: bool) -> Fit:
    """Estimates and (X'WX)^-1 from merged moments; a rank-deficient design is an error."""
    k = len(names)
    r = m.r_xy
    rxx, rxy, ryy = r[:k, :k], r[:k, k], float(r[k, k])
    # rank on scaled columns (R's column norms are the weighted design's): an ill-conditioned
    # but full-rank design is fitted, with numpy.matrix_rank's tolerance rule
    norms = np.sqrt((rxx ** 2).sum(axis=0))
    sv = np.linalg.svd(rxx / np.where(norms > 0, norms, 1.0), compute_uv=False)
    tol = sv.max(initial=0.0) * max(m.n, k) * np.finfo(float).eps
    rank = int((sv > tol).sum())
    if rank < k:
        raise JobFailed(f"singular design: rank {rank} < {k} columns ({', '.join(names)}); "
                        "drop collinear terms")
    from scipy.linalg import solve_triangular

    params = solve_triangular(rxx, rxy)
    rinv = solve_triangular(rxx, np.eye(k))
    ncov = rinv @ rinv.T
    const = [j for j in range(k) if m.x_min[j] == m.x_max[j] and m.x_min[j] != 0]
    one_resid = abs(float(m.r_x1[k, k]))
    implicit = one_resid <= math.sqrt(m.w_sum) * 1e-10 * max(1.0, k)
    k_constant = 1 if (const or implicit) else 0
    raw = np.linalg.svd(rxx, compute_uv=False)
    return Fit(names, params, ncov, m.n, rank, k_constant, const[0] if const else None,
               ssr=ryy * ryy, centered_tss=m.y_m2,
               uncentered_tss=m.y_m2 + m.w_sum * m.y_mean ** 2, log_w=m.log_w,
               weighted=weighted, extra={"condition_number": float(raw[0] / raw[-1])})


def inference(fit: Fit, cov_type: str, alpha: float, use_t: bool | None,
              meat: np.ndarray | None = None, n_clusters: int | None = None) -> tuple[dict, dict]:
    """(coefficient columns, model figures) exactly as statsmodels computes them."""
    from scipy import stats

    n, dfr = fit.nobs, fit.df_resid
    if cov_type == "nonrobust":
        fit.use_t = True if use_t is None else use_t
        fit.cov = fit.ssr / dfr * fit.ncov
    else:
        fit.use_t = False if use_t is None else use_t
        fit.cov = fit.ncov @ meat @ fit.ncov.T  # HC1's n / df_resid factor is in the meat
        if cov_type == "cluster":
            g = n_clusters
            fit.cov = fit.cov * (g / (g - 1.0) * ((n - 1.0) / float(n - len(fit.params))))
            fit.df_inference = g - 1
    df_inf = fit.df_inference if fit.df_inference is not None else dfr
    bse = np.sqrt(np.diag(fit.cov))
    t = fit.params / bse
    if fit.use_t:
        p = stats.t.sf(np.abs(t), df_inf) * 2
        q = stats.t.ppf(1 - alpha / 2, df_inf)
    else:
        p = stats.norm.sf(np.abs(t)) * 2
        q = stats.norm.ppf(1 - alpha / 2)
    coef = {"term": np.asarray(fit.names, dtype=object), "estimate": fit.params,
            "std_error": bse, "statistic": t, "p_value": p,
            "ci_low": fit.params - q * bse, "ci_high": fit.params + q * bse}
    tss = fit.centered_tss if fit.k_constant else fit.uncentered_tss
    r2 = 1 - fit.ssr / tss
    nobs2 = n / 2.0
    if fit.weighted:
        llf = -math.log(fit.ssr) * nobs2 - (1 + math.log(math.pi / nobs2)) * nobs2 \
            + 0.5 * fit.log_w
    else:
        llf = -nobs2 * math.log(2 * math.pi) - nobs2 * math.log(fit.ssr / n) - nobs2
    k_params = fit.df_model + fit.k_constant
    fvalue, f_pvalue = _f_test(fit, cov_type, tss, df_inf)
    figures = {"nobs": float(n), "r_squared": r2,
               "adj_r_squared": 1 - (n - fit.k_constant) / dfr * (1 - r2),
               "aic": -2 * llf + 2 * k_params, "bic": -2 * llf + math.log(n) * k_params,
               "llf": llf, "converged": True, "error": None, "df_model": fit.df_model,
               "df_resid": dfr, "fvalue": fvalue, "f_pvalue": f_pvalue}
    return coef, figures


def _f_test(fit: Fit, cov_type: str, tss: float, df_inf: float) -> tuple[float, float]:
    from scipy import stats

    if fit.df_model == 0:
        return float("nan"), float("nan")
    if cov_type == "nonrobust":
        fvalue = ((tss - fit.ssr) / fit.df_model) / (fit.ssr / fit.df_resid)
        return fvalue, float(stats.f.sf(fvalue, fit.df_model, fit.df_resid))
    k = len(fit.params)
    mat = np.eye(k)
    if fit.k_constant == 1:
        if fit.const_idx is None:
            return float("nan"), float("nan")  # implicit constant: statsmodels gives nan
        mat = np.delete(mat, fit.const_idx, axis=0)
    rb = mat @ fit.params
    f = float(rb @ np.linalg.pinv(mat @ fit.cov @ mat.T) @ rb) / mat.shape[0]
    return f, float(stats.f.sf(f, mat.shape[0], df_inf))


def robust_meat(X: np.ndarray, y: np.ndarray, w: np.ndarray | None, fit: Fit, cov_type: str,
                clusters: np.ndarray | None = None) -> tuple[np.ndarray | None, dict]:
    """Second pass on one partition: the HC meat, or score sums per cluster."""
    sw = np.ones(len(y)) if w is None else np.sqrt(w)
    wx = X * sw[:, None]
    wresid = (y - X @ fit.params) * sw
    if cov_type == "cluster":
        xu = wx * wresid[:, None]
        codes, uniques = pd.factorize(clusters, sort=False)
        sums = np.zeros((len(uniques), xu.shape[1]))
        np.add.at(sums, codes, xu)
        return None, dict(zip(uniques.tolist(), sums))
    if cov_type in ("HC2", "HC3"):
        h = np.einsum("ij,ik,kj->i", wx, wx, fit.ncov)
        scale = wresid ** 2 / (1 - h) if cov_type == "HC2" else (wresid / (1 - h)) ** 2
    else:
        scale = wresid ** 2
        if cov_type == "HC1":
            scale = fit.nobs / fit.df_resid * scale
    return (wx * scale[:, None]).T @ wx, {}


# --------------------------------------------------------------------------- the job path

def _design_for(cfg, proto: pd.DataFrame | None, frame: pd.DataFrame):
    """(X, y, w, clusters, names, offset) of one partition, rows with missing values removed
    (offset: the GLM offset plus log(exposure), zeros without either)."""
    from distml.jobs._manymodels import _env, _is_missing, column_array

    cols = {c: column_array(frame[c]) for c in frame.columns}
    miss = np.zeros(len(frame), dtype=bool)
    for c in cfg.model_columns():
        miss |= _is_missing(cols[c])
    if miss.any() and cfg.missing == "raise":
        raise DataError(f"data.source: {int(miss.sum())} rows have missing values in "
                        f"{cfg.model_columns()} (model.missing is 'raise'); drop those rows or "
                        "set model.missing: drop")
    keep = ~miss
    cols = {c: v[keep] for c, v in cols.items()}
    if cfg.formula is not None:
        import patsy

        y_info, x_info = (m.design_info for m in patsy.dmatrices(
            cfg.formula, proto, eval_env=patsy.EvalEnvironment([_env()]), NA_action="raise"))
        data = pd.DataFrame({c: cols[c] for c in cfg.finfo.columns}, copy=False)
        ym, xm = patsy.build_design_matrices([y_info, x_info], data, NA_action="drop",
                                             return_type="dataframe")
        rows = np.asarray(xm.index, dtype=np.int64)
        X, y, names = xm.to_numpy(dtype=float), ym.to_numpy(dtype=float)[:, 0], list(xm.columns)
    else:
        rows = np.arange(len(cols[cfg.endog]))
        y = cols[cfg.endog].astype(float)
        parts = [cols[c].astype(float) for c in cfg.exog]
        names = list(cfg.exog)
        if cfg.add_constant:
            parts, names = [np.ones(len(y))] + parts, ["const"] + names
        X = np.column_stack(parts) if parts else np.zeros((len(y), 0))
    w = cols[cfg.weights][rows].astype(float) if cfg.weights else None
    clusters = cols[cfg.cov_groups][rows] if cfg.cov_groups else None
    offset = np.zeros(len(y))
    if cfg.offset:
        offset += cols[cfg.offset][rows].astype(float)
    if cfg.exposure:
        offset += np.log(cols[cfg.exposure][rows].astype(float))
    return X, y, w, clusters, names, offset


def _levels_task(unit, columns: list[str]) -> dict[str, list]:
    from distml.jobs._manymodels import read_unit

    frame = read_unit(unit, columns)
    return {c: pd.unique(frame[c].dropna()).tolist() for c in columns}


def _moments_task(unit, cfg, proto, columns: list[str]) -> tuple[Moments, list[str]]:
    from distml.jobs._manymodels import read_unit

    X, y, w, _, names, _ = _design_for(cfg, proto, read_unit(unit, columns))
    return partition_moments(X, y, w), names


def _meat_task(unit, cfg, proto, columns: list[str], fit: Fit) -> tuple:
    from distml.jobs._manymodels import read_unit

    X, y, w, clusters, _, _ = _design_for(cfg, proto, read_unit(unit, columns))
    return robust_meat(X, y, w, fit, cfg.cov_type, clusters)


def _prototype(cfg, schema: dict[str, str], levels: dict[str, list]) -> pd.DataFrame | None:
    """A tiny frame with every level of each categorical column: patsy builds the same design
    from it as from the whole data (the formula is row-wise: checked by the caller)."""
    if cfg.formula is None:
        return None
    from distml.runtime.data import is_numeric_dtype

    n = max([1] + [len(v) for v in levels.values()])
    out = {}
    for c in cfg.finfo.columns:
        if c in levels:
            vals = levels[c]
            if not vals:
                raise DataError(f"model.formula: column {c!r} has no non-missing values")
            out[c] = pd.Series(np.resize(np.asarray(vals, dtype=object), n), dtype=object)
            if all(isinstance(v, (bool, np.bool_)) for v in vals):
                out[c] = out[c].astype(bool)
            elif is_numeric_dtype(schema.get(c, "")):
                out[c] = out[c].astype(float)
        else:
            out[c] = np.ones(n)
    return pd.DataFrame(out)


def run_job(spec, cfg, ctx):
    """The suffstats path of the statsmodels kind: two or three passes of Ray tasks."""
    import ray

    from distml.jobs._manymodels import _task_options, plan_units
    from distml.jobs.base import JobOutput
    from distml.runtime.data import is_categorical_dtype

    if cfg.formula is not None and not cfg.finfo.rowwise:
        raise SpecError("model.solver suffstats needs a row-wise formula (no center(), "
                        "standardize(), splines or explicit contrasts); got "
                        f"{cfg.formula!r}")
    t0 = time.perf_counter()
    info = ctx.data.source
    cpus = max(1, int(ctx.cluster.resources.get("CPU", 1) or 1)) if ctx.cluster else 1
    units = plan_units(info, cpus, max_bytes=MAX_PARTITION_BYTES)
    columns = cfg.model_columns()
    opts = _task_options(spec)
    levels: dict[str, list] = {}
    if cfg.formula is not None:
        cat = sorted(set(cfg.finfo.categorical.values())
                     | {c for c in cfg.finfo.columns if is_categorical_dtype(info.columns[c])})
        if cat:
            found = ray.get([ray.remote(_levels_task).options(**opts).remote(u, cat)
                             for u in units])
            for c in cat:
                levels[c] = list(dict.fromkeys(v for f in found for v in f[c]))
    proto = _prototype(cfg, info.columns, levels)
    if cfg.method == "glm":
        from distml.jobs._glm_irls import run_glm

        return run_glm(spec, cfg, ctx, units, proto, columns, opts)
    parts = ray.get([ray.remote(_moments_task).options(**opts).remote(u, cfg, proto, columns)
                     for u in units])
    names = next((nm for m, nm in parts if m.n), parts[0][1])
    merged = Moments()
    for m, _ in parts:
        merged = merged.merge(m)
    if merged.n == 0:
        raise DataError(f"data.source: no rows left in {spec.data.source!r} after dropping "
                        "missing values")
    fit = solve(merged, names, weighted=cfg.weights is not None)
    meat, n_clusters = None, None
    if cfg.cov_type != "nonrobust":
        out = ray.get([ray.remote(_meat_task).options(**opts).remote(u, cfg, proto, columns, fit)
                       for u in units])
        if cfg.cov_type == "cluster":
            sums: dict[Any, np.ndarray] = {}
            for _, d in out:
                for key, v in d.items():
                    sums[key] = sums[key] + v if key in sums else v
            s = np.array(list(sums.values()))
            meat, n_clusters = s.T @ s, len(sums)
        else:
            meat = sum(m for m, _ in out)
    coef, figures = inference(fit, cfg.cov_type, cfg.alpha, cfg.use_t, meat, n_clusters)
    figures.update(n_rows=None, n_missing=None, warnings=None, engine="suffstats",
                   condition_number=fit.extra["condition_number"])
    stats = pd.DataFrame([figures]).reindex(columns=cfg.stat_columns())
    stats["n_rows"] = stats["n_missing"] = pd.NA
    metrics = {"method": cfg.method, "n_groups": 1, "n_fitted": 1, "n_failed": 0,
               "n_not_converged": 0, **{k: v for k, v in figures.items()
                                         if k not in ("error", "n_rows", "n_missing",
                                                      "warnings", "engine")},
               "n_params": len(names)}
    out = JobOutput(metrics=metrics, tables={"coefficients": pd.DataFrame(coef),
                                             "model_stats": stats})
    out.texts["summary.txt"] = summary_text(cfg, coef, figures)
    out.info["execution"] = {"partitions": len(units),
                             "passes": 2 + (cfg.cov_type != "nonrobust") + bool(levels),
                             "timings_s": {"total": round(time.perf_counter() - t0, 4)}}
    return out


def summary_text(cfg, coef: dict, figures: dict) -> str:
    """A compact summary in statsmodels' layout (no results object exists on this path)."""
    head = (f"{cfg.method.upper()} Regression Results (sufficient statistics, exact)\n"
            f"Dep. Variable: {cfg.finfo.lhs[0] if cfg.finfo else cfg.endog}    "
            f"No. Observations: {int(figures['nobs'])}    Covariance Type: {cfg.cov_type}\n")
    if cfg.method == "glm":
        head += (f"Family: {cfg.family or 'gaussian'}    Link: {cfg.link or 'canonical'}    "
                 f"Deviance: {figures['deviance']:.6g}    Pearson chi2: "
                 f"{figures['pearson_chi2']:.6g}    Scale: {figures['scale']:.6g}\n"
                 f"Log-Likelihood: {figures['llf']:.6g}    AIC: {figures['aic']:.6g}    "
                 f"BIC: {figures['bic']:.6g}    Pseudo R-squ. (CS): "
                 f"{figures['pseudo_r_squared']:.6g}    Converged: {figures['converged']}\n")
    else:
        head += (f"R-squared: {figures['r_squared']:.6g}    Adj. R-squared: "
                 f"{figures['adj_r_squared']:.6g}    F-statistic: {figures['fvalue']:.6g} "
                 f"(p={figures['f_pvalue']:.4g})\n"
                 f"Log-Likelihood: {figures['llf']:.6g}    AIC: {figures['aic']:.6g}    "
                 f"BIC: {figures['bic']:.6g}    Df Residuals: {figures['df_resid']:.0f}\n")
    table = pd.DataFrame({k: coef[k] for k in ("estimate", "std_error", "statistic", "p_value",
                                               "ci_low", "ci_high")},
                         index=list(coef["term"])).to_string(float_format=lambda v: f"{v:.6g}")
    return head + "=" * 78 + "\n" + table + "\n"
