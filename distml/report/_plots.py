"""matplotlib figures rendered with the Agg canvas to base64 PNG (no pyplot, no global state)."""

from __future__ import annotations

import base64
import io

#: the largest number of points drawn in a scatter (a deterministic subsample beyond it)
MAX_POINTS = 5000


#: padding in inches: figure edge, tick label to axes (tick length plus pad), axis label to
#: tick labels, title to axes
EDGE, TICK, LABEL, TITLE = 0.06, 0.1, 0.06, 0.08


def figure(
    width: float = 6.4,
    height: float = 4.0,
    ncols: int = 1,
    nrows: int = 1,
    layout: str | None = "tidy",
):
    """(Figure, axes array) on an Agg canvas. ``layout="tidy"``: :func:`png` places the grid
    with :func:`tidy` (margins measured from the tick labels, axis labels and titles, in one
    pass); ``"constrained"``: matplotlib's solver; ``None``: the caller spaces the axes."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout=None if layout == "tidy" else layout)
    fig._distml_tidy = layout == "tidy"
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, np.asarray(axes).ravel()


def png(fig) -> str:
    """The figure as base64 PNG text."""
    if getattr(fig, "_distml_tidy", False):
        tidy(fig)
    buf = io.BytesIO()
    fig.canvas.print_png(buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def tidy(fig) -> None:
    """Space a grid of axes by what surrounds each panel: its tick labels (their text, size,
    rotation and alignment), axis labels and title, measured once with the canvas's text
    metrics.

    matplotlib's constrained layout gets the same margins by drawing every panel's
    decorations twice before the real draw (a sixth of a quickstart report's time); this
    measures the few texts that need room and leaves the drawing to the one real draw.
    Legends and texts inside the axes need none. Axes outside one plain grid (a colorbar's)
    are not placed here: such a figure is made with ``layout="constrained"`` (the solver
    cannot be switched on once a colorbar has split its panel)."""
    axes = [ax for ax in fig.axes if ax.get_visible()]
    if not axes:
        return
    from matplotlib.gridspec import GridSpec

    grids = {id(g): g for g in (ax.get_gridspec() for ax in axes)}
    if len(grids) != 1 or not isinstance(next(iter(grids.values())), GridSpec):
        return  # a colorbar's nested grid: such a figure asks for layout="constrained"
    nrows, ncols = axes[0].get_gridspec().get_geometry()
    r = fig.canvas.get_renderer()
    left = bottom = top = 0.0
    xticks = []
    for ax in axes:
        ylabels, xlabels = _tick_labels(ax.yaxis), _tick_labels(ax.xaxis)
        ytick_w, ytick_h = _extent(r, fig, ylabels)
        xtick = _extent(r, fig, xlabels)[1]
        ylab = _extent(r, fig, [ax.yaxis.label])[0] if ax.get_ylabel() else 0.0
        xlab = _extent(r, fig, [ax.xaxis.label])[1] if ax.get_xlabel() else 0.0
        title = _extent(r, fig, [ax.title])[1] if ax.get_title() else 0.0
        left = max(left, (ytick_w + TICK if ytick_w else 0.0) + (ylab + LABEL if ylab else 0.0))
        bottom = max(bottom, (xtick + TICK if xtick else 0.0) + (xlab + LABEL if xlab else 0.0))
        top = max(top, title + TITLE if title else ytick_h / 2)  # the top tick label's half
        xticks.append((ax, xlabels))
    w, h = fig.get_size_inches()
    right = 0.1
    for _ in range(2):  # x tick labels reaching past a panel's sides depend on its width
        aw = (w - left - right - left * (ncols - 1) - 2 * EDGE) / ncols
        out_l, out_r = _side_reach(r, fig, xticks, aw)
        left, right = max(left, out_l), max(right, out_r)
    left, bottom, top, right = left + EDGE, bottom + EDGE, top + EDGE, right + EDGE
    # between panels: the next panel's left decorations (or this row's bottom ones and the
    # next row's title), so no two panels' texts meet
    wgap, hgap = left, bottom + top
    aw = (w - left - right - wgap * (ncols - 1)) / ncols
    ah = (h - bottom - top - hgap * (nrows - 1)) / nrows
    if aw <= 0.2 or ah <= 0.2:  # decorations larger than the figure: the solver decides
        fig.set_layout_engine("constrained")
        return
    fig.subplots_adjust(
        left=left / w,
        right=1 - right / w,
        bottom=bottom / h,
        top=1 - top / h,
        wspace=wgap / aw,
        hspace=hgap / ah,
    )


def _side_reach(renderer, fig, xticks, aw: float) -> tuple[float, float]:
    """Inches the x tick labels reach past their panel's left and right edges, for panels
    ``aw`` inches wide: centred labels by half their drawn width, right-aligned (rotated)
    ones by all of it to the left."""
    import math

    out_l = out_r = 0.0
    for ax, labels in xticks:
        scale = ax.xaxis.get_transform()  # the fraction of the width in the axis's scale
        lo, hi = scale.transform(list(ax.xaxis.get_view_interval()))
        if not hi - lo:
            continue
        for t in labels:
            tw, _ = _extent(renderer, fig, [t])
            x = (scale.transform([t.get_position()[0]])[0] - lo) / (hi - lo) * aw
            ha = t.get_horizontalalignment()
            reach_l = tw if ha == "right" else (0.0 if ha == "left" else tw / 2)
            reach_r = tw if ha == "left" else (0.0 if ha == "right" else tw / 2)
            if not math.isfinite(x):
                continue
            out_l = max(out_l, reach_l - x)
            out_r = max(out_r, reach_r - (aw - x))
    return out_l, out_r


def _tick_labels(axis) -> list:
    """The major tick labels of ``axis`` that the draw shows (inside the view, not empty)."""
    axis.get_majorticklabels()  # places and formats the ticks, as the draw will
    lo, hi = sorted(axis.get_view_interval())
    eps = (hi - lo) * 1e-9
    return [
        t.label1
        for t in axis.get_major_ticks()
        if t.label1.get_visible() and t.label1.get_text() and lo - eps <= t.get_loc() <= hi + eps
    ]


def _extent(renderer, fig, texts) -> tuple[float, float]:
    """The largest (width, height) in inches of ``texts`` (matplotlib Text objects) as drawn:
    their own font and rotation."""
    import math

    from matplotlib.cbook import is_math_text

    w = h = 0.0
    for t in texts:
        s = t.get_text()
        if not s:
            continue
        math_text = t.get_usetex() is False and is_math_text(s)  # log axes: $10^{-3}$
        tw, th, _ = renderer.get_text_width_height_descent(
            s, t.get_fontproperties(), ismath=math_text
        )
        a = math.radians(t.get_rotation())
        c, si = abs(math.cos(a)), abs(math.sin(a))
        w = max(w, (tw * c + th * si) / fig.dpi)
        h = max(h, (tw * si + th * c) / fig.dpi)
    return w, h


def thin(n: int, limit: int = MAX_POINTS):
    """Indices of at most ``limit`` of ``n`` points, evenly spaced (deterministic)."""
    import numpy as np

    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).astype(int))


def short(text: object, n: int = 28) -> str:
    s = str(text)
    return s if len(s) <= n else s[: n - 1] + "…"
