"""report.html: one self-contained page (inline CSS, plots as base64 PNG) that opens offline, rendered from the
same tables as report.md."""
from __future__ import annotations

import base64
from html import escape

from benchmarks.report import (INTRO, PLOTS, Table, baseline_line, hardware_lines, label, lineage_lines, measured,
                               per_class_table, reference_lines, skipped_lines, summary_table, sweep_table)

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
tr.reference td { background: #fff1f0; }
.plots img { max-width: 48%; margin-right: 1%; border: 1px solid #ddd; }
.note { background: #f6f8fa; padding: 0.6em 1em; border-left: 4px solid #d62728; }
"""


def _table(table: Table, css_class: str, references: set[str] = frozenset()) -> str:
    head, body = table
    out = [f'<table class="{css_class}"><thead><tr>' + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for cells in body:
        cls = ' class="reference"' if cells[0] in references else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return "\n".join(out) + "</tbody></table>"


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{escape(s)}</li>" for s in items) + "</ul>"


def to_html(report: dict, pngs: dict[str, bytes]) -> str:
    refs = {label(r) for r in measured(report) if r.get("reference")}
    parts = [f"<h1>compress report: {escape(report['recipe'])}</h1>",
             f"<p>{escape(baseline_line(report))} {escape(INTRO)}</p>",
             _table(summary_table(report), "summary", refs)]
    if reference_lines(report):
        parts += ["<h2>Against the reference</h2>",
                  '<div class="note">' + "".join(f"<p>{escape(s)}</p>" for s in reference_lines(report)) + "</div>"]
    parts.append('<h2>Pareto plots</h2><div class="plots">' + "".join(
        f'<img alt="{escape(title)}" src="data:image/png;base64,{base64.b64encode(pngs[axis]).decode()}">'
        for axis, (_, title) in PLOTS.items()) + "</div>")
    if skipped_lines(report):
        parts += ["<h2>Not measured here</h2>", _list(skipped_lines(report))]
    parts += ["<h2>Latency sweep</h2>", _table(sweep_table(report), "sweep", refs),
              "<h2>Per-class precision, recall and F1 (test split)</h2>"]
    for r in measured(report):
        parts += [f"<h3>{escape(label(r))} on {escape(r['backend'])}</h3>", _table(per_class_table(r), "per-class")]
    parts += ["<h2>Lineage</h2>", _list(lineage_lines(report)), "<h2>Hardware</h2>", _list(hardware_lines(report))]
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>compress report: '
            f"{escape(report['recipe'])}</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n")
