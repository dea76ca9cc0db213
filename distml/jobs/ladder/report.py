"""The ladder's sections of ``report.html``: the fold-paired scores (one line per fold across
the candidates), the paired differences with their intervals, and the cost of each rung. Each
builder takes a :class:`~distml.report._run.RunView` and returns None for runs without the
ladder tables."""

from __future__ import annotations

from distml.report._html import Section, img, para, table
from distml.report._plots import figure, png, short
from distml.report._run import RunView


def _tables(run: RunView):
    if not (run.has("ladder") and run.has("ladder_summary")):
        return None, None
    return run.table("ladder"), run.table("ladder_summary")


def _figures(run: RunView) -> dict:
    ladder = run.metrics.get("ladder")
    return ladder if isinstance(ladder, dict) else {}


def fold_paired(run: RunView) -> Section | None:
    """Every fold's score of every candidate that ran, one line per fold across the rungs."""
    long, summary = _tables(run)
    if long is None or not len(long):
        return None
    ok = summary[summary["status"] == "ok"].sort_values("rung")
    names = [str(n) for n in ok["candidate"]]
    if not names:
        return None
    wide = (
        long[long["candidate"].isin(names)]
        .pivot_table(index="fold", columns="candidate", values="value")
        .reindex(columns=names)
    )
    metric = str(long["metric"].iloc[0])
    # a second panel without the base rung: a baseline far below squashes the rungs that matter
    panels = [names, names[1:]] if len(names) >= 3 else [names]
    fig, axes = figure(max(5.0, 1.3 * len(names) + 2) * len(panels), 4.0, ncols=len(panels))
    winner = [str(n) for n, w in zip(ok["candidate"], ok["winner"]) if bool(w)]
    for ax, shown in zip(axes, panels):
        part = wide[shown]
        x = list(range(len(shown)))
        for fold, row in part.iterrows():
            ax.plot(x, row.to_numpy(dtype=float), marker="o", lw=1, alpha=0.6, label=f"fold {fold}")
        ax.plot(
            x,
            part.mean(axis=0).to_numpy(dtype=float),
            color="black",
            lw=2.5,
            marker="s",
            label="mean",
        )
        for i, n in enumerate(shown):
            if n in winner:
                ax.axvspan(i - 0.3, i + 0.3, color="#2e7d32", alpha=0.12)
        ax.set_xticks(x, [short(n, 16) for n in shown], rotation=20, ha="right")
        ax.set_ylabel(metric)
    axes[0].set_title(f"{metric} per fold (the same folds for every candidate)")
    if len(panels) > 1:
        axes[1].set_title(f"without the base rung {short(names[0], 16)}")
    if len(wide) <= 12:
        axes[0].legend(fontsize=7, ncol=2)
    failed = summary[summary["status"] != "ok"]
    note = (
        para(
            "failed rungs (not drawn): "
            + "; ".join(f"{r.candidate}: {r.error}" for r in failed.itertuples())
        )
        if len(failed)
        else ""
    )
    return Section(
        "ladder_folds",
        "Ladder: fold-paired scores",
        img(png(fig), "fold-paired scores")
        + note
        + table(wide.reset_index(), caption=f"{metric} by fold"),
    )


def differences(run: RunView) -> Section | None:
    """The paired difference of each rung to its incumbent, with its interval and decision."""
    _, summary = _tables(run)
    if summary is None:
        return None
    comp = summary[summary["mean_diff"].notna()].sort_values("rung")
    f = _figures(run)
    alpha, min_gain = f.get("alpha", 0.05), f.get("min_gain", 0.0)
    body = ""
    if len(comp):
        fig, axes = figure(6.4, 0.6 * len(comp) + 1.6)
        ax = axes[0]
        y = list(range(len(comp)))[::-1]
        for yi, r in zip(y, comp.itertuples()):
            color = "#2e7d32" if r.promoted else "#757575"
            ax.errorbar(
                [r.mean_diff],
                [yi],
                xerr=[[r.mean_diff - r.ci_low], [r.ci_high - r.mean_diff]],
                fmt="o",
                color=color,
                capsize=4,
            )
        ax.axvline(0, color="black", lw=1)
        if min_gain:
            ax.axvline(min_gain, color="#c62828", lw=1, ls="--", label=f"min_gain {min_gain:g}")
            ax.legend(fontsize=8)
        ax.set_yticks(y, [short(f"{r.candidate} vs {r.incumbent}", 30) for r in comp.itertuples()])
        ax.set_xlabel(
            f"mean gain in {f.get('metric', 'the metric')} (positive: better), "
            f"{1 - alpha:.0%} interval"
        )
        body += img(png(fig), "paired differences")
    cols = [
        "rung",
        "candidate",
        "kind",
        "status",
        "mean",
        "std",
        "incumbent",
        "mean_diff",
        "ci_low",
        "ci_high",
        "t",
        "df",
        "p_value",
        "p_adjusted",
        "promoted",
        "winner",
        "reason",
    ]
    body += para(
        f"Nadeau–Bengio corrected resampled t-test over {f.get('folds', '?')} folds; "
        f"one-sided, H0: the mean gain is at most min_gain ({min_gain:g}); "
        f"{f.get('adjustment', 'holm')}-adjusted across the rungs at alpha "
        f"{alpha:g}. The bars are two-sided {1 - alpha:.0%} intervals, not adjusted: the "
        "decisions are the table's one-sided, adjusted p-values. "
        f"Winner: {f.get('winner', '?')}."
    )
    body += table(summary[[c for c in cols if c in summary.columns]])
    return Section("ladder_differences", "Ladder: differences and decisions", body)


def cost(run: RunView) -> Section | None:
    """Fit seconds and CPU seconds of each rung, summed over its folds."""
    _, summary = _tables(run)
    if summary is None or not summary["fit_seconds"].notna().any():
        return None
    s = summary.sort_values("rung")
    names = [short(n, 16) for n in s["candidate"].astype(str)]
    fig, axes = figure(max(5.0, 1.2 * len(names) + 2), 3.6)
    ax = axes[0]
    x = list(range(len(names)))
    w = 0.38
    ax.bar([i - w / 2 for i in x], s["fit_seconds"].fillna(0).to_numpy(), w, label="wall s")
    ax.bar([i + w / 2 for i in x], s["cpu_seconds"].fillna(0).to_numpy(), w, label="CPU s")
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel("seconds, all folds")
    ax.legend(fontsize=8)
    frame = s[["candidate", "kind", "status", "mean", "fit_seconds", "cpu_seconds"]]
    return Section(
        "ladder_cost", "Ladder: cost per rung", img(png(fig), "cost per rung") + table(frame)
    )
