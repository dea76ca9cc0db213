"""Sections from the statsmodels tables: coefficients (forest plot), fit statistics, the
distribution of each coefficient across groups and the failed groups (many-models), forecast."""

from __future__ import annotations

from distml.report._html import Section, img, pairs, para, table
from distml.report._plots import figure, png, short
from distml.report._run import RunView

COEF = ["term", "estimate", "std_error", "statistic", "p_value", "ci_low", "ci_high"]
#: terms drawn at most (forest plot rows; panels of the across-groups distribution)
MAX_TERMS = 40
MAX_PANELS = 12


def _coefficients(run: RunView):
    coef = run.table("coefficients")
    if coef is None or not {"term", "estimate"} <= set(coef.columns):
        return None
    return coef


def _group_cols(run: RunView, frame) -> list[str]:
    return [c for c in run.group_by if c in frame.columns]


def coefficients(run: RunView) -> Section | None:
    """One model: the coefficient table and a forest plot of the estimates with their CI."""
    coef = _coefficients(run)
    if coef is None or _group_cols(run, coef) or not len(coef):
        return None
    import numpy as np

    shown = coef.head(MAX_TERMS)
    fig, axes = figure(6.4, 0.32 * len(shown) + 1.3)
    ax = axes[0]
    y = np.arange(len(shown))[::-1]
    est = shown["estimate"].to_numpy(float)
    if {"ci_low", "ci_high"} <= set(shown.columns):
        lo, hi = shown["ci_low"].to_numpy(float), shown["ci_high"].to_numpy(float)
        ax.errorbar(est, y, xerr=[est - lo, hi - est], fmt="o", capsize=3)
    else:
        ax.plot(est, y, "o")
    ax.axvline(0, ls="--", color="grey", lw=0.8)
    ax.set_yticks(y, [short(t, 32) for t in shown["term"].astype(str)])
    ax.set_xlabel("estimate (with confidence interval)")
    alpha = (run.spec.get("model") or {}).get("alpha")
    note = (
        para(f"intervals at level {1 - float(alpha):.0%}")
        if isinstance(alpha, (int, float))
        else ""
    )
    return Section(
        "coefficients",
        "Coefficients",
        img(png(fig), "coefficient forest plot") + note + table(coef),
    )


def fit_statistics(run: RunView) -> Section | None:
    stats = run.table("model_stats")
    if stats is None or len(stats) != 1 or _group_cols(run, stats):
        return None
    row = stats.iloc[0]
    return Section("fit_statistics", "Fit statistics", pairs((c, row[c]) for c in stats.columns))


def coefficient_distribution(run: RunView) -> Section | None:
    """Many-models: each term's estimates across the fitted groups."""
    coef = _coefficients(run)
    if coef is None or not _group_cols(run, coef) or not len(coef):
        return None
    import numpy as np
    import pandas as pd

    by_term = {str(t): part for t, part in coef.groupby(coef["term"].astype(str), sort=False)}
    terms = list(by_term)
    shown = terms[:MAX_PANELS]
    ncols = min(len(shown), 3)
    nrows = (len(shown) + ncols - 1) // ncols
    # a fixed grid: the constrained-layout solver took most of a many-models report's time
    fig, axes = figure(4.2 * ncols, 3.0 * nrows, ncols=ncols, nrows=nrows, layout=None)
    fig.subplots_adjust(
        left=0.3 / ncols,
        right=0.98,
        bottom=0.45 / (3.0 * nrows),
        top=1 - 0.35 / (3.0 * nrows),
        wspace=0.35,
        hspace=0.45,
    )
    rows = []
    for term in terms:
        part = by_term[term]
        est = part["estimate"].astype(float).dropna()
        p = part["p_value"].astype(float) if "p_value" in part else pd.Series(dtype=float)
        rows.append(
            {
                "term": term,
                "groups": len(est),
                "mean": est.mean(),
                "median": est.median(),
                "q25": est.quantile(0.25),
                "q75": est.quantile(0.75),
                "min": est.min(),
                "max": est.max(),
                "share_p_below_0.05": float((p < 0.05).mean()) if len(p) else np.nan,
            }
        )
    for ax, term in zip(axes, shown):
        est = by_term[term]["estimate"].astype(float).dropna()
        ax.hist(est, bins=min(30, max(5, len(est) // 3)), histtype="stepfilled")
        ax.axvline(0, ls="--", color="grey", lw=0.8)
        ax.set_title(short(term, 36), fontsize=9)
        ax.set_ylabel("groups")
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    note = para(f"{len(shown)} of {len(terms)} terms drawn") if len(terms) > len(shown) else ""
    return Section(
        "coefficient_distribution",
        "Coefficients across groups",
        img(png(fig), "coefficient distributions")
        + note
        + table(pd.DataFrame(rows), max_rows=MAX_TERMS),
    )


def group_fits(run: RunView) -> Section | None:
    """Many-models: how many groups fitted, failed, did not converge; the failed ones."""
    stats = run.table("model_stats")
    if stats is None or not _group_cols(run, stats):
        return None
    keys = _group_cols(run, stats)
    failed = stats["error"].notna() if "error" in stats else stats.index < 0
    conv = stats["converged"].astype(bool) if "converged" in stats else ~failed
    counts = [
        ("groups", len(stats)),
        ("fitted", int((~failed).sum())),
        ("failed", int(failed.sum())),
        ("fitted, not converged", int((~failed & ~conv).sum())),
    ]
    parts = [pairs(counts)]
    if failed.any():
        parts.append(table(stats.loc[failed, keys + ["error"]], caption="failed groups"))
    else:
        parts.append(para("no group failed"))
    nc = stats.loc[~failed & ~conv, keys]
    if len(nc):
        parts.append(table(nc, caption="groups whose fit did not converge"))
    for col in ("r_squared", "pseudo_r_squared", "aic"):
        if col in stats and stats[col].notna().sum() > 1:
            fig, axes = figure(5.0, 3.0)
            axes[0].hist(stats[col].astype(float).dropna(), bins=30, histtype="stepfilled")
            axes[0].set_xlabel(col)
            axes[0].set_ylabel("groups")
            parts.append(img(png(fig), f"{col} across groups"))
            break
    return Section("group_fits", "Groups: fitted and failed", "".join(parts))


def forecast(run: RunView) -> Section | None:
    fc = run.table("forecast")
    if fc is None or not len(fc) or "mean" not in fc:
        return None
    keys = _group_cols(run, fc)
    groups = list(fc.groupby(keys, sort=False)) if keys else [(None, fc)]
    shown = groups[:6]
    ncols = min(len(shown), 3)
    nrows = (len(shown) + ncols - 1) // ncols
    fig, axes = figure(4.6 * ncols, 3.2 * nrows, ncols=ncols, nrows=nrows)
    for ax, (key, part) in zip(axes, shown):
        x = part["time"] if "time" in part and part["time"].notna().all() else part["step"]
        x = list(x)
        ax.plot(x, part["mean"].astype(float), marker="o", ms=3, label="forecast")
        if {"ci_low", "ci_high"} <= set(part.columns):
            ax.fill_between(
                x,
                part["ci_low"].astype(float),
                part["ci_high"].astype(float),
                alpha=0.25,
                label="interval",
            )
        if key is not None:
            ax.set_title(
                short(", ".join(map(str, key if isinstance(key, tuple) else (key,))), 40),
                fontsize=9,
            )
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.legend(fontsize=8)
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    note = para(f"{len(shown)} of {len(groups)} groups drawn") if len(groups) > len(shown) else ""
    return Section(
        "forecast", "Forecast", img(png(fig), "forecast with intervals") + note + table(fc)
    )
