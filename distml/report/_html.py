"""HTML pieces of the report: escaping, tables, images, the page. No JavaScript, no external
resource: the page opens offline."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Iterable

#: rows of a table shown in full; longer tables are cut with a note
MAX_TABLE_ROWS = 50


@dataclass
class Section:
    """One part of the report: ``id`` names it (``<section id=...>``), ``body`` is HTML."""

    id: str
    title: str
    body: str


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A cell: numbers to 4–6 significant digits, None/NaN as an empty cell, text escaped."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return esc(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return esc(f"{value:.6g}")
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return fmt(value.item())
        except (ValueError, AttributeError):
            pass
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return ""
    except ImportError:  # pragma: no cover
        pass
    return esc(value)


def table(frame, max_rows: int = MAX_TABLE_ROWS, caption: str | None = None) -> str:
    """A DataFrame as an escaped HTML table (first ``max_rows`` rows)."""
    shown = frame.head(max_rows)
    head = "".join(f"<th>{esc(c)}</th>" for c in shown.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>"
        for row in shown.itertuples(index=False, name=None)
    )
    note = (
        f"<p class='note'>first {max_rows} of {len(frame)} rows "
        "(the whole table is in <code>tables/</code>)</p>"
        if len(frame) > max_rows
        else ""
    )
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{note}"


def pairs(items: Iterable[tuple[Any, Any]]) -> str:
    """A two-column key/value table."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{fmt(v)}</td></tr>" for k, v in items)
    return f"<table class='kv'><tbody>{rows}</tbody></table>"


def img(b64: str, alt: str) -> str:
    return f"<img src='data:image/png;base64,{b64}' alt='{esc(alt)}'>"


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def para(text: str, cls: str = "note") -> str:
    return f"<p class='{cls}'>{esc(text)}</p>"


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1100px;
padding:1em 2em;color:#222;background:#fff}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.85em}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
thead th{background:#f3f3f3}table.kv th{background:#f7f7f7;font-weight:600}
td{font-variant-numeric:tabular-nums}caption{text-align:left;font-weight:600;padding:3px 0}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
img{max-width:100%;height:auto;display:block;margin:.5em 0}
.note{color:#666;font-size:.85em}.status{padding:2px 8px;border-radius:4px;color:#fff}
.succeeded{background:#2e7d32}.failed{background:#c62828}.running{background:#9e9e9e}
.error{color:#c62828}nav a{margin-right:.8em;font-size:.85em}
"""


def page(title: str, status: str, subtitle: str, sections: list[Section]) -> str:
    nav = "".join(f"<a href='#{esc(s.id)}'>{esc(s.title)}</a>" for s in sections)
    body = "".join(
        f"<section id='{esc(s.id)}'><h2>{esc(s.title)}</h2>{s.body}</section>" for s in sections
    )
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{esc(title)} <span class='status {esc(status)}'>{esc(status)}</span></h1>"
        f"<p class='note'>{esc(subtitle)}</p><nav>{nav}</nav>{body}</body></html>\n"
    )
