"""Sections from the supervised tables: confusion_matrix, predictions (ROC, precision-recall,
calibration; predicted vs actual, residuals), learning_curve, feature_importance. Any kind that
writes these tables (sklearn, xgboost, torch…) gets the sections."""

from __future__ import annotations

from distml.report._html import Section, img, para, table
from distml.report._plots import figure, png, short, thin
from distml.report._run import RunView

#: classes drawn one-vs-rest at most
MAX_CLASSES = 10
_ORDER = {"train": 0, "valid": 1, "test": 2}


def _splits(frame) -> list[str]:
    return sorted(frame["split"].astype(str).unique(), key=lambda s: (_ORDER.get(s, 9), s))


def confusion_matrix(run: RunView) -> Section | None:
    cm = run.table("confusion_matrix")
    if cm is None or not len(cm):
        return None
    import numpy as np

    splits = _splits(cm)
    fig, axes = figure(4.2 * len(splits), 3.9, ncols=len(splits))
    for ax, split in zip(axes, splits):
        part = cm[cm["split"].astype(str) == split]
        labels = list(dict.fromkeys(part["actual"].astype(str)))
        labels += [p for p in dict.fromkeys(part["predicted"].astype(str)) if p not in labels]
        index = {c: i for i, c in enumerate(labels)}
        grid = np.zeros((len(labels), len(labels)))
        for a, p, n in zip(
            part["actual"].astype(str), part["predicted"].astype(str), part["count"]
        ):
            grid[index[a], index[p]] += n
        ax.imshow(grid, cmap="Blues")
        ticks = range(len(labels))
        ax.set_xticks(list(ticks), [short(c, 12) for c in labels], rotation=45, ha="right")
        ax.set_yticks(list(ticks), [short(c, 12) for c in labels])
        if len(labels) <= 12:
            top = grid.max() or 1
            for i in ticks:
                for j in ticks:
                    ax.text(
                        j,
                        i,
                        f"{grid[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if grid[i, j] > top / 2 else "black",
                    )
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(f"{split} ({int(grid.sum())} rows)")
    return Section("confusion_matrix", "Confusion matrix", img(png(fig), "confusion matrix"))


def _proba_columns(pred) -> list[str]:
    return [c for c in pred.columns if c.startswith("proba_")]


def _classification_predictions(run: RunView):
    pred = run.table("predictions")
    if pred is None or not len(pred) or run.task != "classification":
        return None, []
    cols = _proba_columns(pred)
    return (pred, cols) if len(cols) >= 2 else (None, [])


def _curves(run: RunView, kind: str) -> Section | None:
    """ROC or precision-recall: binary → one line per split; multiclass → one-vs-rest lines
    per class, one panel per split."""
    pred, cols = _classification_predictions(run)
    if pred is None:
        return None
    from distml.report import _curves

    splits = _splits(pred)
    binary = len(cols) == 2
    panels = [None] if binary else splits
    fig, axes = figure(5.0 * len(panels), 4.2, ncols=len(panels))
    for ax, panel in zip(axes, panels):
        if binary:
            lines = [(s, pred[pred["split"] == s], cols[1]) for s in splits]
        else:
            part = pred[pred["split"] == panel]
            lines = [(c[len("proba_") :], part, c) for c in cols[:MAX_CLASSES]]
        for label, part, col in lines:
            positive = col[len("proba_") :]
            y = (part["y_true"].astype(str) == positive).to_numpy()
            score = part[col].to_numpy(dtype=float)
            if y.all() or not y.any():
                continue
            if kind == "roc":
                fpr, tpr = _curves.roc(y, score)
                ax.plot(fpr, tpr, label=f"{short(label)} (AUC {_curves.auc(fpr, tpr):.3f})")
            else:
                prec, rec = _curves.precision_recall(y, score)
                ap = _curves.average_precision(y, score)
                ax.plot(rec, prec, label=f"{short(label)} (AP {ap:.3f})")
        if kind == "roc":
            ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
        else:
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"positive class {short(cols[1][6:])}" if binary else f"{panel}: one-vs-rest")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right" if kind == "roc" else "lower left")
    what = "ROC curve" if kind == "roc" else "Precision-recall curve"
    note = para(f"from tables/predictions.parquet ({len(pred)} rows, splits {', '.join(splits)})")
    return Section(
        "roc_curve" if kind == "roc" else "precision_recall", what, img(png(fig), what) + note
    )


