"""Fitting a batch of groups in one Ray task: one design for the batch where that is provably
the same as per-group formulas, the vectorised engine where it applies, statsmodels otherwise."""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from distml.jobs.statsmodels.fit import (
    FitConfig,
    GroupData,
    formula_env,
    glm_family,
    run_group,
    warning_text,
)

#: statsmodels methods by family (the kind's spec checks use them too)

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
    n_missing = (
        np.bincount(gid_of_row[miss], minlength=len(n_rows))
        if miss.any()
        else np.zeros(len(n_rows), dtype=np.int64)
    )
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
        y, X = mgr.get_matrices(
            cfg.formula,
            frame,
            eval_env=formula_env(),
            pandas=True,
            na_action=mgr.get_na_action("drop"),
        )
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
            self.levels.append(
                (np.asarray(frame[col].to_numpy(), dtype=object), len(finfo.categories))
            )

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
    errors = [
        _precheck(cfg, n_rows[i], n_missing[i], int(bounds[i + 1] - bounds[i]))
        for i in range(len(batch.gids))
    ]
    engine: dict[int, tuple[dict, dict]] = {}
    declined: dict[str, int] = {}
    if fast and design is not None and len(batch.gids) > 1:
        from distml.jobs.statsmodels import engine as _vectorised

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
                stats["warnings"] = "; ".join(
                    filter(None, [stats.get("warnings"), f"forecast failed: {e}"])
                )
        if keep:
            summary = _summary(res, cfg)
    return {
        "gids": np.asarray(batch.gids, dtype=np.int64),
        "stats": stats_rows,
        "coef": concat(coef_parts),
        "forecast": concat(forecasts),
        "holdout": holdout,
        "summary": summary,
        "fit_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "n_fast": int(n_fast),
        "n_vectorised": len(engine),
        "declined": declined,
    }


def _precheck(cfg: FitConfig, n_rows: int, n_missing: int, n_left: int) -> str | None:
    """Why a group is not fitted at all (missing values, too few rows), or None."""
    if cfg.missing == "raise" and n_missing:
        return (
            f"{int(n_missing)} of {int(n_rows)} rows have missing values (model.missing is 'raise')"
        )
    if n_left == 0:
        return "no rows left after dropping missing values"
    if cfg.min_rows and n_left < cfg.min_rows:
        return f"too few rows: {n_left} (model.min_rows is {cfg.min_rows})"
    return None


ENGINE_STATS = {
    "ols": ["r_squared", "adj_r_squared", "fvalue", "f_pvalue"],
    "wls": ["r_squared", "adj_r_squared", "fvalue", "f_pvalue"],
    "glm": ["deviance", "pearson_chi2", "scale", "pseudo_r_squared"],
}


def _vectorised_fits(
    cfg: FitConfig, cols: dict, design, bounds: np.ndarray, todo: list[int]
) -> tuple[dict[int, tuple[dict, dict]], dict[str, int]]:
    """Fit the batch's groups ``todo`` with the vectorised engine where their design can be
    sliced from the batch's (every group then has the same terms); returns
    ``{group index: (coef columns, stats)}`` for the groups it fitted and a count of the
    reasons it declined the others, which statsmodels then fits one by one."""
    from distml.jobs.statsmodels import engine as _vectorised

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
            spans.append((span[0], span[1], design.rows[span[0] : span[1]]))
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
    keep = [
        "nobs",
        "llf",
        "aic",
        "bic",
        "df_model",
        "df_resid",
        "condition_number",
        *ENGINE_STATS[cfg.method],
    ]
    for j, i in enumerate(picked):
        if not fit.ok[j]:
            declined[fit.reason[j]] = declined.get(fit.reason[j], 0) + 1
            continue
        coef = {
            "term": terms.copy(),
            "estimate": fit.params[j],
            "std_error": fit.bse[j],
            "statistic": fit.statistic[j],
            "p_value": fit.p_value[j],
            "ci_low": fit.ci_low[j],
            "ci_high": fit.ci_high[j],
        }
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

    cfg = FitConfig(
        method="glm",
        formula=None,
        finfo=None,
        endog=None,
        exog=(),
        add_constant=False,
        group_by=(),
        family=family,
        link=link,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sm.GLM(np.array([1.0, 2.0, 3.0]), np.ones((3, 1)), family=glm_family(cfg))
    return warning_text(caught)[0]


def _group_data(
    cfg: FitConfig, cols: dict, frame: pd.DataFrame | None, design, a: int, b: int, keep: bool
) -> GroupData:
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
        return GroupData(pd.Series(y, name=cfg.endog), pd.DataFrame(X, columns=names), None, extra)
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


def concat(parts: list[dict]) -> dict | None:
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
    return {
        "step": np.arange(1, steps + 1, dtype=np.int64),
        "time": _future_times(t, steps),
        "mean": mean,
        "std_error": se,
        "ci_low": ci[:, 0],
        "ci_high": ci[:, 1],
    }


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
