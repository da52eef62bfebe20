"""The score gate: fail when an artifact loses more than the allowed points of the task's score (accuracy, or
entity F1 for token classification) against the baseline; every message names the metric.

A missing figure is a failure, never a pass: a gate that cannot see a number cannot vouch for it.

    python -m compress.gate runs/default/report.json --max-drop 1.0 [--artifact NAME ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import Field

from benchmarks.report.build import metric, score
from compress.core.config import Strict
from compress.core.errors import CompressError, exit_code
from compress.core.evaluate import points_below


class GateConfig(Strict):
    """The recipe's `gate:` section."""

    def limits(self) -> str:
        """The limits in words, for the log: one for all, or each artifact's own."""
        if isinstance(self.artifacts, dict):
            return ", ".join(f"{name} {limit}" for name, limit in self.artifacts.items()) + " points"
        return f"{self.max_accuracy_drop} points"

    baseline: str | None = Field(None, description="Step whose score is the reference; default: the first step.")
    max_accuracy_drop: float = Field(1.0, ge=0, description="Points of the test score (accuracy, or entity F1 for "
                                     "token classification) an artifact may lose.")
    artifacts: list[str] | dict[str, float] | None = Field(
        None, description="Steps the gate applies to (default: all), or each with its own limit in points: "
                          "{teacher-int8: 1.0, small-int8: 1.5}.")


def violations(report: dict, max_drop: float, artifacts: list[str] | dict[str, float] | None = None) -> list[str]:
    """Every reason the report fails the gate: drops beyond `max_drop` points of the baseline's score (or the
    artifact's own limit, where `artifacts` maps names to limits), and missing or failed figures."""
    baseline = report.get("baseline", {})
    base = score(baseline)
    if not isinstance(base, (int, float)):
        name = baseline.get("artifact")
        return [f"baseline {name!r} has no measured {metric(report)}"] + failed_rows(report, name)
    names = artifacts or list(dict.fromkeys(r["artifact"] for r in report["rows"]))
    limits = artifacts if isinstance(artifacts, dict) else dict.fromkeys(names, max_drop)
    found: list[str] = []
    for name in names:
        measured = [r for r in report["rows"] if r["artifact"] == name and r.get("status") == "measured"]
        failed = failed_rows(report, name)
        found += failed
        if not measured and not failed:
            found.append(f"{name}: no measured {metric(report)} in the report")
        for row in measured:
            problem = drop_violation(row, base, metric(baseline), "the baseline", limits[name])
            if problem:
                found.append(problem)
    return found


def failed_rows(report: dict, name: str) -> list[str]:
    """A gated artifact whose benchmark broke on a back end has no figure there: that is a failure, never a pass."""
    return [f"{name} on {r['backend']}: its benchmark failed ({r['reason']}); there is no {metric(report)} to judge"
            for r in report["rows"] if r["artifact"] == name and r.get("status") == "failed"]


def drop_violation(row: dict, reference: float, reference_metric: str, against: str, max_drop: float) -> str | None:
    """Why `row` fails against a reference score of `reference_metric`, or None; a row scored with another metric
    cannot be judged against it. Shared with benchmarks.compare (run vs stored run)."""
    value, name = score(row), metric(row)
    where = f"{row['artifact']} on {row['backend']}"
    if name != reference_metric:
        return f"{where}: its score is {name}, {against} is {reference_metric}; one cannot be judged by the other"
    if not isinstance(value, (int, float)):
        return f"{where}: {name} missing"
    drop = points_below(reference, value)
    if drop > max_drop:
        return (f"{where}: {name} {value:.4f} is {drop:.3f} points below {against} {reference:.4f}; "
                f"the limit is {max_drop}")
    return None


def read_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CompressError(f"{path}: cannot read report: {e}") from None
    if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
        raise CompressError(f"{path}: not a compress report.json (no 'rows' list)")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compress.gate", description=__doc__.splitlines()[0])
    p.add_argument("report", type=Path)
    p.add_argument("--max-drop", type=float, required=True, help="allowed drop of the score (accuracy, entity F1) "
                   "in points")
    p.add_argument("--artifact", action="append", help="gate only these artifacts (repeatable); default: all")
    args = p.parse_args(argv)

    def body() -> int:
        found = violations(read_report(args.report), args.max_drop, args.artifact)
        return verdict(found, "GATE FAILED", f"gate passed: no artifact lost more than {args.max_drop} points")

    return exit_code(body)


def verdict(found: list[str], failure: str, success: str) -> int:
    """Print the problems (stderr) or the all-clear (stdout); the exit code for a CI step."""
    for line in found:
        print(f"{failure}: {line}", file=sys.stderr)
    if not found:
        print(success)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
