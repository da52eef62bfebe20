"""What the report shows of a search step: what it asked, what it chose and why, every candidate in a table, and
their dev scores against p50 latency and size in a plot. The figures are the stage's own (`search` in its
manifest metrics, or in a failed run's failure), read through `SearchMetrics`."""
from __future__ import annotations

from compress.core.section import MARK, Measured, Metrics, Panel, Plot, Point, Ran, Section, Table


class CandidateFigures(Metrics):
    """One candidate as judged: its settings always; its figures once it ran (a candidate that did not, or failed
    before it was measured, has its status and why)."""

    id: str
    layers: int
    heads: float  # share of heads pruned
    ffn: float  # share of FFN width pruned
    status: str  # chosen, within budget, over budget, not confirmed, failed, not run
    reason: str = ""
    heads_per_layer: list[int] | None = None
    intermediate_size: int | None = None
    macs: int | None = None
    dev_score_fp32: float | None = None
    dev_score: float | None = None  # INT8, as it ships
    drop_points: float | None = None
    drop_se: float | None = None
    held_out_drop_points: float | None = None  # looked at only for the candidates a held-out share confirmed or not
    held_out_drop_se: float | None = None
    p50_ms: float | None = None
    size_bytes: int | None = None
    pareto: bool = False
    seconds: float | None = None


class SearchFigures(Metrics):
    objective: str  # latency or size
    metric: str
    max_drop_points: float
    teacher: str
    teacher_dev_score: float
    margin_se: float | None = None
    held_out: int = 0  # dev examples held out from judging to confirm the choice
    sequence_length: int
    threads: int
    chosen: str | None = None
    why: str = ""
    candidates: list[CandidateFigures]
    train_seconds: float | None = None  # None: a manifest from before the search's costs were kept
    judge_seconds: float | None = None
    elastic_history: list[dict] = []
    elastic_reused: bool = False
    refine_stop: str = ""  # why the refinements' bisection ended early (refine_minutes), if it did


class SearchMetrics(Metrics):
    search: SearchFigures | None = None


COLOURS = {"chosen": "#d62728", "within budget": "#1f77b4", "over budget": "#9e9e9e"}
AXES = {"p50_ms": 1.0, "size_bytes": 1e-6}  # what the plot's panels put across, and the scale to ms or MB


def _s(value) -> str:
    return "" if value is None else str(value)


