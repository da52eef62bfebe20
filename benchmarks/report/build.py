"""report.json's content (the source of truth): rows with their drops, ratios and Pareto flags, the baseline,
the hardware, and our best model set beside the reference.

Every figure judged here is the row's `score`, the task's headline metric named by its `metric`: accuracy for
sequence classification, entity-level F1 for token classification. Drops are in points of that score.
"""
from __future__ import annotations

from compress.core.evaluate import at_chance, points_below
from compress.core.section import Measured, Ran
from compress.core.stage import STAGES
from compress.core.task import scored_by
from compress.stages import registry  # noqa: F401  (every stage, registered: their sections are read here)

BUDGET_POINTS = 1.0  # our best beside the reference loses at most this against the baseline, where no gate says

def score(row: dict) -> float | None:
    """A row's headline figure. Rows (and stored reports) from before rows carried a `score` give accuracy, the
    only metric there was, so an old baseline report can still be compared with."""
    return row["score"] if "score" in row else row.get("accuracy")


def metric(row: dict) -> str:
    """The name of `score(row)`'s metric (the keys of a metrics dict: accuracy, entity_f1); a report's own
    `metric` is its rows' (one task per report). Older rows and reports: accuracy."""
    return row.get("metric") or "accuracy"


def score_names(name: str | None) -> dict:
    """How the report names a metric's score and what a row's per_class holds, as the task scored by it says
    (`by_class`: the title of a table of per-class scores across rows, where the task has one); a metric no task
    scores by is called by its key. Written into report.json (`score_names`), so the views read them from there."""
    task = scored_by(name or "accuracy")
    if task is None:
        return {"label": name, "per_class": "class", "by_class": None}
    return {"label": task.metric_label, "per_class": task.per_class, "by_class": task.by_class}


def metric_label(name: str) -> str:
    """A metric as the report's readers see it: "entity F1", "accuracy"."""
    return score_names(name)["label"]


def first_latency(row: dict) -> dict | None:
    return row["latency"][0] if row.get("latency") else None


def measured(report: dict) -> list[dict]:
    return [r for r in report["rows"] if r["status"] == "measured"]


def _p50(row: dict) -> float | None:
    point = first_latency(row)
    return point["p50_ms"] if point else None


def _dominated(row: dict, others: list[dict], cost) -> bool:
    """Another row scores at least as well and is at most as costly, and strictly better in one of the two."""
    return any(cost(o) <= cost(row) and score(o) >= score(row)
               and (cost(o) < cost(row) or score(o) > score(row)) for o in others if o is not row)


def _mark_pareto(rows: list[dict]) -> None:
    timed = [r for r in rows if _p50(r) is not None]
    for row in rows:
        row["pareto"] = {
            "latency": row in timed and not _dominated(row, timed, _p50),
            "size": not _dominated(row, rows, lambda r: r["size_bytes"]),
        }


def _pick(row: dict) -> dict:
    """What the reference note keeps of a row."""
    return {"artifact": row["artifact"], "backend": row["backend"], "metric": metric(row), "score": score(row),
            "size_bytes": row["size_bytes"], "p50_ms": _p50(row), "drop_points": row.get("score_drop_points")}


def _reference_note(rows: list[dict], baseline: str, budget_points: float) -> dict | None:
    """Our best model beside the reference: the fastest of ours on the reference's back end whose score is within
    `budget_points` of the baseline's (the FP32 teacher; judged on the row's `score_drop_points`, the drop the
    summary shows, so float noise such as 1.0000000000000009 points cannot exclude a row), else the best-scoring
    of ours there. Both ratios are the reference's figure over ours: speed (p50) and size (bytes)."""
    ref = next((r for r in rows if r.get("reference") and _p50(r) is not None), None)
    if ref is None:
        return None
    ours = [r for r in rows if not r.get("reference") and r["backend"] == ref["backend"] and _p50(r) is not None]
    if not ours:
        return None
    if all(r.get("at_chance") for r in ours):  # a model at chance is nobody's "best", however fast
        return {"rule": f"none of ours on {ref['backend']} is above chance", "budget_points": budget_points,
                "baseline": baseline, "reference": _pick(ref), "best": None}
    ours = [r for r in ours if not r.get("at_chance")]
    close = [r for r in ours if r.get("score_drop_points") is not None and r["score_drop_points"] <= budget_points]
    best = min(close, key=_p50) if close else max(ours, key=score)
    judged = any(r.get("score_drop_points") is not None for r in ours)
    instead = "" if close else (" (none is: the best-scoring of ours instead)" if judged else
                                " (the baseline has no measured score: the best-scoring of ours instead)")
    rule = (f"fastest of ours on {ref['backend']} within {float(budget_points)} points of the baseline {baseline}'s "
            f"{metric_label(metric(ref))}{instead}")
    return {"rule": rule, "budget_points": budget_points, "baseline": baseline, "reference": _pick(ref),
            "best": _pick(best), "speed_ratio": round(_p50(ref) / _p50(best), 2),
            "size_ratio": round(ref["size_bytes"] / best["size_bytes"], 2)}


