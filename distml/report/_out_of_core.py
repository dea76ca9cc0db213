"""Sections of the decomposition and clustering kinds: scree plot and loadings (``components``),
cluster sizes, a 2-D projection of the centres and the passes (``centers``, ``pass_history``)."""

from __future__ import annotations

from distml.report._html import Section, img, para, table
from distml.report._plots import figure, png, short
from distml.report._run import RunView


def scree(run: RunView) -> Section | None:
    comp = run.table("components")
    if comp is None or "explained_variance_ratio" not in comp or not len(comp):
        return None
    import numpy as np

    ratio = comp["explained_variance_ratio"].to_numpy(float)
    k = np.arange(1, len(ratio) + 1)
    fig, axes = figure(6.4, 3.8)
    ax = axes[0]
    ax.bar(k, ratio, label="explained variance ratio")
    ax.plot(k, np.cumsum(ratio), marker="o", color="tab:orange", label="cumulative")
    ax.set_xlabel("component")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(k if len(k) <= 30 else k[:: max(1, len(k) // 15)])
    ax.legend(fontsize=8)
    summary = comp[
        [c for c in ("component", "explained_variance", "explained_variance_ratio") if c in comp]
    ].assign(cumulative=np.cumsum(ratio))
    return Section("scree", "Explained variance", img(png(fig), "scree plot") + table(summary))


def loadings(run: RunView) -> Section | None:
    comp = run.table("components")
    if comp is None or not len(comp):
        return None
    feats = [
        c
        for c in comp.columns
        if c not in ("component", "explained_variance", "explained_variance_ratio")
    ]
    if not feats:
        return None
    import numpy as np

    mat = comp[feats].to_numpy(float)[:10]
    order = np.argsort(-np.abs(mat).max(axis=0))[:30]
    mat = mat[:, order]
    fig, axes = figure(  # constrained: the solver places the colorbar
        max(5.0, 0.3 * len(order) + 2), 0.35 * len(mat) + 1.6, layout="constrained"
    )
    ax = axes[0]
    lim = float(np.abs(mat).max()) or 1.0
    im = ax.imshow(mat, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(
        range(len(order)), [short(feats[i], 16) for i in order], rotation=60, ha="right", fontsize=7
    )
    ax.set_yticks(range(len(mat)), [f"PC{i + 1}" for i in range(len(mat))], fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8)
    note = (
        para(f"first {len(mat)} components, the {len(order)} features with the largest loadings")
        if len(order) < len(feats) or len(mat) < len(comp)
        else ""
    )
    return Section("loadings", "Loadings", img(png(fig), "component loadings") + note)


def _centers(run: RunView):
    c = run.table("centers")
    if c is None or not len(c) or "size" not in c:
        return None
    return c


def cluster_sizes(run: RunView) -> Section | None:
    c = _centers(run)
    if c is None:
        return None
    fig, axes = figure(6.0, 3.4)
    labels = [str(v) for v in (c["cluster"] if "cluster" in c else range(len(c)))]
    axes[0].bar(labels, c["size"].to_numpy(float))
    axes[0].set_xlabel("cluster")
    axes[0].set_ylabel("rows")
    return Section("cluster_sizes", "Cluster sizes", img(png(fig), "cluster sizes"))


def cluster_centers(run: RunView) -> Section | None:
    """The centres on their first two principal axes (features standardised across centres)."""
    c = _centers(run)
    if c is None:
        return None
    import numpy as np

    feats = [col for col in c.columns if col not in ("cluster", "size")]
    X = c[feats].to_numpy(float)
    sd = X.std(axis=0)
    Z = (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    if Z.shape[0] >= 2 and Z.shape[1] >= 2:
        u, s, _ = np.linalg.svd(Z, full_matrices=False)
        xy = u[:, :2] * s[:2]
        share = s[:2] ** 2 / max((s**2).sum(), 1e-300)
        xlabel, ylabel = (
            f"axis 1 ({share[0]:.0%} of the spread)",
            f"axis 2 ({share[1]:.0%} of the spread)",
        )
    else:
        xy = np.column_stack([Z[:, 0], np.zeros(len(Z))]) if Z.shape[1] else np.zeros((len(Z), 2))
        xlabel, ylabel = short(feats[0]) if feats else "", ""
    sizes = c["size"].to_numpy(float)
    area = 60 + 900 * sizes / max(sizes.max(), 1)
    fig, axes = figure(5.6, 4.4)
    ax = axes[0]
    ax.scatter(xy[:, 0], xy[:, 1], s=area, alpha=0.6)
    ids = c["cluster"] if "cluster" in c else range(len(c))
    for (x, y), k in zip(xy, ids):
        ax.annotate(str(k), (x, y), ha="center", va="center", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.margins(0.2)
    return Section(
        "cluster_centers",
        "Cluster centres",
        img(png(fig), "cluster centres projected to 2-D")
        + para("marker area ~ cluster size")
        + table(c, max_rows=50),
    )


def pass_history(run: RunView) -> Section | None:
    h = run.table("pass_history")
    if h is None or not len(h) or "center_shift" not in h:
        return None
    fig, axes = figure(9.0, 3.4, ncols=2)
    x = h["pass"] if "pass" in h else range(1, len(h) + 1)
    axes[0].semilogy(x, h["center_shift"].clip(lower=1e-300), marker="o")
    axes[0].set_xlabel("pass")
    axes[0].set_ylabel("centre shift")
    if "inertia_while_assigning" in h:
        axes[1].plot(x, h["inertia_while_assigning"], marker="o")
        axes[1].set_xlabel("pass")
        axes[1].set_ylabel("inertia while assigning")
    else:
        axes[1].set_visible(False)
    return Section("pass_history", "Passes over the data", img(png(fig), "passes") + table(h))
