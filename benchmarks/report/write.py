"""Every report file on disk, in order: the source, then its views."""
from __future__ import annotations

from pathlib import Path

from benchmarks.report.blocks import plot_files
from benchmarks.report.html import to_html
from benchmarks.report.markdown import to_markdown
from benchmarks.report.plots import plot_pngs
from compress.core.artifact import write_json_atomic


def write_report(report: dict, run_dir: Path) -> None:
    """report.json first (the source), then the views rendered from it."""
    write_json_atomic(run_dir / "report.json", report)
    pngs, files = plot_pngs(report), plot_files(report)
    for key, png in pngs.items():
        (run_dir / files[key]).write_bytes(png)
    (run_dir / "report.md").write_text(to_markdown(report))
    (run_dir / "report.html").write_text(to_html(report, pngs))
