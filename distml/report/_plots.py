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
    """Space a grid of axes by what surrounds each panel: its tick labels (major and minor:
    their text, size, rotation and alignment), the axes' offset texts, axis labels and titles,
    measured once with the canvas's text metrics.

    matplotlib's constrained layout gets the same margins by drawing every panel's
    decorations twice before the real draw (a sixth of a quickstart report's time); this
    measures the few texts that need room and leaves the drawing to the one real draw.
    Legends and texts inside the axes need none. What this does not place goes to the
    solver: tick labels on the right or top (``twinx``, ``tick_right``), two axes in one grid
    cell. Axes outside one plain grid (a colorbar's) are left as they are: such a figure is
    made with ``layout="constrained"`` (the solver cannot be switched on once a colorbar has
    split its panel)."""
    axes = [ax for ax in fig.axes if ax.get_visible()]
    if not axes:
        return
    from matplotlib.gridspec import GridSpec

    grids = {id(g): g for g in (ax.get_gridspec() for ax in axes)}
    if len(grids) != 1 or not isinstance(next(iter(grids.values())), GridSpec):
        return  # a colorbar's nested grid: such a figure asks for layout="constrained"
    for ax in axes:  # place and format the ticks once, as the draw will
        ax.xaxis.get_majorticklabels()
        ax.yaxis.get_majorticklabels()
    cells = [(s.rowspan, s.colspan) for s in (ax.get_subplotspec() for ax in axes)]
    if len(set(cells)) < len(cells) or any(_far_side_labels(ax) for ax in axes):
        fig.set_layout_engine("constrained")  # twins, labels on the right or top
        return
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
        sides = (getattr(ax, "_left_title", None), getattr(ax, "_right_title", None))
        titles = [t for t in (ax.title, *sides) if t is not None and t.get_text()]
        title = _extent(r, fig, titles)[1]
        # the offset texts ("1e6", "+9.99e-1"): the y axis's above the panel, the x axis's
        # below its tick labels
        y_off = _extent(r, fig, [_offset(ax.yaxis)])[1]
        x_off = _extent(r, fig, [_offset(ax.xaxis)])[1]
        left = max(left, (ytick_w + TICK if ytick_w else 0.0) + (ylab + LABEL if ylab else 0.0))
        below = (xtick + TICK if xtick else 0.0) + max(xlab, x_off) + LABEL
        bottom = max(bottom, below if (xlab or x_off) else below - LABEL)
        top = max(top, title + TITLE if title else ytick_h / 2, y_off + TITLE if y_off else 0.0)
        if title and y_off:  # the title sits above the offset text
            top = max(top, title + y_off + 2 * TITLE)
        xticks.append((ax, xlabels))
    w, h = fig.get_size_inches()
    right = out_l = out_r = 0.1
    for _ in range(2):  # x tick labels reaching past a panel's sides depend on its width
        aw = (w - left - right - left * (ncols - 1) - 2 * EDGE) / ncols
        out_l, out_r = _side_reach(r, fig, xticks, aw)
        left, right = max(left, out_l), max(right, out_r)
    left, bottom, top, right = left + EDGE, bottom + EDGE, top + EDGE, right + EDGE
    # between panels: the next panel's left decorations, or this panel's x tick labels
    # reaching right beside the next one's reaching left (or this row's bottom ones and the
    # next row's title), so no two panels' texts meet
    wgap, hgap = max(left, out_l + out_r + EDGE), bottom + top
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


def _far_side_labels(ax) -> bool:
    """Whether ``ax`` draws tick labels on its right or top (``label2``)."""
    for axis in (ax.xaxis, ax.yaxis):
        for tick in axis.get_major_ticks() + axis.get_minor_ticks():
            if tick.label2.get_visible() and tick.label2.get_text():
                return True
    return False


def _offset(axis):
    """The axis's offset text as it will be drawn (its formatter's offset after the ticks
    were placed)."""
    axis.offsetText.set_text(axis.get_major_formatter().get_offset())
    return axis.offsetText


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
    """The tick labels of ``axis`` that the draw shows, major and minor (inside the view, not
    empty), once its ticks are placed."""
    lo, hi = sorted(axis.get_view_interval())
    eps = (hi - lo) * 1e-9
    return [
        t.label1
        for t in axis.get_major_ticks() + axis.get_minor_ticks()
        if t.label1.get_visible() and t.label1.get_text() and lo - eps <= t.get_loc() <= hi + eps
    ]


def _extent(renderer, fig, texts) -> tuple[float, float]:
    """The largest (width, height) in inches of ``texts`` (matplotlib Text objects) as drawn:
    their own font, rotation and lines, each line at least as tall as matplotlib's own line
    box ("lp": ascender and descender, so "rows" is as tall as "Ly")."""
    import math

    from matplotlib.cbook import is_math_text

    w = h = 0.0
    for t in texts:
        s = t.get_text()
        if not s:
            continue
        prop = t.get_fontproperties()
        _, lp_h, lp_d = renderer.get_text_width_height_descent("lp", prop, ismath=False)
        lines = s.split("\n")
        tw = th = 0.0
        for i, line in enumerate(lines):
            math_text = t.get_usetex() is False and is_math_text(line)  # log axes: $10^{-3}$
            lw, lh, ld = renderer.get_text_width_height_descent(line, prop, ismath=math_text)
            line_h = max(lh - ld, lp_h - lp_d) + max(ld, lp_d)
            tw = max(tw, lw)
            th += line_h if i == 0 else lp_h * t.get_linespacing()
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
