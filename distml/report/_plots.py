"""matplotlib figures rendered with the Agg canvas to base64 PNG (no pyplot, no global state)."""

from __future__ import annotations

import base64
import io

#: the largest number of points drawn in a scatter (a deterministic subsample beyond it)
MAX_POINTS = 5000


def figure(
    width: float = 6.4,
    height: float = 4.0,
    ncols: int = 1,
    nrows: int = 1,
    layout: str | None = "constrained",
):
    """(Figure, axes array) on an Agg canvas. ``layout=None`` skips the constrained-layout
    solver (most of the drawing time of a grid of panels); the caller spaces the axes."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, np.asarray(axes).ravel()


def png(fig) -> str:
    """The figure as base64 PNG text."""
    buf = io.BytesIO()
    fig.canvas.print_png(buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def thin(n: int, limit: int = MAX_POINTS):
    """Indices of at most ``limit`` of ``n`` points, evenly spaced (deterministic)."""
    import numpy as np

    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).astype(int))


def short(text: object, n: int = 28) -> str:
    s = str(text)
    return s if len(s) <= n else s[: n - 1] + "…"
