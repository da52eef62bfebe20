"""Compare two runs: what changed in score (the task's metric: accuracy, entity F1), size and latency for each
artifact x back end, and fail when the score dropped more than allowed — the regression check a CI job runs
against a stored baseline report.

    python -m benchmarks.compare old/report.json new/report.json [--max-drop POINTS]

Exit codes: 0 no score drop beyond the limit, 1 a drop (or a row measured before and not now), 2 bad input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.report.blocks import mb
from benchmarks.report.build import first_latency, metric, score
from compress.core.errors import CompressError, exit_code
from compress.gate import drop_violation, read_report, verdict


def _rows(report: dict) -> dict[tuple[str, str], dict]:
    return {(r["artifact"], r["backend"]): r for r in report["rows"] if r.get("status") == "measured"}


def _change(old: float, new: float, unit: str) -> str:
    return f"{old}{unit} -> {new}{unit} ({100 * (new - old) / old:+.1f}%)" if old else f"{old}{unit} -> {new}{unit}"


def describe_changes(old: dict, new: dict) -> list[str]:
    """One line per artifact x back end present in either report."""
    before, after = _rows(old), _rows(new)
    lines = []
    for key in list(dict.fromkeys([*before, *after])):
        name = f"{key[0]} on {key[1]}"
        if key not in after:
            lines.append(f"{name}: measured before, not now")
            continue
        if key not in before:
            new = after[key]
            lines.append(f"{name}: new ({metric(new)} {score(new):.4f}, {mb(new['size_bytes'])})")
            continue
        o, n = before[key], after[key]
        parts = [f"{metric(n)} {score(o):.4f} -> {score(n):.4f} ({100 * (score(n) - score(o)):+.2f} pts)"
                 + ("" if metric(o) == metric(n) else f" (the old report's score is {metric(o)})"),
                 f"size {mb(o['size_bytes'])} -> {mb(n['size_bytes'])}"]
        lo, ln = first_latency(o), first_latency(n)
        if lo and ln:
            parts.append("p50 " + _change(lo["p50_ms"], ln["p50_ms"], " ms"))
        lines.append(f"{name}: " + ", ".join(parts))
    return lines


def regressions(old: dict, new: dict, max_drop: float) -> list[str]:
    """Each row measured in `old` must still be measured in `new`, by the same metric, and within `max_drop`
    points of its old score."""
    before, after = _rows(old), _rows(new)
    found = []
    for key, o in before.items():
        if key not in after:
            found.append(f"{key[0]} on {key[1]}: measured in the old report, missing from the new one")
            continue
        problem = drop_violation(after[key], score(o), metric(o), "the old report's", max_drop)
        if problem:
            found.append(problem)
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0])
    p.add_argument("old", type=Path, help="the stored baseline report.json")
    p.add_argument("new", type=Path, help="this run's report.json")
    p.add_argument("--max-drop", type=float, default=1.0, help="allowed score drop in points (default 1.0)")
    args = p.parse_args(argv)

    def body() -> int:
        if args.max_drop < 0:
            raise CompressError(f"--max-drop must be >= 0 (got {args.max_drop})")
        old, new = read_report(args.old), read_report(args.new)
        print("\n".join(describe_changes(old, new)))
        found = regressions(old, new, args.max_drop)
        return verdict(found, "REGRESSION", f"no score drop beyond {args.max_drop} points")

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
