"""The sufficient-statistics path of the statsmodels kind (``model.solver: suffstats``): one
OLS/WLS over data bigger than one worker, from per-partition statistics merged on the driver
(the numerics are in :mod:`distml.runtime.suffstats`; a GLM takes :mod:`distml.jobs.statsmodels.glm_irls`).

Partitions come from the one planner (:func:`distml.runtime.plan.by_count`, none bigger than
:data:`MAX_PARTITION_BYTES` on disk) and are read by :func:`distml.runtime.read.read_partition`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from distml.errors import DataError, SpecError
from distml.runtime.read import read_partition
from distml.runtime.suffstats import Fit, Moments, inference, partition_moments, robust_meat, solve

MAX_PARTITION_BYTES = 128 << 20


def design_for(cfg, proto: pd.DataFrame | None, frame: pd.DataFrame):
    """(X, y, w, clusters, names, offset) of one partition, rows with missing values removed
    (offset: the GLM offset plus log(exposure), zeros without either)."""
    from distml.jobs.statsmodels.batch import is_missing
    from distml.jobs.statsmodels.fit import formula_env
    from distml.jobs.statsmodels.many import column_array

    cols = {c: column_array(frame[c]) for c in frame.columns}
    miss = np.zeros(len(frame), dtype=bool)
    for c in cfg.model_columns():
        miss |= is_missing(cols[c])
    if miss.any() and cfg.missing == "raise":
        raise DataError(
            f"data.source: {int(miss.sum())} rows have missing values in "
            f"{cfg.model_columns()} (model.missing is 'raise'); drop those rows or "
            "set model.missing: drop"
        )
    keep = ~miss
    cols = {c: v[keep] for c, v in cols.items()}
    if cfg.formula is not None:
        import patsy

        y_info, x_info = (
            m.design_info
            for m in patsy.dmatrices(
                cfg.formula,
                proto,
                eval_env=patsy.EvalEnvironment([formula_env()]),
                NA_action="raise",
            )
        )
        data = pd.DataFrame({c: cols[c] for c in cfg.finfo.columns}, copy=False)
        ym, xm = patsy.build_design_matrices(
            [y_info, x_info], data, NA_action="drop", return_type="dataframe"
        )
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
    frame = read_partition(unit, columns)
    return {c: pd.unique(frame[c].dropna()).tolist() for c in columns}


def _moments_task(unit, cfg, proto, columns: list[str]) -> tuple[Moments, list[str]]:
    X, y, w, _, names, _ = design_for(cfg, proto, read_partition(unit, columns))
    return partition_moments(X, y, w), names


def _meat_task(unit, cfg, proto, columns: list[str], fit: Fit) -> tuple:
    X, y, w, clusters, _, _ = design_for(cfg, proto, read_partition(unit, columns))
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

    from distml.jobs.base import JobOutput
    from distml.jobs.statsmodels.many import runner
    from distml.runtime import plan
    from distml.runtime.data import is_categorical_dtype

    if cfg.formula is not None and not cfg.finfo.rowwise:
        raise SpecError(
            "model.solver suffstats needs a row-wise formula (no center(), "
            "standardize(), splines or explicit contrasts); got "
            f"{cfg.formula!r}"
        )
    t0 = time.perf_counter()
    info = ctx.data.source
    cpus = max(1, int(ctx.cluster.resources.get("CPU", 1) or 1)) if ctx.cluster else 1
    units = plan.by_count(info, 2 * cpus, max_bytes=MAX_PARTITION_BYTES)
    columns = cfg.model_columns()
    tasks = runner(spec)
    levels: dict[str, list] = {}
    if cfg.formula is not None:
        cat = sorted(
            set(cfg.finfo.categorical.values())
            | {c for c in cfg.finfo.columns if is_categorical_dtype(info.columns[c])}
        )
        if cat:
            found = ray.get(tasks.map(_levels_task, units, cat))
            for c in cat:
                levels[c] = list(dict.fromkeys(v for f in found for v in f[c]))
    proto = _prototype(cfg, info.columns, levels)
    if cfg.method == "glm":
        from distml.jobs.statsmodels.glm_irls import run_glm

        return run_glm(spec, cfg, ctx, units, proto, columns, tasks)
    parts = ray.get(tasks.map(_moments_task, units, cfg, proto, columns))
    names = next((nm for m, nm in parts if m.n), parts[0][1])
    merged = Moments()
    for m, _ in parts:
        merged = merged.merge(m)
    if merged.n == 0:
        raise DataError(
            f"data.source: no rows left in {spec.data.source!r} after dropping missing values"
        )
    fit = solve(merged, names, weighted=cfg.weights is not None)
    meat, n_clusters = None, None
    if cfg.cov_type != "nonrobust":
        out = ray.get(tasks.map(_meat_task, units, cfg, proto, columns, fit))
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
    figures.update(
        n_rows=None,
        n_missing=None,
        warnings=None,
        engine="suffstats",
        condition_number=fit.extra["condition_number"],
    )
    stats = pd.DataFrame([figures]).reindex(columns=cfg.stat_columns())
    stats["n_rows"] = stats["n_missing"] = pd.NA
    metrics = {
        "method": cfg.method,
        "n_groups": 1,
        "n_fitted": 1,
        "n_failed": 0,
        "n_not_converged": 0,
        **{
            k: v
            for k, v in figures.items()
            if k not in ("error", "n_rows", "n_missing", "warnings", "engine")
        },
        "n_params": len(names),
    }
    out = JobOutput(
        metrics=metrics, tables={"coefficients": pd.DataFrame(coef), "model_stats": stats}
    )
    out.texts["summary.txt"] = summary_text(cfg, coef, figures)
    out.info["execution"] = {
        "partitions": len(units),
        "passes": 2 + (cfg.cov_type != "nonrobust") + bool(levels),
        "timings_s": {"total": round(time.perf_counter() - t0, 4)},
    }
    return out


def summary_text(cfg, coef: dict, figures: dict) -> str:
    """A compact summary in statsmodels' layout (no results object exists on this path)."""
    head = (
        f"{cfg.method.upper()} Regression Results (sufficient statistics, exact)\n"
        f"Dep. Variable: {cfg.finfo.lhs[0] if cfg.finfo else cfg.endog}    "
        f"No. Observations: {int(figures['nobs'])}    Covariance Type: {cfg.cov_type}\n"
    )
    if cfg.method == "glm":
        head += (
            f"Family: {cfg.family or 'gaussian'}    Link: {cfg.link or 'canonical'}    "
            f"Deviance: {figures['deviance']:.6g}    Pearson chi2: "
            f"{figures['pearson_chi2']:.6g}    Scale: {figures['scale']:.6g}\n"
            f"Log-Likelihood: {figures['llf']:.6g}    AIC: {figures['aic']:.6g}    "
            f"BIC: {figures['bic']:.6g}    Pseudo R-squ. (CS): "
            f"{figures['pseudo_r_squared']:.6g}    Converged: {figures['converged']}\n"
        )
    else:
        head += (
            f"R-squared: {figures['r_squared']:.6g}    Adj. R-squared: "
            f"{figures['adj_r_squared']:.6g}    F-statistic: {figures['fvalue']:.6g} "
            f"(p={figures['f_pvalue']:.4g})\n"
            f"Log-Likelihood: {figures['llf']:.6g}    AIC: {figures['aic']:.6g}    "
            f"BIC: {figures['bic']:.6g}    Df Residuals: {figures['df_resid']:.0f}\n"
        )
    table = pd.DataFrame(
        {
            k: coef[k]
            for k in ("estimate", "std_error", "statistic", "p_value", "ci_low", "ci_high")
        },
        index=list(coef["term"]),
    ).to_string(float_format=lambda v: f"{v:.6g}")
    return head + "=" * 78 + "\n" + table + "\n"
