"""The one place a report is made: a folder's rows (with the device rows kept beside them) -> report.json -> its
views. The pipeline, `benchmarks.run` and `benchmarks.ingest` all come through `make_report`, so they merge, judge
and write alike."""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks.report.blocks import plot_files
from benchmarks.report.build import BUDGET_POINTS, build_report
from benchmarks.report.html import to_html
from benchmarks.report.markdown import to_markdown
from benchmarks.report.plots import plot_pngs
from compress.core.artifact import write_json_atomic

DEVICE_RESULTS = "device-results"  # <folder>/device-results/*.json: rows benchmarks.ingest merged, one a file


def device_rows(folder: Path) -> list[dict]:
    """The rows measured on other devices and kept in the folder, so every later report of it holds them too."""
    kept = folder / DEVICE_RESULTS
    return [json.loads(p.read_text()) for p in sorted(kept.glob("*.json"))] if kept.is_dir() else []


def make_report(folder: Path, recipe_name: str, baseline: str, artifacts: list[dict], rows: list[dict],
                hardware: dict, budget_points: float | None = None, failure: dict | None = None) -> dict:
    """Build the report of `rows` (this machine's; any device rows among them are replaced by the folder's own) and
    write it into `folder`. `budget_points` is the gate's limit where there is one; else BUDGET_POINTS."""
    rows = [r for r in rows if "measured_on" not in r] + device_rows(folder)
    budget = BUDGET_POINTS if budget_points is None else budget_points
    report = build_report(recipe_name, baseline, artifacts, rows, hardware, budget, failure)
    write_report(report, folder)
    return report


def write_report(report: dict, folder: Path) -> None:
    """report.json first (the source), then the views rendered from it."""
    write_json_atomic(folder / "report.json", report)
    pngs, files = plot_pngs(report), plot_files(report)
    for key, png in pngs.items():
        (folder / files[key]).write_bytes(png)
    (folder / "report.md").write_text(to_markdown(report))
    (folder / "report.html").write_text(to_html(report, pngs))
