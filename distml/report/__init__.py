"""``report.html``: a self-contained page per run, built from what its run directory holds.

Sections come from the files present — the manifest (overview), ``metrics.json`` and each
known table under ``tables/`` (``confusion_matrix``, ``predictions``, ``learning_curve``,
``feature_importance``, ``coefficients``, ``model_stats``, ``forecast``, ``trials``,
``components``, ``centers``, ``pass_history``) — so a kind that writes one of these tables gets
its section with no change here. Plots are matplotlib figures drawn on the Agg canvas and
embedded as base64 PNG; the page has no JavaScript and loads nothing from the network.
Imports here are light (matplotlib and pandas load when a report is built).
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_report", "report_sections", "list_runs", "format_runs", "REPORT"]
REPORT = "report.html"


def build_report(run_dir: Any, manifest: dict | None = None, extra: Any = ()) -> dict:
    """Write ``RUN_DIR/report.html`` with the generic sections plus ``extra`` (the kind's
    own builders); see :func:`distml.report.build.build_report`. ``distml.build_report`` adds
    the run's kind sections itself."""
    from distml.report.build import build_report as _build

    return _build(run_dir, manifest, extra)


def warm_up() -> None:
    """Import what building a report needs and draw one small figure (matplotlib's fonts and
    Agg canvas), so the report built at the end of a run starts warm. A run calls it in a
    background thread while its job runs (:mod:`distml.api`); failures are ignored here (the
    report itself says what went wrong)."""
    try:
        # pandas first, for the job's result (its tables arrive as pandas frames) and the
        # report's reads (pyarrow.dataset, under pyarrow.parquet.read_table): imported while
        # a cold run's single task imports its own libraries and a core is idle, not when the
        # result is deserialised (cold quickstart job_s 1.95 -> 1.65 s, 5 alternated runs
        # each). First, so that the driver's main thread, which imports pandas before it
        # takes a task's result (runtime.runners.result), at most waits for this import and
        # never imports pandas's dependencies while this thread imports matplotlib's.
        import pandas  # noqa: F401
        import pyarrow.dataset  # noqa: F401

        import distml.report.build  # noqa: F401 - the section modules come with it
        from distml.report._plots import figure, png

        fig, (ax,) = figure(1.0, 1.0)
        ax.plot([0, 1], [0, 1])
        ax.set_title("warm")
        png(fig)
        # (no scikit-learn: the curves are numpy's, _curves.py; importing it here cost a warm
        # quickstart 0.9 s of wall time, its CPU taken from the job and the report)
    except Exception:  # noqa: BLE001 - a warm-up only
        pass


def report_sections(run_dir: Any, extra: Any = ()) -> list[str]:
    """Section ids of the run's report (without writing it)."""
    from distml.report.build import report_sections as _sections

    return _sections(run_dir, extra)


def list_runs(output: Any = "runs") -> list:
    from distml.report.runs import list_runs as _list

    return _list(output)


def format_runs(rows: list) -> str:
    from distml.report.runs import format_runs as _format

    return _format(rows)
