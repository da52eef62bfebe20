"""report.md, rendered from the report's blocks."""
from __future__ import annotations

from benchmarks.report.blocks import plot_files, plot_title, sections


def _md_block(kind: str, payload, report: dict) -> list[str]:
    if kind in ("h1", "h2", "h3"):
        return ["#" * int(kind[1]) + " " + payload]
    if kind == "p":
        return [payload]
    if kind in ("ul", "note"):
        return [f"- {s}" for s in payload]
    if kind == "plots":
        return [f"![{plot_title(report, key)}]({plot_files(report)[key]})" for key in payload]
    head, body = payload[1]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in body]


def to_markdown(report: dict) -> str:
    return "\n\n".join("\n".join(_md_block(kind, payload, report)) for kind, payload in sections(report)) + "\n"
