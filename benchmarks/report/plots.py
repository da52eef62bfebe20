"""Pareto plots from report.json: the score (accuracy, entity F1) against p50 latency and against size, the front
drawn as a step line."""
from __future__ import annotations

import io

from benchmarks.report.blocks import headline, plot_title
from benchmarks.report.build import first_latency, measured, score


def _cost(row: dict, axis: str) -> float | None:
    if axis == "size":
        return row["size_bytes"] / 1e6
    point = first_latency(row)
    return point["p50_ms"] if point else None


def pareto_png(report: dict, axis: str) -> bytes:
    """A PNG; reads the front from each row's `pareto` flag so the picture and the tables agree."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in measured(report) if _cost(r, axis) is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for i, r in enumerate(rows):
        ref = bool(r.get("reference"))
        ax.scatter(_cost(r, axis), 100 * score(r), s=110 if ref else 60, marker="*" if ref else "o",
                   color="#d62728" if ref else ("#1f77b4" if r["pareto"][axis] else "#9e9e9e"), zorder=3)
        ax.annotate(f"{r['artifact']} / {r['backend']}" + (" (reference)" if ref else ""),  # staggered: near points
                    (_cost(r, axis), 100 * score(r)), textcoords="offset points", xytext=(6, 4 - 11 * (i % 3)),
                    fontsize=8)
    front = sorted((r for r in rows if r["pareto"][axis]), key=lambda r: _cost(r, axis))
    if front:
        ax.step([_cost(r, axis) for r in front], [100 * score(r) for r in front], where="post", color="#1f77b4",
                linewidth=1.5, marker="o", markersize=13, markerfacecolor="none", label="Pareto front", zorder=2)
        ax.legend(loc="lower right", fontsize=8)
    first = first_latency(rows[0]) if rows and axis == "latency" else None
    where = f" (batch {first['batch_size']}, sequence {first['sequence_length']})" if first else ""
    ax.set_xlabel("p50 latency, ms" + where if axis == "latency" else "model file size, MB")
    ax.set_ylabel(f"test {headline(report)}, %")
    ax.set_title(plot_title(report, axis) + ("" if rows else ": no measured rows"))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
