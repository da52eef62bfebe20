"""The score gate: fail when an artifact loses more than the allowed points of the task's score (accuracy, or
entity F1 for token classification) against the baseline, when the baseline itself is at chance (a drop against it
means nothing), or when a score is under an absolute floor; every message names the metric.

A missing figure is a failure, never a pass: a gate that cannot see a number cannot vouch for it.

    python -m compress.gate runs/default/report.json --max-drop 1.0 [--artifact NAME ...] [--allow-chance-baseline]
        [--min-score 0.8]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Annotated

from pydantic import Field

from benchmarks.report.build import metric, score
from compress.core.config import Strict
from compress.core.errors import CompressError, exit_code
from compress.core.evaluate import at_chance, points_below


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
    allow_chance_baseline: bool = Field(
        False, description="A baseline at chance (compress.core.evaluate.at_chance) fails the gate, and a fine-tuned "
                           "model at chance on dev stops the run, unless this says it is expected.")
    min_score: Annotated[float, Field(ge=0, le=1)] | dict[str, Annotated[float, Field(ge=0, le=1)]] | None = Field(
        None, description="An absolute floor on the test score (0..1, as the report prints it): one for the baseline "
                          "and every gated artifact, or {step: floor} for the steps named.")


def floors(min_score: float | dict[str, float] | None, gated: list[str], baseline: str) -> dict[str, float]:
    """Each step's floor: the mapping's, or the one figure for the baseline and every gated step."""
    if isinstance(min_score, dict):
        return min_score
    return {} if min_score is None else dict.fromkeys([baseline, *gated], min_score)


def baseline_row(report: dict) -> dict:
    """The row the report's drops are measured against (with its per-class supports, which chance needs); reports
    that name no back end for it give their `baseline` entry itself."""
    base = report.get("baseline", {})
    return next((r for r in report["rows"] if r.get("status") == "measured" and r["artifact"] == base.get("artifact")
                 and r["backend"] == base.get("backend")), base)


def violations(report: dict, max_drop: float, artifacts: list[str] | dict[str, float] | None = None,
               allow_chance_baseline: bool = False, min_score: float | dict[str, float] | None = None) -> list[str]:
    """Every reason the report fails the gate: a run that stopped at a failed step, a baseline at chance (unless
    allowed), drops beyond `max_drop` points of the baseline's score (or the artifact's own limit, where `artifacts`
    maps names to limits), scores under a `min_score` floor, and missing or failed figures."""
    failure = report.get("failure")
    stopped = [f"the run failed at step {failure['step']}: {failure['reason']}"] if failure else []
    baseline = report.get("baseline", {})
    base = score(baseline)
    if not isinstance(base, (int, float)):
        name = baseline.get("artifact")
        return stopped + [f"baseline {name!r} has no measured {metric(report)}"] + failed_rows(report, name)
    names = artifacts or list(dict.fromkeys(r["artifact"] for r in report["rows"]))
    limits = artifacts if isinstance(artifacts, dict) else dict.fromkeys(names, max_drop)
    found = stopped + ([] if allow_chance_baseline else chance_violation(report))
    for name, floor in floors(min_score, list(names), baseline.get("artifact")).items():
        found += floor_violations(report, name, floor)
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


def chance_violation(report: dict) -> list[str]:
    """A baseline at chance on test: every drop against it is meaningless, so the gate cannot vouch for anything."""
    row = baseline_row(report)
    why = at_chance(row)
    if why is None:
        return []
    return [f"baseline {row['artifact']!r} is at chance on test: {why}; no drop against it can show a loss, so "
            f"nothing is judged (train it longer or check the labels; gate.allow_chance_baseline: true if a model at "
            f"chance is expected)"]


def floor_violations(report: dict, name: str, floor: float) -> list[str]:
    """Every measured row of `name` whose score is under the absolute floor (the figure `min_score` gives)."""
    rows = [r for r in report["rows"] if r["artifact"] == name and r.get("status") == "measured"]
    return [f"{name} on {r['backend']}: {metric(r)} {score(r):.4f} is below the gate's min_score {floor}"
            for r in rows if isinstance(score(r), (int, float)) and points_below(floor, score(r)) > 0]


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
    p.add_argument("--allow-chance-baseline", action="store_true", help="a baseline at chance is expected: do not "
                   "fail on it")
    p.add_argument("--min-score", type=float, help="absolute floor (0..1) on the score of the baseline and of every "
                   "gated artifact")
    args = p.parse_args(argv)

    def body() -> int:
        if args.min_score is not None and not 0 <= args.min_score <= 1:
            raise CompressError(f"--min-score must be between 0 and 1 (got {args.min_score})")
        found = violations(read_report(args.report), args.max_drop, args.artifact, args.allow_chance_baseline,
                           args.min_score)
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