def roc_curve(run: RunView) -> Section | None:
    return _curves(run, "roc")


def precision_recall(run: RunView) -> Section | None:
    return _curves(run, "pr")


#: calibration: a split is drawn only with at least this many rows, in quantile bins of at
#: least CALIBRATION_MIN_PER_BIN rows (at most 10 bins); with ~100 rows, 10 equal-width bins
#: left a handful of rows in most bins and the curve was noise
CALIBRATION_MIN_ROWS = 100
CALIBRATION_MIN_PER_BIN = 20
CALIBRATION_MAX_BINS = 10


def quantile_bins(score, hit) -> list[tuple[float, float, int]]:
    """(mean predicted, observed frequency, rows) per bin: rows sorted by score and cut into
    equal-count bins (±1 row), as many as keep ``CALIBRATION_MIN_PER_BIN`` rows each."""
    import numpy as np

    n = len(score)
    k = max(1, min(CALIBRATION_MAX_BINS, n // CALIBRATION_MIN_PER_BIN))
    order = np.argsort(score, kind="stable")
    return [
        (float(score[b].mean()), float(hit[b].mean()), int(len(b)))
        for b in np.array_split(order, k)
        if len(b)
    ]


def calibration(run: RunView) -> Section | None:
    pred, cols = _classification_predictions(run)
    if pred is None:
        return None
    import numpy as np

    drawn, skipped = {}, []
    for split in _splits(pred):
        part = pred[pred["split"] == split]
        if len(part) < CALIBRATION_MIN_ROWS:
            skipped.append(f"{split} ({len(part)} rows)")
            continue
        if len(cols) == 2:  # the positive class
            score = part[cols[1]].to_numpy(dtype=float)
            hit = (part["y_true"].astype(str) == cols[1][6:]).to_numpy()
        else:  # the top class: confidence against accuracy
            probs = part[cols].to_numpy(dtype=float)
            score = probs.max(axis=1)
            hit = (
                np.asarray(cols, dtype=object)[probs.argmax(axis=1)]
                == ("proba_" + part["y_true"].astype(str)).to_numpy()
            )
        drawn[split] = quantile_bins(score, hit)
    if not drawn:  # too few rows for a curve that means anything: no section
        return None
    fig, axes = figure(5.0, 4.2)
    ax = axes[0]
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfectly calibrated")
    for split, bins in drawn.items():
        ax.plot(
            [b[0] for b in bins],
            [b[1] for b in bins],
            marker="o",
            label=f"{split} ({len(bins)} bins)",
        )
    ax.set_xlabel(
        "mean predicted probability" + (" (positive class)" if len(cols) == 2 else " (top class)")
    )
    ax.set_ylabel("observed frequency")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    counts = "; ".join(
        f"{split}: {len(bins)} bins of {min(b[2] for b in bins)}"
        + (
            f"–{max(b[2] for b in bins)}"
            if min(b[2] for b in bins) != max(b[2] for b in bins)
            else ""
        )
        + " rows"
        for split, bins in drawn.items()
    )
    note = (
        f"quantile bins (equal row counts, at least {CALIBRATION_MIN_PER_BIN} rows each, "
        f"at most {CALIBRATION_MAX_BINS}); rows per bin — {counts}"
    )
    if skipped:
        note += f". Not drawn (fewer than {CALIBRATION_MIN_ROWS} rows): " + ", ".join(skipped)
    return Section("calibration", "Calibration", img(png(fig), "calibration curve") + para(note))


def _regression_predictions(run: RunView):
    pred = run.table("predictions")
    if pred is None or not len(pred) or run.task != "regression":
        return None
    return pred


def predicted_vs_actual(run: RunView) -> Section | None:
    pred = _regression_predictions(run)
    if pred is None:
        return None
    splits = _splits(pred)
    fig, axes = figure(4.5 * len(splits), 4.2, ncols=len(splits))
    for ax, split in zip(axes, splits):
        part = pred[pred["split"] == split]
        idx = thin(len(part))
        y, p = part["y_true"].to_numpy(float)[idx], part["y_pred"].to_numpy(float)[idx]
        ax.scatter(y, p, s=8, alpha=0.5)
        lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], ls="--", color="grey", lw=0.8)
        ax.set_xlabel("actual")
        ax.set_ylabel("predicted")
        ax.set_title(f"{split} ({len(part)} rows)")
    return Section(
        "predicted_vs_actual", "Predicted vs actual", img(png(fig), "predicted vs actual")
    )


