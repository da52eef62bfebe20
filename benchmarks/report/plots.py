"""Pareto plots from report.json: the score (accuracy, entity F1) against p50 latency and against size, the front
drawn as a step line; and per search step, its candidates' dev score against their latency (or size)."""
from __future__ import annotations

import io

from benchmarks.report.blocks import PLOTS, headline, plot_files, plot_search, plot_title, search_budget
from benchmarks.report.build import first_latency, measured, metric_label, score


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


SEARCH_COLOURS = {"chosen": "#d62728", "within budget": "#1f77b4", "over budget": "#9e9e9e"}


AXES = {"p50_ms": 1.0, "size_bytes": 1e-6}  # what a search plot's panels put across, and the scale to ms or MB


def search_points(search: dict, x: str) -> list[dict]:
    """The candidates that were judged, as plotted against `x` (p50_ms or size_bytes): x (ms or MB), y (INT8 dev
    score, %), the marker and colour (the chosen one a red star, over-budget ones grey) and the label."""
    points = []
    for c in search["candidates"]:
        if c.get("dev_score") is None or c.get(x) is None:  # not run, or failed before it was judged
            continue
        chosen = c["id"] == search.get("chosen")
        points.append({"id": c["id"], "x": c[x] * AXES[x], "y": 100 * c["dev_score"],
                       "marker": "*" if chosen else "o", "colour": SEARCH_COLOURS.get(c["status"], "#9e9e9e"),
                       "label": f"{c['id']} (chosen)" if chosen else c["id"]})
    return points


def front(points: list[dict]) -> list[dict]:
    """The Pareto front of the points: none other is both lower on x and higher on y; by rising x."""
    best, kept = float("-inf"), []
    for p in sorted(points, key=lambda p: (p["x"], -p["y"])):
        if p["y"] > best:
            kept.append(p)
            best = p["y"]
    return kept


def search_png(report: dict, key: str) -> bytes:
    """A search step's candidates against p50 latency and against size, the Pareto front drawn as a step line
    (only its points named, or the plot drowns in labels), and the budget (teacher dev less the drop) dashed."""
    plt = _pyplot()
    _, search = plot_search(report, key)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110, sharey=True)
    budget = 100 * search_budget(search)
    for ax, x in zip(axes, AXES):
        points = search_points(search, x)
        edge = front(points)
        for p in points:
            ax.scatter(p["x"], p["y"], s=220 if p["marker"] == "*" else 40, marker=p["marker"], color=p["colour"],
                       zorder=3)
        for i, p in enumerate(edge + [p for p in points if p["marker"] == "*" and p not in edge]):
            ax.annotate(p["label"], (p["x"], p["y"]), textcoords="offset points", xytext=(6, 4 - 11 * (i % 3)),
                        fontsize=7, fontweight="bold" if p["marker"] == "*" else "normal")
        if edge:
            ax.step([p["x"] for p in edge], [p["y"] for p in edge], where="post", color="#2ca02c", linewidth=1,
                    label="Pareto front", zorder=2)
        ax.axhline(budget, color="#d62728", linestyle="--", linewidth=1,
                   label=f"budget: teacher dev {100 * search['teacher_dev_score']:.2f}% − "
                         f"{float(search['max_drop_points'])} points = {budget:.2f}%")
        ax.legend(loc="lower right", fontsize=8)
        ax.margins(x=0.15, y=0.1)  # room for the labels of the outermost points
        ax.set_xlabel(f"p50 latency, ms (ort-cpu, batch 1, sequence {search['sequence_length']}, "
                      f"{search['threads']} thread(s))" if x == "p50_ms" else "model file size, MB")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"dev {metric_label(search['metric'])} (INT8), %")
    fig.suptitle(plot_title(report, key) + ("" if search_points(search, "p50_ms") else ": no candidate ran"))
    fig.tight_layout()
    return _png(fig)


def plot_pngs(report: dict) -> dict[str, bytes]:
    """Every plot of the report by its key (blocks.plot_files): the Pareto plots, then each search step's."""
    return {key: pareto_png(report, key) if key in PLOTS else search_png(report, key) for key in plot_files(report)}