def chance_warning(base: dict | None) -> str | None:
    """Why the baseline's figures cannot show a loss, when it is at chance (compress.core.evaluate.at_chance): every
    drop measured against a model that predicts the majority class (or, tagging, finds no entity) is meaningless,
    and a gate would pass anything."""
    why = at_chance(base) if base else None
    if why is None:
        return None
    return (f"the baseline {base['artifact']} is at chance: test {why}; it has learned nothing that a drop could "
            f"show (train it longer, or check the labels)")


def stage_sections(artifacts: list[dict], rows: list[dict], failure: dict | None) -> list[dict]:
    """The sections the run's stages declare (compress.core.section), stage by stage in the order they first ran:
    each registered stage with a section gets its steps' metrics, read through its metrics model, and the test
    scores; the step a run failed at comes last among its stage's, with what it measured before it stopped."""
    steps: dict[str, list[Ran]] = {}
    failed = [{"name": failure["step"], "stage": failure["stage"], "parent": None, "metrics": failure["metrics"]}
              ] if failure and failure.get("stage") and failure.get("metrics") else []
    for a in artifacts + failed:
        spec = STAGES.get(a["stage"])
        if spec is not None and spec.section is not None:
            metrics = spec.metrics.model_validate(a.get("metrics") or {})
            steps.setdefault(a["stage"], []).append(Ran(a["name"], a.get("parent"), metrics))
    scores = {(r["artifact"], r["backend"]): score(r) for r in rows if r["status"] == "measured"}
    measured = Measured(scores, metric_label)
    return [s.model_dump() for stage, ran in steps.items() for s in STAGES[stage].section(ran, measured)]


def build_report(recipe_name: str, baseline: str, artifacts: list[dict], rows: list[dict], hardware: dict,
                 budget_points: float = BUDGET_POINTS, failure: dict | None = None) -> dict:
    """Ratios are against the baseline artifact's first measured row (the fine-tuned FP32 model on PyTorch).
    Rows of artifacts whose manifest metrics carry "reference" are labelled as the reference, and our best model
    set beside it is the fastest that loses at most `budget_points` against the baseline (the gate's limit).
    `failure` ({step, stage, exit_code, reason, metrics}) is the step a run stopped at, and what it measured before
    it did: the rows are then those that finished. `sections` are what the run's stages show of themselves."""
    base = next((r for r in rows if r["artifact"] == baseline and r["status"] == "measured"), None)
    references = {a["name"]: a["metrics"]["reference"] for a in artifacts if a.get("metrics", {}).get("reference")}
    for row in rows:
        if row["artifact"] in references:
            ref = references[row["artifact"]]
            row["reference"] = ref if isinstance(ref, str) else "reference"
        if row["status"] != "measured" or "measured_on" in row:  # other hardware: no ratios
            continue
        row["at_chance"] = at_chance(row) is not None
        if base is None:
            continue
        row["score_drop_points"] = points_below(score(base), score(row))
        row["size_ratio"] = round(base["size_bytes"] / row["size_bytes"], 2)
        mine, theirs = first_latency(row), first_latency(base)
        if mine and theirs:
            row["speedup"] = round(theirs["p50_ms"] / mine["p50_ms"], 2)
    done = [r for r in rows if r["status"] == "measured"]
    _mark_pareto(done)
    name = metric(done[0]) if done else None
    return {
        "recipe": recipe_name,
        "failure": failure,
        "metric": name,
        "score_names": score_names(name),
        "baseline": {"artifact": baseline, "backend": base["backend"] if base else None,
                     "metric": metric(base) if base else None, "score": score(base) if base else None},
        "hardware": hardware,
        "artifacts": artifacts,
        "rows": rows,
        "budget_points": budget_points,
        "reference_note": _reference_note(done, baseline, budget_points),
        "warnings": [w for w in [chance_warning(base)] if w],
        "sections": stage_sections(artifacts, rows, failure),
    }
