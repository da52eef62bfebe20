"""report.json's content (the source of truth): rows with their drops, ratios and Pareto flags, the baseline,
the hardware, and our best model set beside the reference."""
from __future__ import annotations

# "Comparable accuracy" when picking our best model to set beside the reference: at most this many points lower.
TIE_POINTS = 0.5


def first_latency(row: dict) -> dict | None:
    return row["latency"][0] if row.get("latency") else None


def measured(report: dict) -> list[dict]:
    return [r for r in report["rows"] if r["status"] == "measured"]


def _p50(row: dict) -> float | None:
    point = first_latency(row)
    return point["p50_ms"] if point else None


def _dominated(row: dict, others: list[dict], cost) -> bool:
    """Another row is at least as accurate and at most as costly, and strictly better in one of the two."""
    return any(cost(o) <= cost(row) and o["accuracy"] >= row["accuracy"]
               and (cost(o) < cost(row) or o["accuracy"] > row["accuracy"]) for o in others if o is not row)


def _mark_pareto(rows: list[dict]) -> None:
    timed = [r for r in rows if _p50(r) is not None]
    for row in rows:
        row["pareto"] = {
            "latency": row in timed and not _dominated(row, timed, _p50),
            "size": not _dominated(row, rows, lambda r: r["size_bytes"]),
        }


def _reference_note(rows: list[dict]) -> dict | None:
    """Our best model beside the reference: the fastest row within TIE_POINTS of the reference's accuracy on the
    reference's back end, else the most accurate of ours there."""
    ref = next((r for r in rows if r.get("reference") and _p50(r) is not None), None)
    if ref is None:
        return None
    ours = [r for r in rows if not r.get("reference") and r["backend"] == ref["backend"] and _p50(r) is not None]
    if not ours:
        return None
    close = [r for r in ours if 100 * (ref["accuracy"] - r["accuracy"]) <= TIE_POINTS]
    best = min(close, key=_p50) if close else max(ours, key=lambda r: r["accuracy"])
    pick = lambda r: {"artifact": r["artifact"], "backend": r["backend"], "accuracy": r["accuracy"],  # noqa: E731
                      "size_bytes": r["size_bytes"], "p50_ms": _p50(r)}
    return {"rule": f"fastest of ours on {ref['backend']} within {TIE_POINTS} points of the reference's accuracy"
                    + ("" if close else " (none is: the most accurate of ours instead)"),
            "reference": pick(ref), "best": pick(best)}


# A baseline within this many points of always answering the most frequent test class has learned nothing to lose.
CHANCE_POINTS = 1.0


def chance_warning(base: dict | None) -> str | None:
    """Why the baseline's figures cannot show a loss, when it is at chance: every drop measured against a model that
    predicts the majority class is meaningless, and a gate would pass anything."""
    if base is None or not base.get("per_class"):
        return None
    support = [c["support"] for c in base["per_class"].values()]
    majority = max(support) / sum(support)
    if 100 * (base["accuracy"] - majority) > CHANCE_POINTS:
        return None
    return (f"the baseline {base['artifact']} is at chance: test accuracy {base['accuracy']:.4f} against "
            f"{majority:.4f} for always answering its most frequent class; it has learned nothing that a drop "
            f"could show (train it longer, or check the labels)")


def build_report(recipe_name: str, baseline: str, artifacts: list[dict], rows: list[dict], hardware: dict) -> dict:
    """Ratios are against the baseline artifact's first measured row (the fine-tuned FP32 model on PyTorch).
    Rows of artifacts whose manifest metrics carry "reference" are labelled as the reference."""
    base = next((r for r in rows if r["artifact"] == baseline and r["status"] == "measured"), None)
    references = {a["name"]: a["metrics"]["reference"] for a in artifacts if a.get("metrics", {}).get("reference")}
    for row in rows:
        if row["artifact"] in references:
            ref = references[row["artifact"]]
            row["reference"] = ref if isinstance(ref, str) else "reference"
        if row["status"] != "measured" or base is None or "measured_on" in row:  # other hardware: no ratios
            continue
        row["accuracy_drop_points"] = round(100 * (base["accuracy"] - row["accuracy"]), 2)
        row["size_ratio"] = round(base["size_bytes"] / row["size_bytes"], 2)
        mine, theirs = first_latency(row), first_latency(base)
        if mine and theirs:
            row["speedup"] = round(theirs["p50_ms"] / mine["p50_ms"], 2)
    done = [r for r in rows if r["status"] == "measured"]
    _mark_pareto(done)
    return {
        "recipe": recipe_name,
        "baseline": {"artifact": baseline, "backend": base["backend"] if base else None,
                     "accuracy": base["accuracy"] if base else None},
        "hardware": hardware,
        "artifacts": artifacts,
        "rows": rows,
        "reference_note": _reference_note(done),
        "warnings": [w for w in [chance_warning(base)] if w],
    }
