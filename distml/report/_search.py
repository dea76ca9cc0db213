"""Sections from the trials table of a search: the trials, the metric trial by trial, which
parameters matter, and a parallel-coordinates view."""

from __future__ import annotations

from distml.report._html import Section, img, para, table
from distml.report._plots import figure, png, short
from distml.report._run import RunView

_STATUS_COLORS = {
    "completed": "tab:blue",
    "stopped": "tab:orange",
    "failed": "tab:red",
    "not_run": "tab:grey",
}


def _layout(run: RunView):
    """(trials, metric column, mode, parameter columns), or None without a trials table."""
    trials = run.table("trials")
    if trials is None or not len(trials):
        return None
    tune = run.metrics.get("tune") if isinstance(run.metrics.get("tune"), dict) else {}
    spec_tune = run.spec.get("tune") if isinstance(run.spec.get("tune"), dict) else {}
    metric = tune.get("metric") or spec_tune.get("metric")
    mode = tune.get("mode") or spec_tune.get("mode") or "max"
    space = spec_tune.get("space") if isinstance(spec_tune.get("space"), dict) else {}
    params = [c for c in trials.columns if c in space]
    if not params and "status" in trials.columns and metric in trials.columns:
        cols = list(trials.columns)
        params = cols[cols.index("status") + 1 : cols.index(metric)]
    if metric not in trials.columns:
        return None
    return trials, metric, mode, params


def trials(run: RunView) -> Section | None:
    layout = _layout(run)
    if layout is None:
        return None
    import numpy as np

    frame, metric, mode, _ = layout
    fig, axes = figure(6.4, 3.8)
    ax = axes[0]
    values = frame[metric].astype(float).to_numpy()
    x = np.arange(len(frame))
    status = frame["status"].astype(str) if "status" in frame else None
    for s, color in _STATUS_COLORS.items():
        sel = (status == s).to_numpy() if status is not None else np.ones(len(frame), bool)
        if sel.any():
            ax.scatter(x[sel], values[sel], color=color, label=s, s=18)
    filled = np.where(np.isnan(values), np.inf if mode == "min" else -np.inf, values)
    best = np.minimum.accumulate(filled) if mode == "min" else np.maximum.accumulate(filled)
    ax.step(
        x,
        np.where(np.isfinite(best), best, np.nan),
        where="post",
        color="black",
        lw=1,
        label="best so far",
    )
    ax.set_xlabel("trial (creation order)")
    ax.set_ylabel(short(metric, 40))
    ax.legend(fontsize=8)
    counts = frame["status"].value_counts().to_dict() if status is not None else {}
    note = para(", ".join(f"{v} {k}" for k, v in counts.items()) + f"; {mode}imise {metric}")
    return Section(
        "trials", "Trials", img(png(fig), "metric by trial") + note + table(frame, max_rows=100)
    )


def _numeric(col):
    """A parameter column as numbers (categories as their codes) and whether it was numeric."""
    import pandas as pd

    as_num = pd.to_numeric(col, errors="coerce")
    if as_num.notna().sum() == col.notna().sum() and col.notna().any():
        return as_num.astype(float), True
    codes = pd.Categorical(col.astype(str)).codes.astype(float)
    return pd.Series(codes, index=col.index), False


def parameter_importance(run: RunView) -> Section | None:
    """|Spearman correlation| (numeric parameters) or the correlation ratio η (categorical)
    between each parameter and the metric over the trials that reported it."""
    layout = _layout(run)
    if layout is None or not layout[3]:
        return None
    import numpy as np
    import pandas as pd

    frame, metric, _, params = layout
    ok = frame[metric].astype(float).notna()
    y = frame.loc[ok, metric].astype(float)
    if len(y) < 3 or y.nunique() < 2:
        return None
    rows = []
    for p in params:
        x, numeric = _numeric(frame.loc[ok, p])
        if x.nunique() < 2:
            score, how = 0.0, "constant"
        elif numeric:
            score, how = abs(x.rank().corr(y.rank())), "|spearman|"
        else:
            means = y.groupby(x).mean()
            n = y.groupby(x).size()
            between = float((n * (means - y.mean()) ** 2).sum())
            total = float(((y - y.mean()) ** 2).sum())
            score, how = (np.sqrt(between / total) if total > 0 else 0.0), "eta"
        rows.append({"parameter": p, "importance": float(np.nan_to_num(score)), "measure": how})
    imp = pd.DataFrame(rows).sort_values("importance", ascending=False)
    fig, axes = figure(6.0, 0.35 * len(imp) + 1.2)
    axes[0].barh([short(p, 36) for p in imp["parameter"]][::-1], imp["importance"][::-1])
    axes[0].set_xlim(0, 1)
    axes[0].set_xlabel(f"association with {short(metric, 30)}")
    return Section(
        "parameter_importance",
        "Parameter importance",
        img(png(fig), "parameter importance")
        + para(f"over {len(y)} trials that reported {metric}; a rough guide, not a causal measure")
        + table(imp),
    )


def parallel_coordinates(run: RunView) -> Section | None:
    layout = _layout(run)
    if layout is None or not layout[3]:
        return None
    import numpy as np
    from matplotlib import colormaps

    frame, metric, mode, params = layout
    ok = frame[metric].astype(float).notna()
    if ok.sum() < 2:
        return None
    cols = params + [metric]
    axes_vals, ticks = [], []
    for c in cols:
        x, numeric = (
            _numeric(frame.loc[ok, c]) if c != metric else (frame.loc[ok, c].astype(float), True)
        )
        lo, hi = float(x.min()), float(x.max())
        span = hi - lo or 1.0
        axes_vals.append(((x - lo) / span).to_numpy())
        if numeric:
            ticks.append([(0.0, f"{lo:.3g}"), (1.0, f"{hi:.3g}")])
        else:
            labels = sorted(frame.loc[ok, c].astype(str).unique())
            ticks.append([((i - lo) / span, short(v, 12)) for i, v in enumerate(labels)])
    data = np.column_stack(axes_vals)
    y = frame.loc[ok, metric].astype(float).to_numpy()
    norm = (y - y.min()) / ((y.max() - y.min()) or 1.0)
    goodness = 1 - norm if mode == "min" else norm
    cmap = colormaps["viridis"]
    fig, axs = figure(max(5.0, 1.6 * len(cols)), 4.0)
    ax = axs[0]
    for row, g in sorted(zip(data, goodness), key=lambda t: t[1]):
        ax.plot(range(len(cols)), row, color=cmap(g), alpha=0.7, lw=1.2)
    for i, tk in enumerate(ticks):
        ax.axvline(i, color="black", lw=0.6)
        for pos, label in tk:
            ax.text(i + 0.03, pos, label, fontsize=7, va="center")
    ax.set_xticks(range(len(cols)), [short(c, 18) for c in cols], rotation=20, fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(cols) - 0.6)
    return Section(
        "parallel_coordinates",
        "Parallel coordinates",
        img(png(fig), "parallel coordinates")
        + para(f"one line per trial; yellow = best {metric}, purple = worst"),
    )
