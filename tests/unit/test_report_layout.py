"""The report's own layout (``_plots.tidy``): every tick label, axis label and title drawn
inside the figure and outside the other panels, without matplotlib's constrained-layout
solver; figures it cannot place (a colorbar) get the solver."""

from __future__ import annotations

import numpy as np
import pytest

from distml.report._plots import figure, png


def _shown(axis) -> list:
    """The tick labels the draw shows, major and minor: those inside the view."""
    lo, hi = sorted(axis.get_view_interval())
    ticks = axis.get_major_ticks() + axis.get_minor_ticks()
    return [t.label1 for t in ticks if lo <= t.get_loc() <= hi and t.label1.get_visible()]


def _inside(fig) -> list[str]:
    """Texts of the figure's decorations drawn past its edges or over another panel."""
    r = fig.canvas.get_renderer()
    w, h = fig.canvas.get_width_height()
    bad = []
    panels = [ax.get_window_extent(r) for ax in fig.axes if ax.get_visible()]
    for i, ax in enumerate(a for a in fig.axes if a.get_visible()):
        texts = [ax.title, ax.xaxis.label, ax.yaxis.label, ax.xaxis.offsetText]
        texts += [ax.yaxis.offsetText, ax._left_title, ax._right_title]
        texts += _shown(ax.xaxis) + _shown(ax.yaxis)
        for t in texts:
            if not t.get_visible() or not t.get_text():
                continue
            bb = t.get_window_extent(r)
            if bb.x0 < -0.5 or bb.y0 < -0.5 or bb.x1 > w + 0.5 or bb.y1 > h + 0.5:
                bad.append(f"{t.get_text()!r} outside the figure: {bb}")
            for j, other in enumerate(panels):
                if j != i and bb.overlaps(other):
                    bad.append(f"{t.get_text()!r} over panel {j}")
    drawn = []
    for ax in (a for a in fig.axes if a.get_visible()):
        texts = [ax.title, ax.xaxis.label, ax.yaxis.label, ax.xaxis.offsetText]
        texts += [ax.yaxis.offsetText, *_shown(ax.xaxis), *_shown(ax.yaxis)]
        drawn += [(ax, t) for t in texts if t.get_visible() and t.get_text()]
    for i, (ax_a, a) in enumerate(drawn):  # two panels' texts never meet
        for ax_b, b in drawn[i + 1 :]:
            if ax_a is not ax_b and a.get_window_extent(r).overlaps(b.get_window_extent(r)):
                bad.append(f"{a.get_text()!r} meets {b.get_text()!r}")
    return bad


@pytest.mark.parametrize("ncols,nrows", [(1, 1), (3, 1), (2, 2)])
def test_long_labels_rotated_ticks_and_titles_stay_inside(ncols, nrows):
    fig, axes = figure(4.0 * ncols, 3.2 * nrows, ncols=ncols, nrows=nrows)
    names = ["a_rather_long_feature_name_", "x", "worst_fractal_dimension"]
    for k, ax in enumerate(axes):
        if k % 2:
            ax.barh(names, [3.0, 1.0, 2.0])
            ax.tick_params(axis="y", labelsize=8)
        else:
            ax.plot([-250000.5, 1e6], [0.0001, -0.0025])
            ax.set_xticks([-250000.5, 1e6], ["a_long_class_label", "b"], rotation=45, ha="right")
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual − predicted")
        ax.set_title(f"panel {k} with a title")
    png(fig)
    assert fig.get_layout_engine() is None  # no solver: placed by tidy
    assert _inside(fig) == []


def test_centred_end_labels_and_log_axes_stay_inside():
    """Centred (and rotated) x labels at the panel ends reach past its sides; log axes'
    labels are mathtext ($10^{-5}$), measured as drawn."""
    fig, axes = figure(9.0, 3.4, ncols=2)
    axes[0].semilogy([1, 2], [1.0, 1e-5])
    axes[1].plot(range(3), [0.1, 0.5, 0.9])
    axes[1].set_xticks(range(3), ["model.params.max_…", "b", "valid.accuracy"], rotation=20)
    axes[1].set_xlim(-0.1, 2.1)
    for ax in axes:
        ax.set_ylabel("centre shift")
    png(fig)
    assert fig.get_layout_engine() is None
    assert _inside(fig) == []
    # the log axis's labels were measured as drawn, not as their "$\\mathdefault{…}$" source
    left = axes[0].get_position().x0 * 9.0
    assert left < 1.2, left


