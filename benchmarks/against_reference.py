"""Time our best model and the reference again, side by side, and print how many times faster and smaller ours is.

    python -m benchmarks.against_reference runs/default [--rounds 7] [--seconds 1.0]

Reads `<run>/report.json`'s "Against the reference" note (the reference, and our best: the fastest of ours within
the gate's budget of the baseline) and re-measures both models on ONNX Runtime CPU at the report's first latency
point (batch, sequence length) and threads, in interleaved rounds: reference, ours, reference, ours, ... Each round
is one short `measure_latency` call per model, so a load swing on a shared machine hits both alike, which two rows
measured minutes apart (the report's) do not promise. A model's p50 is the median of its rounds' p50s. Printed:
each model's p50 and size, the speed ratio (reference p50 / ours), the size ratio (reference bytes / ours) and,
from the report, the test score drop of ours against the baseline. Exit codes: 0 done, 2 bad input.

Inputs: one fixed sentence, tokenized by each model's own tokenizer (a vocabulary-pruned model has ids of its own)
and padded to the sequence length, batch copies of it. Not the test texts the report's sweep used: those need the
recipe's data (its source, possibly a download, and the split seed), while at a fixed padded shape the work ONNX
Runtime does (every position of every layer) does not depend on which tokens fill it. So the sentence times the
same kernels at the same shape, from the run folder alone.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from compress.core.errors import CompressError, exit_code  # noqa: E402

SENTENCE = ("The film is a patient, quietly funny portrait of a family that slowly learns to talk again, and its "
            "small moments land with surprising force.")
MIN_ROUNDS = 5


def fixed_inputs(tokenizer, batch_size: int, sequence_length: int) -> dict:
    """`batch_size` copies of SENTENCE, padded (or truncated) to exactly `sequence_length` tokens."""
    from compress.core.task import Example, encode

    return encode(tokenizer, [Example(SENTENCE, 0)] * batch_size, sequence_length, pad_to_max=True)


def interleaved(calls: dict[str, Callable[[], dict]], rounds: int) -> dict[str, list[float]]:
    """Each round calls every timing once, in the dict's order; the p50 of every call, by name."""
    p50s: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            p50s[name].append(call()["p50_ms"])
    return p50s


def timing(runtime, inputs: dict, batch_size: int, seconds: float) -> Callable[[], dict]:
    """One round of one model: a short warm-up, then at least 10 calls over about `seconds`."""
    from compress.core.latency import measure_latency

    return lambda: measure_latency(lambda: runtime.run(inputs), 3, 10, seconds, batch_size, seconds)


def artifact_folder(entry: dict, run_dir: Path) -> Path:
    """An artifact's folder: its recorded path (absolute, or relative to where the pipeline ran), else the folder of
    that name in the run folder (the run was moved, or is read from elsewhere)."""
    recorded = Path(entry["path"])
    for folder in (recorded, run_dir / recorded.name):
        if folder.is_dir():
            return folder
    raise CompressError(f"{run_dir / 'report.json'}: {entry['name']}'s folder {str(recorded)!r} is missing, and so is "
                        f"{str(run_dir / recorded.name)!r}")


def read_note(run_dir: Path) -> tuple[dict, dict]:
    """report.json and its reference note; a clear error naming the file when either is missing."""
    from compress.gate import read_report

    path = run_dir / "report.json"
    if not path.is_file():
        raise CompressError(f"{path}: no report (run the recipe first)")
    report = read_report(path)
    if not report.get("reference_note"):
        raise CompressError(f"{path}: no reference_note: no artifact is marked as the reference (its manifest's "
                            "metrics.reference), or none of ours was measured on its back end")
    if report["reference_note"]["best"] is None:
        raise CompressError(f"{path}: {report['reference_note']['rule']}: nothing to set beside the reference")
    return report, report["reference_note"]


def _row(report: dict, pick: dict) -> dict:
    return next(r for r in report["rows"] if (r["artifact"], r["backend"]) == (pick["artifact"], pick["backend"])
                and r.get("status") == "measured")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.against_reference", description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="the run folder holding report.json")
    p.add_argument("--rounds", type=int, default=7, help=f"interleaved rounds, at least {MIN_ROUNDS} (default 7)")
    p.add_argument("--seconds", type=float, default=1.0, help="seconds per model per round (default 1.0)")
    args = p.parse_args(argv)

    def body() -> int:
        if args.rounds < MIN_ROUNDS or args.seconds <= 0:
            raise CompressError(f"--rounds must be at least {MIN_ROUNDS} and --seconds positive "
                                f"(got {args.rounds}, {args.seconds})")
        from benchmarks.report.build import metric_label
        from benchmarks.run import open_folder
        from compress.core.models import load_tokenizer
        from compress.core.size import model_bytes
        from runtimes.ort_runtime import OrtRuntime

        report, note = read_note(args.run)
        ref_row = _row(report, note["reference"])
        if not ref_row.get("latency"):
            raise CompressError(f"{args.run / 'report.json'}: the reference's row has no latency point")
        point, threads = ref_row["latency"][0], ref_row.get("threads")
        batch, seq = point["batch_size"], point["sequence_length"]
        entries = {a["name"]: a for a in report["artifacts"]}
        models, calls, sizes = {}, {}, {}
        for role in ("reference", "best"):
            name = note[role]["artifact"]
            if name not in entries:
                raise CompressError(f"{args.run / 'report.json'}: {name} is not among the report's artifacts")
            artifact = open_folder(artifact_folder(entries[name], args.run))
            if artifact.kind != "onnx":
                raise CompressError(f"{name} is a {artifact.kind}; only ONNX models are re-measured (ort-cpu)")
            runtime = OrtRuntime.open(artifact, "cpu", threads)
            inputs = fixed_inputs(load_tokenizer(artifact.path), batch, seq)
            models[role], sizes[role] = name, model_bytes(artifact)
            calls[role] = timing(runtime, inputs, batch, args.seconds)
        print(f"{args.run / 'report.json'}: reference {models['reference']} against ours {models['best']} "
              f"({note['rule']}), re-measured on ort-cpu: batch {batch}, sequence {seq}, {threads} thread(s), "
              f"{args.rounds} interleaved rounds of about {args.seconds:g} s per model")
        p50s = interleaved(calls, args.rounds)
        for i in range(args.rounds):
            print(f"round {i + 1}: reference {p50s['reference'][i]} ms, ours {p50s['best'][i]} ms")
        p50 = {role: round(statistics.median(values), 4) for role, values in p50s.items()}
        for role, who in (("reference", "reference"), ("best", "ours")):
            print(f"{who}: {models[role]}: p50 {p50[role]} ms (median of {args.rounds} rounds), "
                  f"{sizes[role]} bytes ({sizes[role] / 1e6:.1f} MB)")
        print(f"speed ratio (reference p50 / ours): {round(p50['reference'] / p50['best'], 3)}×")
        print(f"size ratio (reference bytes / ours): {round(sizes['reference'] / sizes['best'], 3)}×")
        drop = note["best"].get("drop_points", _row(report, note["best"]).get("score_drop_points"))
        baseline = report["baseline"]["artifact"]
        print(f"test {metric_label(note['best']['metric'])} drop of ours vs the baseline {baseline} (from the report): "
              + (f"{drop:.2f} points" if drop is not None else "not known (the baseline has no measured score)"))
        return 0

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
