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
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from distml.errors import JobFailed


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
            n=self.n + other.n,
            r_xy=_stack_r(self.r_xy, other.r_xy),
            r_x1=_stack_r(self.r_x1, other.r_x1),
            w_sum=w,
            y_mean=self.y_mean + delta * other.w_sum / w,
            y_m2=self.y_m2 + other.y_m2 + delta * delta * self.w_sum * other.w_sum / w,
            log_w=self.log_w + other.log_w,
            x_min=np.minimum(self.x_min, other.x_min),
            x_max=np.maximum(self.x_max, other.x_max),
        )


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
    return Moments(
        n=n,
        r_xy=r_xy,
        r_x1=r_x1,
        w_sum=w_sum,
        y_mean=mean,
        y_m2=float(np.dot(ww, (y - mean) ** 2)),
        log_w=float(np.log(w).sum()) if w is not None else 0.0,
        x_min=X.min(axis=0),
        x_max=X.max(axis=0),
    )


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
    norms = np.sqrt((rxx**2).sum(axis=0))
    sv = np.linalg.svd(rxx / np.where(norms > 0, norms, 1.0), compute_uv=False)
    tol = sv.max(initial=0.0) * max(m.n, k) * np.finfo(float).eps
    rank = int((sv > tol).sum())
    if rank < k:
        raise JobFailed(
            f"singular design: rank {rank} < {k} columns ({', '.join(names)}); drop collinear terms"
        )
    from scipy.linalg import solve_triangular

    params = solve_triangular(rxx, rxy)
    rinv = solve_triangular(rxx, np.eye(k))
    ncov = rinv @ rinv.T
    const = [j for j in range(k) if m.x_min[j] == m.x_max[j] and m.x_min[j] != 0]
    one_resid = abs(float(m.r_x1[k, k]))
    implicit = one_resid <= math.sqrt(m.w_sum) * 1e-10 * max(1.0, k)
    k_constant = 1 if (const or implicit) else 0
    raw = np.linalg.svd(rxx, compute_uv=False)
    return Fit(
        names,
        params,
        ncov,
        m.n,
        rank,
        k_constant,
        const[0] if const else None,
        ssr=ryy * ryy,
        centered_tss=m.y_m2,
        uncentered_tss=m.y_m2 + m.w_sum * m.y_mean**2,
        log_w=m.log_w,
        weighted=weighted,
        extra={"condition_number": float(raw[0] / raw[-1])},
    )


def inference(
    fit: Fit,
    cov_type: str,
    alpha: float,
    use_t: bool | None,
    meat: np.ndarray | None = None,
    n_clusters: int | None = None,
) -> tuple[dict, dict]:
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
    coef = {
        "term": np.asarray(fit.names, dtype=object),
        "estimate": fit.params,
        "std_error": bse,
        "statistic": t,
        "p_value": p,
        "ci_low": fit.params - q * bse,
        "ci_high": fit.params + q * bse,
    }
    tss = fit.centered_tss if fit.k_constant else fit.uncentered_tss
    r2 = 1 - fit.ssr / tss
    nobs2 = n / 2.0
    if fit.weighted:
        llf = -math.log(fit.ssr) * nobs2 - (1 + math.log(math.pi / nobs2)) * nobs2 + 0.5 * fit.log_w
    else:
        llf = -nobs2 * math.log(2 * math.pi) - nobs2 * math.log(fit.ssr / n) - nobs2
    k_params = fit.df_model + fit.k_constant
    fvalue, f_pvalue = _f_test(fit, cov_type, tss, df_inf)
    figures = {
        "nobs": float(n),
        "r_squared": r2,
        "adj_r_squared": 1 - (n - fit.k_constant) / dfr * (1 - r2),
        "aic": -2 * llf + 2 * k_params,
        "bic": -2 * llf + math.log(n) * k_params,
        "llf": llf,
        "converged": True,
        "error": None,
        "df_model": fit.df_model,
        "df_resid": dfr,
        "fvalue": fvalue,
        "f_pvalue": f_pvalue,
    }
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


def robust_meat(
    X: np.ndarray,
    y: np.ndarray,
    w: np.ndarray | None,
    fit: Fit,
    cov_type: str,
    clusters: np.ndarray | None = None,
) -> tuple[np.ndarray | None, dict]:
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
        scale = wresid**2 / (1 - h) if cov_type == "HC2" else (wresid / (1 - h)) ** 2
    else:
        scale = wresid**2
        if cov_type == "HC1":
            scale = fit.nobs / fit.df_resid * scale
    return (wx * scale[:, None]).T @ wx, {}
