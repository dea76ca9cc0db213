"""One GLM over data larger than memory: distributed IRLS (``solver: suffstats`` for glm).

Each IRLS iteration is one parallel pass over the partitions: a partition computes, at the
current estimates, its deviance and Pearson χ² and the R factor of the QR of its whitened working
design ``sqrt(W)·[X | z]`` (the stable form of its XᵀWX and XᵀWz); the driver stacks the R
factors (one more QR), solves for the next estimates and decides convergence. The iteration is
statsmodels' ``GLM._fit_irls`` step for step — the same start, working response, weights and
rule (|Δ deviance/scale| ≤ 1e-8, the scale of the previous iterate) — so the estimates, the
covariance (from the last WLS step, as statsmodels takes it) and every figure equal statsmodels
GLM on the same data in memory to rounding (the tests hold them to 1e-8). A pass before the
first gathers Σy and Σw (the start and the null model's mean); a last pass adds up the
log-likelihood of the model and of the null model. Memory per task is one partition.

Spark's GLM solves normal equations and is capped at 4,096 features; the R-factor merge keeps
the condition number of the design, not its square.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pandas as pd

from distml.errors import JobFailed

TOL = 1e-8  # statsmodels' default IRLS tolerance on the deviance criterion


def _family(cfg):
    from distml.jobs.statsmodels.fit import glm_family

    return glm_family(cfg)


def _frame(unit, cfg, proto, columns):
    from distml.jobs.statsmodels.suffstats import design_for
    from distml.runtime.read import read_partition

    X, y, w, _, names, offset = design_for(cfg, proto, read_partition(unit, columns))
    vw = np.ones(len(y)) if w is None else w
    return X, y, vw, offset, names


def _sums_task(unit, cfg, proto, columns) -> dict:
    X, y, vw, _, names = _frame(unit, cfg, proto, columns)
    return {
        "n": len(y),
        "y": float(y.sum()),
        "wy": float(vw @ y),
        "w": float(vw.sum()),
        "names": names,
        "k": X.shape[1],
    }


def _pass_task(unit, cfg, proto, columns, beta, ymean: float, null: bool) -> dict:
    """One IRLS step on one partition at ``beta`` (None: statsmodels' starting values)."""
    X, y, vw, off, _ = _frame(unit, cfg, proto, columns)
    if null:
        X = np.ones((len(y), 1))
    fam = _family(cfg)
    if beta is None and null:
        lin = np.full(len(y), fam.link(ymean)) + off
        mu = fam.fitted(lin)
    elif beta is None:
        mu = (y + 0.5) / 2 if (cfg.family or "gaussian") == "binomial" else (y + ymean) / 2
        lin = fam.link(mu)
    else:
        lin = X @ beta + off
        mu = fam.fitted(lin)
    wts = vw * fam.weights(mu)
    z = lin + fam.link.deriv(mu) * (y - mu) - off
    sw = np.sqrt(wts)
    r = (
        np.linalg.qr(np.column_stack([X * sw[:, None], z * sw]), mode="r")
        if len(y)
        else np.zeros((0, X.shape[1] + 1))
    )
    return {
        "n": len(y),
        "dev": float((fam._resid_dev(y, mu) * vw).sum()),
        "pearson": float((vw * (y - mu) ** 2 / fam.variance(mu)).sum()),
        "far": int((np.abs(mu - y) > 1e-8).sum()),
        "r": r,
    }


def _loglike_task(
    unit, cfg, proto, columns, beta, null_beta, null_mean, scale: float, llf_scale: float
) -> tuple[float, float]:
    X, y, vw, off, _ = _frame(unit, cfg, proto, columns)
    fam = _family(cfg)
    mu = fam.fitted(X @ beta + off)
    null_mu = (
        np.full(len(y), null_mean)
        if null_beta is None
        else fam.fitted(np.full(len(y), null_beta[0]) + off)
    )
    return (
        float(fam.loglike_obs(y, mu, var_weights=vw, scale=llf_scale).sum()),
        float(fam.loglike_obs(y, null_mu, var_weights=vw, scale=scale).sum()),
    )


def _merge(rs: list[np.ndarray]) -> np.ndarray:
    return np.linalg.qr(np.vstack([r for r in rs if len(r)]), mode="r")


def _irls(run_pass, k: int, fixed: bool, n: int, maxiter: int) -> dict:
    """statsmodels' IRLS loop, one ``run_pass(beta)`` (a pass over the data) per iteration."""
    from scipy.linalg import solve_triangular

    beta, crit_prev, scale_prev, r_prev = None, None, None, None
    history = []
    converged, it = False, 0
    for it in range(maxiter + 1):
        parts = run_pass(beta)
        dev = sum(p["dev"] for p in parts)
        pearson = sum(p["pearson"] for p in parts)
        scale = 1.0 if fixed else pearson / (n - k)
        crit = dev / (scale if it == 0 else scale_prev)
        history.append(dev)
        if it > 0 and abs(crit - crit_prev) <= TOL:
            converged = True
            break
        if it == maxiter:
            break
        r = _merge([p["r"] for p in parts])
        rxx, rxz = r[:k, :k], r[:k, k]
        norms = np.sqrt((rxx**2).sum(axis=0))
        sv = np.linalg.svd(rxx / np.where(norms > 0, norms, 1.0), compute_uv=False)
        rank = int((sv > sv.max(initial=0.0) * max(n, k) * np.finfo(float).eps).sum())
        if rank < k:
            raise JobFailed(f"singular design: rank {rank} < {k} columns; drop collinear terms")
        beta = solve_triangular(rxx, rxz)
        crit_prev, scale_prev, r_prev = crit, scale, rxx
    rinv = np.linalg.inv(r_prev)
    raw = np.linalg.svd(r_prev, compute_uv=False)
    return {
        "beta": beta,
        "ncov": rinv @ rinv.T,
        "dev": dev,
        "pearson": pearson,
        "scale": scale,
        "converged": converged,
        "iterations": it,
        "separated": sum(p["far"] for p in parts) == 0,
        "history": history,
        "condition_number": float(raw[0] / raw[-1]),
    }


def run_glm(spec, cfg, ctx, units, proto, columns, tasks) -> Any:
    """The out-of-core GLM job: Σ pass, IRLS passes, log-likelihood pass; statsmodels' tables
    (``tasks``: the :class:`distml.runtime.tasks.Runner` of the statsmodels paths)."""
    import ray
    from scipy import stats

    from distml.jobs.base import JobOutput
    from distml.jobs.statsmodels.suffstats import summary_text

    t0 = time.perf_counter()
    sums = ray.get(tasks.map(_sums_task, units, cfg, proto, columns))
    n = sum(s["n"] for s in sums)
    names = next((s["names"] for s in sums if s["n"]), sums[0]["names"])
    k = len(names)
    if n <= k:
        raise JobFailed(f"too few rows: {n} rows for {k} parameters")
    ymean = sum(s["y"] for s in sums) / n
    null_mean = sum(s["wy"] for s in sums) / sum(s["w"] for s in sums)
    fixed = (cfg.family or "gaussian") in ("binomial", "poisson")
    maxiter = cfg.maxiter or 100
    passes = [1]

    def run_pass(null: bool):
        def go(beta):
            passes[0] += 1
            return ray.get(tasks.map(_pass_task, units, cfg, proto, columns, beta, ymean, null))

        return go

    fit = _irls(run_pass(False), k, fixed, n, maxiter)
    null_beta = None
    if cfg.offset or cfg.exposure:  # the null model needs its own IRLS (statsmodels' `null`)
        null_beta = _irls(run_pass(True), 1, fixed, n, 100)["beta"]
    fam_name, link = cfg.family or "gaussian", cfg.link
    llf_scale = fit["scale"]
    if fam_name == "gaussian" and (link or "identity") == "identity":
        llf_scale = fit["pearson"] / n  # the concentrated log-likelihood, as statsmodels
    lls = ray.get(
        tasks.map(
            _loglike_task,
            units,
            cfg,
            proto,
            columns,
            fit["beta"],
            null_beta,
            null_mean,
            fit["scale"],
            llf_scale,
        )
    )
    passes[0] += 1
    llf, llnull = sum(a for a, _ in lls), sum(b for _, b in lls)
    beta = fit["beta"]
    cov = fit["scale"] * fit["ncov"]
    bse = np.sqrt(np.diag(cov))
    z = beta / bse
    df_resid = float(n - k)
    if cfg.use_t:
        p = 2 * stats.t.sf(np.abs(z), df_resid)
        q = stats.t.ppf(1 - cfg.alpha / 2, df_resid)
    else:
        p = 2 * stats.norm.sf(np.abs(z))
        q = stats.norm.ppf(1 - cfg.alpha / 2)
    coef = {
        "term": np.asarray(names, dtype=object),
        "estimate": beta,
        "std_error": bse,
        "statistic": z,
        "p_value": p,
        "ci_low": beta - q * bse,
        "ci_high": beta + q * bse,
    }
    df_model = float(k - 1)
    warnings = None
    if fit["separated"]:
        warnings = (
            "PerfectSeparationWarning: Perfect separation or prediction detected, "
            "parameter may not be identified"
        )
    figures = {
        "nobs": float(n),
        "r_squared": None,
        "adj_r_squared": None,
        "aic": -2 * llf + 2 * (df_model + 1),
        "bic": -2 * llf + math.log(n) * (df_model + 1),
        "llf": llf,
        "converged": fit["converged"],
        "error": None,
        "df_model": df_model,
        "df_resid": df_resid,
        "deviance": fit["dev"],
        "pearson_chi2": fit["pearson"],
        "scale": fit["scale"],
        "pseudo_r_squared": 1 - math.exp((llnull - llf) * (2 / n)),
        "n_rows": None,
        "n_missing": None,
        "warnings": warnings,
        "engine": "suffstats",
        "condition_number": fit["condition_number"],
    }
    stats_df = pd.DataFrame([figures]).reindex(columns=cfg.stat_columns())
    stats_df["n_rows"] = stats_df["n_missing"] = pd.NA
    metrics = {
        "method": cfg.method,
        "n_groups": 1,
        "n_fitted": 1,
        "n_failed": 0,
        "n_not_converged": int(not fit["converged"]),
        **{
            key: v
            for key, v in figures.items()
            if key
            not in (
                "error",
                "n_rows",
                "n_missing",
                "warnings",
                "engine",
                "r_squared",
                "adj_r_squared",
            )
        },
        "n_params": k,
        "iterations": fit["iterations"],
    }
    if not fit["converged"]:
        ctx.log.warning("IRLS did not converge in %d iterations (model.maxiter)", maxiter)
    out = JobOutput(
        metrics=metrics, tables={"coefficients": pd.DataFrame(coef), "model_stats": stats_df}
    )
    out.texts["summary.txt"] = summary_text(cfg, coef, figures)
    out.info["execution"] = {
        "partitions": len(units),
        "passes": passes[0],
        "irls_iterations": fit["iterations"],
        "timings_s": {"total": round(time.perf_counter() - t0, 4)},
    }
    return out