def _fixed(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def budget(search: SearchFigures) -> float:
    """The lowest dev score within budget, as a fraction: the teacher's dev score less the allowed drop."""
    return search.teacher_dev_score - search.max_drop_points / 100


def held_out(c: CandidateFigures) -> str:
    return "" if c.held_out_drop_points is None else f"{c.held_out_drop_points:.2f} ± {c.held_out_drop_se:.2f}"


def table(search: SearchFigures, label: str) -> Table:
    """One row per candidate, in the order they were considered (cheapest estimate first). A candidate that did not
    run has only its settings and why; the dev scores are the search's own (dev split, INT8 judged, FP32 beside)."""
    head = ["candidate", "layers", "heads pruned", "FFN pruned", "heads per layer", "FFN width",
            f"GMACs @{search.sequence_length}", f"dev {label} FP32", f"dev {label} INT8", "drop (pts)",
            "drop SE (pts)", "held-out drop (pts)", "p50 ms", "size", "Pareto", "judge s", "status"]
    rows = []
    for c in search.candidates:
        rows.append([(MARK if c.id == search.chosen else "") + c.id, str(c.layers), f"{100 * c.heads:.0f}%",
                     f"{100 * c.ffn:.0f}%", "/".join(map(str, c.heads_per_layer)) if c.heads_per_layer else "",
                     _s(c.intermediate_size), f"{c.macs / 1e9:.3f}" if c.macs is not None else "",
                     _fixed(c.dev_score_fp32, 4), _fixed(c.dev_score, 4), _fixed(c.drop_points, 2),
                     _fixed(c.drop_se, 2), held_out(c), _s(c.p50_ms),
                     f"{c.size_bytes / 1e6:.1f} MB" if c.size_bytes is not None else "", "✓" if c.pareto else "",
                     _s(c.seconds), c.status + (f": {c.reason}" if c.reason else "")])
    return Table(css="search", head=head, rows=rows)


def lines(search: SearchFigures, label: str) -> list[str]:
    """What the search asked, and what it chose and why (the stage's own sentence, verbatim)."""
    best = "lowest p50 latency" if search.objective == "latency" else "smallest model file"
    return [
        f"Budget: INT8 dev {label} at most {float(search.max_drop_points)} points below the teacher's "
        f"({search.teacher}: {search.teacher_dev_score:.4f}), i.e. at least {budget(search):.4f}"
        + (f", by {search.margin_se:g} standard error(s) of the test drop each predicts (a paired bootstrap over "
           "dev, widened by the test set's own noise)"
           if search.margin_se else "") + f"; objective: {best}."
        + (f" Candidates are judged on dev less {search.held_out} examples held out at random; the chosen one must "
           "fit on those too, by the margin (the fastest that fit are tried in turn; a refinement, one of a few, "
           "needs only its drop within the budget on the rest)." if search.held_out else ""),
        f"Latency: ort-cpu, batch 1, sequence {search.sequence_length}, {search.threads} thread(s).",
        (f"Chosen: {search.chosen}: {search.why}" if search.chosen else
         "Chosen: none: no candidate met the budget" + (f" ({search.why})" if search.why else "")),
        *([cost(search)] if search.train_seconds is not None else []),
    ]


def cost(search: SearchFigures) -> str:
    """What the search spent: one elastic training for all candidates, then judging each as it ships."""
    judged = [c for c in search.candidates if c.seconds is not None]
    refined = [c for c in judged if c.id.endswith("+refined")]
    cut = [c for c in judged if c not in refined]
    refining = (f"; {len(refined)} refined, their distillation included: {sum(c.seconds for c in refined) / 60:.1f} "
                "min" if refined else "") + (f"; {search.refine_stop}" if search.refine_stop else "")
    trained = (f"{search.train_seconds / 60:.1f} min training every candidate at once ({len(search.elastic_history)} "
               "epoch(s) of elastic distillation" + ("; reused from the run's cache" if search.elastic_reused else "")
               + ")")
    return (f"Cost: {trained}, {search.judge_seconds / 60:.1f} min judging {len(judged)} "
            f"(export, INT8, dev, latency: {sum(c.seconds for c in cut) / max(len(cut), 1):.1f} s each{refining}). "
            "Pareto: no other candidate is both faster (or smaller) and better on dev.")


def points(search: SearchFigures, x: str) -> list[Point]:
    """The candidates that were judged, against `x` (p50_ms or size_bytes): x in ms or MB, y the INT8 dev score in
    %; the chosen one starred, over-budget ones grey."""
    shown = []
    for c in search.candidates:
        if c.dev_score is None or getattr(c, x) is None:  # not run, or failed before it was judged
            continue
        chosen = c.id == search.chosen
        shown.append(Point(x=getattr(c, x) * AXES[x], y=100 * c.dev_score, star=chosen,
                           colour=COLOURS.get(c.status, "#9e9e9e"), label=f"{c.id} (chosen)" if chosen else c.id))
    return shown


def plot(step: str, search: SearchFigures, label: str) -> Plot:
    """The candidates against p50 latency and against size, with the budget (teacher dev less the drop) dashed."""
    line = (100 * budget(search), f"budget: teacher dev {100 * search.teacher_dev_score:.2f}% − "
                                  f"{float(search.max_drop_points)} points = {100 * budget(search):.2f}%")
    x_labels = {"p50_ms": f"p50 latency, ms (ort-cpu, batch 1, sequence {search.sequence_length}, "
                          f"{search.threads} thread(s))", "size_bytes": "model file size, MB"}
    title = f"Search {step}: dev {label} (INT8) vs p50 latency and size on disk"
    return Plot(file=f"search-{step}.png", title=title + ("" if points(search, "p50_ms") else ": no candidate ran"),
                y_label=f"dev {label} (INT8), %",
                panels=[Panel(x_label=x_labels[x], points=points(search, x), line=line) for x in AXES])


def search_section(steps: list[Ran], measured: Measured) -> list[Section]:
    """One section per search step (the one the run failed at included), in recipe order."""
    sections = []
    for step in steps:
        search = step.metrics.search
        if search is None:
            continue
        label = measured.label(search.metric)
        sections.append(Section(title=f"Search: {step.name}", lines=lines(search, label), table=table(search, label),
                                plot=plot(step.name, search, label)))
    return sections