def residuals(run: RunView) -> Section | None:
    pred = _regression_predictions(run)
    if pred is None:
        return None
    splits = _splits(pred)
    fig, axes = figure(9.0, 3.8, ncols=2)
    for split in splits:
        part = pred[pred["split"] == split]
        p = part["y_pred"].to_numpy(float)
        r = part["y_true"].to_numpy(float) - p
        idx = thin(len(part))
        axes[0].scatter(p[idx], r[idx], s=8, alpha=0.5, label=split)
        axes[1].hist(r, bins=30, alpha=0.5, label=split)
    axes[0].axhline(0, ls="--", color="grey", lw=0.8)
    axes[0].set_xlabel("predicted")
    axes[0].set_ylabel("actual − predicted")
    axes[1].set_xlabel("actual − predicted")
    axes[1].set_ylabel("rows")
    for ax in axes:
        ax.legend(fontsize=8)
    return Section("residuals", "Residuals", img(png(fig), "residuals"))


def learning_curve(run: RunView) -> Section | None:
    lc = run.table("learning_curve")
    if lc is None or not len(lc):
        return None
    metrics = list(dict.fromkeys(lc["metric"].astype(str)))[:6]
    fig, axes = figure(
        4.6 * min(len(metrics), 3),
        3.6 * ((len(metrics) + 2) // 3),
        ncols=min(len(metrics), 3),
        nrows=(len(metrics) + 2) // 3,
    )
    best = run.metrics.get("best_iteration")
    for ax, metric in zip(axes, metrics):
        part = lc[lc["metric"].astype(str) == metric]
        for split in _splits(part):
            s = part[part["split"].astype(str) == split].sort_values("iteration")
            ax.plot(s["iteration"], s["value"], label=split)
        if isinstance(best, (int, float)):
            ax.axvline(best, ls=":", color="grey", lw=1, label=f"best iteration {best}")
        ax.set_xlabel("iteration")
        ax.set_title(short(metric, 40))
        ax.legend(fontsize=8)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    return Section("learning_curve", "Learning curves", img(png(fig), "learning curves"))


def feature_importance(run: RunView) -> Section | None:
    imp = run.table("feature_importance")
    if imp is None or not len(imp) or not {"feature", "importance"} <= set(imp.columns):
        return None
    top = imp.assign(_abs=imp["importance"].abs()).sort_values("_abs", ascending=False).head(30)
    fig, axes = figure(6.4, 0.25 * len(top) + 1.2)
    ax = axes[0]
    ax.barh(
        [short(f, 32) for f in top["feature"].astype(str)][::-1],
        top["importance"].to_numpy(float)[::-1],
    )
    ax.set_xlabel("importance")
    ax.tick_params(axis="y", labelsize=8)
    note = para(f"top {len(top)} of {len(imp)} features") if len(imp) > len(top) else ""
    return Section(
        "feature_importance",
        "Feature importance",
        img(png(fig), "feature importance") + note + table(top.drop(columns="_abs"), max_rows=30),
    )