def test_tidy_is_not_wider_than_the_solver():
    """Margins from the measured texts: within a few pixels of what constrained layout
    leaves around the same panel (no clipping, no waste)."""

    def build(layout):
        fig, axes = figure(6.4, 3.0, layout=layout)
        axes[0].barh([f"feature_{i:02d}_name" for i in range(12)], np.arange(12.0))
        axes[0].set_xlabel("importance")
        png(fig)
        return axes[0].get_window_extent(fig.canvas.get_renderer())

    tidy, solver = build("tidy"), build("constrained")
    assert abs(tidy.x0 - solver.x0) < 12 and abs(tidy.y0 - solver.y0) < 12, (tidy, solver)


def test_a_colorbar_figure_is_left_to_the_solver():
    """A colorbar splits its panel into a nested grid that tidy does not place: such a
    figure asks for the solver (the loadings heatmap does), and tidy leaves one made
    without it as it is instead of failing the section."""
    fig, axes = figure(5.0, 3.0, layout="constrained")
    im = axes[0].imshow(np.eye(3))
    fig.colorbar(im, ax=axes[0])
    png(fig)
    assert type(fig.get_layout_engine()).__name__ == "ConstrainedLayoutEngine"
    assert _inside(fig) == []
    fig, axes = figure(5.0, 3.0)
    fig.colorbar(axes[0].imshow(np.eye(3)), ax=axes[0])
    subplot_params = vars(fig.subplotpars).copy()
    assert png(fig)
    assert fig.get_layout_engine() is None and vars(fig.subplotpars) == subplot_params


def test_minor_log_labels_offset_texts_and_side_titles_stay_inside():
    """A log axis within one decade labels its minor ticks (wider than the major ones); large
    or offset values put an offset text above the y axis and right of the x axis; titles
    may sit left and right."""
    fig, axes = figure(9.0, 3.4, ncols=2)
    axes[0].semilogy([1, 2], [0.3, 0.9])
    axes[0].set_ylabel("centre shift")
    axes[0].set_title("left side", loc="left")
    axes[0].set_title("right side", loc="right")
    axes[1].plot([1e6 + 1, 1e6 + 2], [1e6 + 0.1, 1e6 + 0.2])
    axes[1].set_xlabel("rows")
    png(fig)
    assert fig.get_layout_engine() is None
    assert any(
        t.get_text()
        for t in _shown(axes[0].yaxis)
        if t in [tick.label1 for tick in axes[0].yaxis.get_minor_ticks()]
    )
    assert axes[1].yaxis.offsetText.get_text() and axes[1].xaxis.offsetText.get_text()
    assert _inside(fig) == []


def test_neighbouring_panels_long_x_labels_do_not_meet():
    """Centred x labels at the right end of one panel and the left end of the next reach
    into the gap from both sides."""
    fig, axes = figure(8.0, 3.0, ncols=2)
    for ax in axes:
        ax.plot(range(3), range(3))
        ax.set_xticks(range(3), ["a rather long first", "b", "a rather long last"])
        ax.set_xlim(0, 2)
    png(fig)
    assert fig.get_layout_engine() is None
    assert _inside(fig) == []


def test_twins_and_right_hand_labels_get_the_solver():
    fig, axes = figure(5.0, 3.0)
    axes[0].plot([0, 1], [0, 1])
    axes[0].twinx().plot([0, 1], [10, 0])
    png(fig)
    assert type(fig.get_layout_engine()).__name__ == "ConstrainedLayoutEngine"
    fig, axes = figure(5.0, 3.0)
    axes[0].plot([0, 1], [0, 1])
    axes[0].yaxis.tick_right()
    png(fig)
    assert type(fig.get_layout_engine()).__name__ == "ConstrainedLayoutEngine"
