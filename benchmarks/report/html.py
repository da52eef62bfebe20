"""report.html: one self-contained page (inline CSS, plots as base64 PNG) that opens offline, rendered from the
same blocks as report.md (benchmarks.report.blocks.sections)."""
from __future__ import annotations

import base64
from html import escape

from benchmarks.report.blocks import Table, label, plot_title, sections
from benchmarks.report.build import measured
from compress.core.section import MARK

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
tr.reference td { background: #fff1f0; }
tr.chosen td { background: #eef7ee; font-weight: bold; }
.plots img { max-width: 48%; margin-right: 1%; border: 1px solid #ddd; }
.note { background: #f6f8fa; padding: 0.6em 1em; border-left: 4px solid #d62728; }
"""


def _table(css_class: str, table: Table, references: set[str]) -> str:
    head, body = table
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    out = [f'<table class="{css_class}"><thead><tr>{header}</tr></thead><tbody>']
    for cells in body:
        cls = (' class="reference"' if cells[0] in references
               else ' class="chosen"' if cells[0].startswith(MARK) else "")
        out.append(f"<tr{cls}>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return "\n".join(out) + "</tbody></table>"


def _block(kind: str, payload, pngs: dict[str, bytes], references: set[str], report: dict) -> str:
    if kind in ("h1", "h2", "h3"):
        return f"<{kind}>{escape(payload)}</{kind}>"
    if kind == "p":
        return f"<p>{escape(payload)}</p>"
    if kind == "ul":
        return "<ul>" + "".join(f"<li>{escape(s)}</li>" for s in payload) + "</ul>"
    if kind == "note":
        return '<div class="note">' + "".join(f"<p>{escape(s)}</p>" for s in payload) + "</div>"
    if kind == "plots":
        return '<div class="plots">' + "".join(
            f'<img alt="{escape(plot_title(report, key))}" src="data:image/png;base64,{base64.b64encode(pngs[key]).decode()}">'
            for key in payload) + "</div>"
    return _table(*payload, references)


def to_html(report: dict, pngs: dict[str, bytes]) -> str:
    references = {label(r) for r in measured(report) if r.get("reference")}
    body = "\n".join(_block(kind, payload, pngs, references, report) for kind, payload in sections(report))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>compress report: '
            f"{escape(report['recipe'])}</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n")
