"""Building ``report.html``: the sections that apply to what the run directory holds."""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

from distml.report import _common, _out_of_core, _search, _statsmodels, _supervised
from distml.report._html import Section, esc, page
from distml.report._run import RunView

log = logging.getLogger("distml")
REPORT = "report.html"

#: every section builder, in page order; each returns None when the run has nothing for it,
#: so a new kind that writes known tables gets their sections without a change here. The
#: answer leads (overview, metrics, plots), the provenance (spec, data, versions) comes last.
BUILDERS: list[Callable[[RunView], Section | None]] = [
    _common.overview,
    _common.metrics,
    _search.trials,
    _search.parameter_importance,
    _search.parallel_coordinates,
    _supervised.confusion_matrix,
    _supervised.roc_curve,
    _supervised.precision_recall,
    _supervised.calibration,
    _supervised.predicted_vs_actual,
    _supervised.residuals,
    _supervised.learning_curve,
    _supervised.feature_importance,
    _statsmodels.coefficients,
    _statsmodels.fit_statistics,
    _statsmodels.coefficient_distribution,
    _statsmodels.group_fits,
    _statsmodels.forecast,
    _common.summary,
    _out_of_core.scree,
    _out_of_core.loadings,
    _out_of_core.cluster_sizes,
    _out_of_core.cluster_centers,
    _out_of_core.pass_history,
    _common.artifacts,
    _common.provenance,
]


def render(
    run_dir: str | os.PathLike,
    manifest: dict | None = None,
    extra: Sequence[Callable[[RunView], Section | None]] = (),
) -> tuple[str, list[str], list[str]]:
    """(HTML, section ids, errors). ``extra``: the kind's own section builders (its Job's
    ``report_sections()``, passed by the caller: this layer knows no kind), placed after the
    generic sections and before the provenance. A section whose builder fails becomes a short
    error note (its id suffixed ``-error``) instead of failing the whole report."""
    run = RunView(run_dir, manifest)
    sections: list[Section] = []
    errors: list[str] = []
    tail = BUILDERS.index(_common.artifacts)
    for build in [*BUILDERS[:tail], *extra, *BUILDERS[tail:]]:
        try:
            with warnings.catch_warnings():  # matplotlib's advice is not the run's business
                warnings.simplefilter("ignore")
                s = build(run)
        except Exception as e:  # one bad section must not cost the others
            name = build.__name__
            errors.append(f"{name}: {type(e).__name__}: {e}")
            log.debug("report section %s failed", name, exc_info=True)
            s = Section(
                f"{name}-error",
                name.replace("_", " "),
                f"<p class='error'>this section could not be drawn: "
                f"{esc(type(e).__name__)}: {esc(e)}</p>",
            )
        if s is not None:
            sections.append(s)
    m = run.manifest
    title = f"{m.get('name', run.path.parent.name)} / {m.get('run_id', run.path.name)}"
    subtitle = (
        f"distml {run.kind} run, report built {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}"
        f" from {run.path}"
    )
    return (
        page(title, str(m.get("status", "unknown")), subtitle, sections),
        [s.id for s in sections],
        errors,
    )


def report_sections(
    run_dir: str | os.PathLike, extra: Sequence[Callable[[RunView], Section | None]] = ()
) -> list[str]:
    """The ids of the sections ``report.html`` of ``run_dir`` has (or would have)."""
    return render(run_dir, None, extra)[1]


def build_report(
    run_dir: str | os.PathLike,
    manifest: dict | None = None,
    extra: Sequence[Callable[[RunView], Section | None]] = (),
) -> dict:
    """Write ``RUN_DIR/report.html`` (atomically) and return ``{"path", "sections", "errors",
    "seconds"}``; ``manifest`` overrides ``manifest.json`` (the run writes its report before
    its final manifest).

    >>> distml.build_report("runs/quickstart/20250101-000000-abcdef")   # doctest: +SKIP
    """
    t0 = time.perf_counter()
    path = Path(run_dir)
    text, ids, errors = render(path, manifest, extra)
    final = path / REPORT
    from distml.runtime.artifacts import atomic_file

    with atomic_file(final) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return {
        "path": str(final),
        "sections": ids,
        "errors": errors,
        "seconds": round(time.perf_counter() - t0, 4),
    }
