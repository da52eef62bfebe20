"""The accuracy gate: fail when an artifact loses more than the allowed points against the baseline.

A missing figure is a failure, never a pass: a gate that cannot see a number cannot vouch for it.

    python -m compress.gate runs/default/report.json --max-drop 1.0 [--artifact NAME ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def violations(report: dict, max_drop: float, artifacts: list[str] | None = None) -> list[str]:
    base = report.get("baseline", {}).get("accuracy")
    if not isinstance(base, (int, float)):
        return [f"baseline {report.get('baseline', {}).get('artifact')!r} has no measured accuracy"]
    names = artifacts or list(dict.fromkeys(r["artifact"] for r in report["rows"]))
    found: list[str] = []
    for name in names:
        measured = [r for r in report["rows"] if r["artifact"] == name and r.get("status") == "measured"]
        if not measured:
            found.append(f"{name}: no measured accuracy in the report")
        for row in measured:
            acc = row.get("accuracy")
            if not isinstance(acc, (int, float)):
                found.append(f"{name} on {row['backend']}: accuracy missing")
                continue
            drop = 100 * (base - acc)
            if drop > max_drop:
                found.append(f"{name} on {row['backend']}: accuracy {acc:.4f} is {drop:.2f} points below the "
                             f"baseline {base:.4f}; the limit is {max_drop}")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compress.gate", description=__doc__.splitlines()[0])
    p.add_argument("report", type=Path)
    p.add_argument("--max-drop", type=float, required=True, help="allowed accuracy drop in points")
    p.add_argument("--artifact", action="append", help="gate only these artifacts (repeatable); default: all")
    args = p.parse_args(argv)
    try:
        report = json.loads(args.report.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"error: {args.report}: cannot read report: {e}", file=sys.stderr)
        return 2
    found = violations(report, args.max_drop, args.artifact)
    for line in found:
        print(f"GATE FAILED: {line}", file=sys.stderr)
    if not found:
        print(f"gate passed: no artifact lost more than {args.max_drop} points")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
