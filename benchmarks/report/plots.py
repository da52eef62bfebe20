"""The report's plots from report.json: the score (accuracy, entity F1) against p50 latency and against size, the
front drawn as a step line; and the plots the run's stages declare (compress.core.section.Plot)."""
from __future__ import annotations

import io

from benchmarks.report.blocks import PLOTS, headline, plot_files, plot_title, stage_plots
from benchmarks.report.build import first_latency, measured, score


def _cost(row: dict, axis: str) -> float | None:
    if axis == "size":
        return row["size_bytes"] / 1e6
    point = first_latency(row)
    return point["p50_ms"] if point else None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def pareto_png(report: dict, axis: str) -> bytes:
    """A PNG; reads the front from each row's `pareto` flag so the picture and the tables agree."""
    plt = _pyplot()
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
    return _png(fig)


def front(points: list[dict]) -> list[dict]:
    """The Pareto front of the points: none other is both lower on x and higher on y; by rising x."""
    best, kept = float("-inf"), []
    for p in sorted(points, key=lambda p: (p["x"], -p["y"])):
        if p["y"] > best:
            kept.append(p)
            best = p["y"]
    return kept


def section_png(plot: dict) -> bytes:
    """A stage's plot (compress.core.section.Plot, as report.json holds it): its panels side by side, sharing the
    vertical axis; in each the points, their Pareto front as a step line (only the front's points and the starred
    one named, or the plot drowns in labels) and the dashed line, where the panel has one."""
    plt = _pyplot()
    panels = plot["panels"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8), dpi=110, sharey=True, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        points = panel["points"]
        edge = front(points)
        for p in points:
            ax.scatter(p["x"], p["y"], s=220 if p["star"] else 40, marker="*" if p["star"] else "o",
                       color=p["colour"], zorder=3)
        for i, p in enumerate(edge + [p for p in points if p["star"] and p not in edge]):
            ax.annotate(p["label"], (p["x"], p["y"]), textcoords="offset points", xytext=(6, 4 - 11 * (i % 3)),
                        fontsize=7, fontweight="bold" if p["star"] else "normal")
        if edge:
            ax.step([p["x"] for p in edge], [p["y"] for p in edge], where="post", color="#2ca02c", linewidth=1,
                    label="Pareto front", zorder=2)
        if panel["line"]:
            ax.axhline(panel["line"][0], color="#d62728", linestyle="--", linewidth=1, label=panel["line"][1])
        if edge or panel["line"]:
            ax.legend(loc="lower right", fontsize=8)
        ax.margins(x=0.15, y=0.1)  # room for the labels of the outermost points
        ax.set_xlabel(panel["x_label"])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(plot["y_label"])
    fig.suptitle(plot["title"])
    fig.tight_layout()
    return _png(fig)


def plot_pngs(report: dict) -> dict[str, bytes]:
    """Every plot of the report by its key (blocks.plot_files): the Pareto plots, then the stages'."""
    stages = stage_plots(report)
    return {key: pareto_png(report, key) if key in PLOTS else section_png(stages[key]) for key in plot_files(report)}
