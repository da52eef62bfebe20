"""report.json (the source of truth) and report.md, derived from the benchmark rows."""
from __future__ import annotations

from pathlib import Path

from compress.artifact import write_json_atomic


def _first_latency(row: dict) -> dict | None:
    return row["latency"][0] if row.get("latency") else None


def build_report(recipe_name: str, baseline: str, artifacts: list[dict], rows: list[dict], hardware: dict) -> dict:
    """Ratios are against the baseline artifact's first measured row (the fine-tuned FP32 model on PyTorch)."""
    base = next((r for r in rows if r["artifact"] == baseline and r["status"] == "measured"), None)
    for row in rows:
        if row["status"] != "measured" or base is None or "measured_on" in row:  # other hardware: no ratios
            continue
        row["accuracy_drop_points"] = round(100 * (base["accuracy"] - row["accuracy"]), 2)
        row["size_ratio"] = round(base["size_bytes"] / row["size_bytes"], 2)
        mine, theirs = _first_latency(row), _first_latency(base)
        if mine and theirs:
            row["speedup"] = round(theirs["p50_ms"] / mine["p50_ms"], 2)
    return {
        "recipe": recipe_name,
        "baseline": {"artifact": baseline, "backend": base["backend"] if base else None,
                     "accuracy": base["accuracy"] if base else None},
        "hardware": hardware,
        "artifacts": artifacts,
        "rows": rows,
    }


def _params(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.2f} M"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def to_markdown(report: dict) -> str:
    hw = report["hardware"]
    isa = ", ".join(k for k, v in hw["isa"].items() if v) or "none of " + ", ".join(hw["isa"])
    base = report["baseline"]
    lines = [
        f"# compress report: {report['recipe']}",
        "",
        f"Baseline: **{base['artifact']}** on {base['backend']} (test accuracy {base['accuracy']}). "
        "Drop is in accuracy points, size× and speed-up× are baseline ÷ row at the first latency point.",
        "",
        "| artifact | back end | precision | accuracy | macro-F1 | drop (pts) | size | size× | params | "
        "p50 ms | p95 ms | p99 ms | speed-up× |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if r["status"] != "measured":
            continue
        lat = _first_latency(r) or {}
        lines.append(
            f"| {r['artifact']} | {r['backend']} | {r['precision']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
            f"{r.get('accuracy_drop_points', '')} | {_mb(r['size_bytes'])} | {r.get('size_ratio', '')} | "
            f"{_params(r['parameters'])} | {lat.get('p50_ms', '')} | {lat.get('p95_ms', '')} | "
            f"{lat.get('p99_ms', '')} | {r.get('speedup', '')} |"
        )
    skipped = [r for r in report["rows"] if r["status"] != "measured"]
    if skipped:
        lines += ["", "## Not measured here", ""]
        lines += [f"- {r['artifact']} on {r['backend']}: not measured: {r['reason']}" for r in skipped]
    lines += ["", "## Latency sweep", "", "| artifact | back end | batch | sequence | p50 ms | p95 ms | p99 ms | "
              "per second | repeats |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        for p in r.get("latency", []):
            lines.append(f"| {r['artifact']} | {r['backend']} | {p['batch_size']} | {p['sequence_length']} | "
                         f"{p['p50_ms']} | {p['p95_ms']} | {p['p99_ms']} | {p['throughput_per_s']} | {p['repeats']} |")
    devices = [r for r in report["rows"] if "measured_on" in r]
    if devices:
        lines += ["", "## Measured on devices (benchmarks.ingest; a test-split sample, no ratios)", ""]
        lines += [f"- {r['artifact']} on {r['backend']}: {r['split']}; "
                  + ", ".join(f"{k} {v}" for k, v in r["measured_on"].items() if v) for r in devices]
    lines += ["", "## Lineage", ""]
    lines += [f"- {a['name']} ({a['kind']}, {a['stage']}) ← {a['parent']}" for a in report["artifacts"]]
    lines += [
        "",
        "## Hardware",
        "",
        f"- CPU: {hw['cpu']} ({hw['logical_cores']} logical / {hw['physical_cores']} physical cores, "
        f"{hw['memory_gib']} GiB); ISA: {isa}",
        f"- GPU: {hw['gpu'] or 'none'}; ONNX Runtime providers: {', '.join(hw['onnxruntime_providers'])}",
        f"- Python {hw['python']} on {hw['os']}",
        "- " + ", ".join(f"{k} {v}" for k, v in hw["versions"].items()),
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict, run_dir: Path) -> None:
    write_json_atomic(run_dir / "report.json", report)
    (run_dir / "report.md").write_text(to_markdown(report))
