"""Every report file on disk, in order: the source, then its views."""
from __future__ import annotations

from pathlib import Path

from benchmarks.report.blocks import PLOTS
from benchmarks.report.html import to_html
from benchmarks.report.markdown import to_markdown
from benchmarks.report.plots import pareto_png
from compress.core.artifact import write_json_atomic


def write_report(report: dict, run_dir: Path) -> None:
    """report.json first (the source), then the views rendered from it."""
    write_json_atomic(run_dir / "report.json", report)
    pngs = {axis: pareto_png(report, axis) for axis in PLOTS}
    for axis, png in pngs.items():
        (run_dir / PLOTS[axis][0]).write_bytes(png)
    (run_dir / "report.md").write_text(to_markdown(report))
    (run_dir / "report.html").write_text(to_html(report, pngs))
