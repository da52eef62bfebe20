"""Merge on-device results (an edge bundle's run_on_device.py output) into a run's report as their own rows.

    python -m benchmarks.ingest results.json [more.json ...] --run runs/default

Rows are kept in `<run>/device-results/` so a later `compress.run` of the recipe keeps them.
They are measured on another machine and a small test sample, so the report gives them no
speed-up or size ratio against the baseline and lists each device's description.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.report.write import DEVICE_RESULTS, make_report
from compress.core.artifact import write_json_atomic
from compress.core.errors import CompressError, exit_code

REQUIRED = ("bundle", "backend", "precision", "device", "split", "examples", "macro_f1", "size_bytes", "latency")
# The task's figures a result carries (sequence classification: accuracy; token classification: entity F1 and
# the rest of compress.core.task.entity_metrics); results from before `score` existed hold accuracy alone.
SCORES = ("metric", "metric_label", "score", "accuracy", "entity_f1", "entity_precision", "entity_recall",
          "macro_f1", "token_accuracy", "per_class")


def device_row(results: dict, origin: Path) -> dict:
    missing = [k for k in REQUIRED if k not in results] + ([] if "score" in results or "accuracy" in results
                                                           else ["score"])
    if missing:
        raise CompressError(f"{origin}: not a run_on_device.py result, missing {missing}")
    device = results["device"]
    return {
        "artifact": results["bundle"], "backend": f"{results['backend']} @ {device.get('model', 'device')}",
        "kind": "edge-bundle", "status": "measured", "device": device.get("model"), "measured_on": device,
        "precision": results["precision"], "split": results["split"],
        **{k: results[k] for k in SCORES if k in results},
        "test_examples": results["examples"], "size_bytes": results["size_bytes"],
        "parameters": None, "latency": [results["latency"]],
    }


def ingest(paths: list[Path], run_dir: Path) -> dict:
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        raise CompressError(f"{report_path}: no report; run the recipe first")
    rows = []
    for path in paths:
        try:
            rows.append(device_row(json.loads(path.read_text()), path))
        except (OSError, json.JSONDecodeError) as e:
            raise CompressError(f"{path}: cannot read results: {e}") from None
    (run_dir / DEVICE_RESULTS).mkdir(exist_ok=True)
    for row in rows:
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{row['artifact']}.{row['backend']}")
        write_json_atomic(run_dir / DEVICE_RESULTS / f"{name}.json", row)
    report = json.loads(report_path.read_text())
    return make_report(run_dir, report["recipe"], report["baseline"]["artifact"], report["artifacts"], report["rows"],
                       report["hardware"], report.get("budget_points"), report.get("failure"))  # a failed run stays failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, nargs="+")
    p.add_argument("--run", type=Path, required=True, help="the run folder holding report.json")
    args = p.parse_args(argv)

    def body() -> int:
        report = ingest(args.results, args.run)
        print(f"{len(args.results)} device result(s) merged; {len(report['rows'])} rows in {args.run / 'report.md'}")
        return 0

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
