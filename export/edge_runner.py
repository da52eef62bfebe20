"""Standalone on-device runner, shipped in every edge bundle as `run_on_device.py`.

Needs only numpy plus onnxruntime or tensorrt: not compress, not transformers, not torch.
Text is not tokenized here; the bundle ships the sample's token ids, produced by the
model's own tokenizer when the bundle was made, so the device measures exactly the model.
It builds the TensorRT engine on the device (engines are not portable across GPUs),
measures the task's score and latency (p50/p95/p99, batch 1) on the labelled sample, and writes
results JSON describing the device. The score is accuracy for a sequence classifier and entity-level micro-F1
for a token classifier (NER): CoNLL's definition, as seqeval's default mode computes it, re-implemented here
(with per-type F1) because the device has no seqeval. `python -m benchmarks.ingest results.json --run DIR`
merges it into a run's report.

The TensorRT code is runtimes/tensorrt_engine.py, which the bundle ships beside this script
(as runtimes/tensorrt_engine.py, so the one import below works here and in the checkout).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from runtimes.tensorrt_engine import TrtEngine, build_engine

# ---------------------------------------------------------------- device description, metrics, CLI


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def describe_device() -> dict:
    """Board model, JetPack (L4T) release, TensorRT version and power mode where this machine exposes them."""
    info: dict = {"model": _read("/proc/device-tree/model") or f"{platform.system()} {platform.machine()}",
                  "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                  "python": platform.python_version(), "l4t_release": _read("/etc/nv_tegra_release"),
                  "cpu_count": os.cpu_count()}
    try:
        info["power_mode"] = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["power_mode"] = None
    for module in ("tensorrt", "onnxruntime"):
        try:
            info[f"{module}_version"] = __import__(module).__version__
        except ImportError:
            info[f"{module}_version"] = None
    info["numpy_version"] = np.__version__
    return info


def macro_f1(labels: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    scores = []
    for c in range(n_classes):
        tp, fp, fn = np.sum((pred == c) & (labels == c)), np.sum((pred == c) & (labels != c)), np.sum((pred != c) & (labels == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def sequence_scores(rows: list[dict], logits: list[np.ndarray], manifest: dict) -> dict:
    """Accuracy and macro-F1 of one class per example."""
    pred = np.array([int(np.argmax(x)) for x in logits])
    labels = np.array([r["label"] for r in rows])
    accuracy = float((pred == labels).mean())
    return {"metric": "accuracy", "metric_label": "accuracy", "score": accuracy, "accuracy": accuracy,
            "macro_f1": macro_f1(labels, pred, len(manifest["labels"]))}


def _chunk_ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """seqeval's end_of_chunk: the entity open at the previous word ends before this one."""
    return (prev_tag in ("E", "S") or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
            or (prev_tag not in ("O", ".") and prev_type != type_))


def _chunk_starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """seqeval's start_of_chunk. An I- after O (or after another type) opens an entity, as conlleval reads IOB."""
    return (tag in ("B", "S") or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
            or (tag not in ("O", ".") and prev_type != type_))


def entities(sentences: list[list[str]]) -> set[tuple[str, int, int]]:
    """(type, first, last) of every entity, positions counted over the sentences laid end to end with an O between
    them (so no entity crosses a sentence), as seqeval's get_entities does."""
    found, prev_tag, prev_type, begin = set(), "O", "", 0
    tags = [t for sentence in sentences for t in [*sentence, "O"]] + ["O"]
    for i, chunk in enumerate(tags):
        tag, type_ = chunk[0], chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _chunk_ends(prev_tag, tag, prev_type, type_):
            found.add((prev_type, begin, i - 1))
        if _chunk_starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return found


def _prf(correct: int, predicted: int, gold: int) -> dict:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": gold}


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """Entity-level micro precision/recall/F1 (an entity counts only when its type and both boundaries match),
    macro-F1 over types, token accuracy, and per type, as compress.core.task.entity_metrics gives them."""
    want, got = entities(gold), entities(predicted)
    per_type = {t: _prf(len({e for e in want & got if e[0] == t}), sum(e[0] == t for e in got),
                        sum(e[0] == t for e in want)) for t in sorted({e[0] for e in want | got})}
    micro = _prf(len(want & got), len(got), len(want))
    pairs = [(a, b) for g, p in zip(gold, predicted) for a, b in zip(g, p)]
    return {"metric": "entity_f1", "metric_label": "entity F1", "score": micro["f1"], "entity_f1": micro["f1"],
            "precision": micro["precision"], "recall": micro["recall"],
            "macro_f1": float(np.mean([c["f1"] for c in per_type.values()])) if per_type else 0.0,
            "token_accuracy": sum(a == b for a, b in pairs) / len(pairs) if pairs else 0.0, "per_class": per_type}


def word_tags(row: dict, logits: np.ndarray, outside: int) -> list[int]:
    """A tag id per word, read at its first piece (`first`); words cut off by max_length get `outside`."""
    tags = [outside] * len(row["words"])
    for position, word in enumerate(row["first"]):
        if word >= 0:
            tags[word] = int(np.argmax(logits[position]))
    return tags


def token_scores(rows: list[dict], logits: list[np.ndarray], manifest: dict) -> dict:
    """Entity-level scores of a token classifier's (tokens, tags) logits on the sample."""
    names = manifest["labels"]
    predicted = [[names[t] for t in word_tags(r, x, manifest.get("outside", 0))] for r, x in zip(rows, logits)]
    return entity_scores([[names[t] for t in r["label"]] for r in rows], predicted)


# compress.core.task's classes, as far as the device needs them (it has no compress; tests/test_edge_task.py holds
# the two to the same tasks, score names and row names): how each task's sample is scored, and the names results
# give figures whose own name means the model's there (`precision`: fp16, int8), as the project's benchmark rows do.
SCORERS = {"sequence-classification": sequence_scores, "token-classification": token_scores}
RESULT_NAMES = {"token-classification": {"precision": "entity_precision", "recall": "entity_recall"}}


def sample_scores(rows: list[dict], logits: list[np.ndarray], manifest: dict) -> dict:
    """The bundle's task's scores (bundles from before tasks were recorded are sequence classifiers)."""
    task = manifest.get("task", "sequence-classification")
    renamed = RESULT_NAMES.get(task, {})
    return {renamed.get(k, k): v for k, v in SCORERS[task](rows, logits, manifest).items()}


def open_backend(bundle: Path, manifest: dict, backend: str, precision: str, threads: int | None):
    """Returns (run function, backend name, precision actually used, build log lines)."""
    if backend == "auto":
        try:
            import tensorrt  # noqa: F401

            backend = "tensorrt" if manifest.get("onnx_for_tensorrt") else "onnxruntime"
        except ImportError:
            backend = "onnxruntime"
    if backend == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        wanted = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        # As runtimes/ort_runtime.CPU_DISABLED_FUSIONS: ONNX Runtime 1.32's CPU SkipLayerNormalization is slow.
        disabled = None if "CUDAExecutionProvider" in wanted else ["SkipLayerNormFusion"]
        session = ort.InferenceSession(str(bundle / manifest["onnx_for_ort"]), options, providers=wanted,
                                       disabled_optimizers=disabled)
        names = [i.name for i in session.get_inputs()]
        return (lambda x: session.run(None, {n: x[n] for n in names})[0]), \
            f"onnxruntime-{session.get_providers()[0].replace('ExecutionProvider', '').lower()}", manifest["precision"], []
    if not manifest.get("onnx_for_tensorrt"):
        raise SystemExit("this bundle has no TensorRT-parsable ONNX (e.g. a dynamically quantized model): use --backend onnxruntime")
    import tensorrt as trt

    seq = manifest["max_length"]
    shapes = {n: ((1, 1), (1, seq), (manifest["max_batch"], seq)) for n in manifest["input_names"]}
    engine = bundle / f"model.{precision}.engine"
    fp16 = precision == "fp16" and hasattr(trt.BuilderFlag, "FP16")
    log = build_engine(bundle / manifest["onnx_for_tensorrt"], engine, shapes, bundle / "timing.cache",
                       strongly_typed=not fp16, fp16_flag=fp16)
    return TrtEngine(engine).run, "tensorrt", "fp16" if fp16 else manifest["precision"], log


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=here, help="bundle folder (default: this script's folder)")
    p.add_argument("--backend", choices=["auto", "onnxruntime", "tensorrt"], default="auto")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp16", help="TensorRT engine precision")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=200, help="timed batch-1 runs, cycling over the sample")
    p.add_argument("--out", type=Path, default=Path("results.json"))
    args = p.parse_args(argv)
    manifest = json.loads((args.bundle / "bundle.json").read_text())
    rows = [json.loads(line) for line in (args.bundle / manifest["sample"]).read_text().splitlines() if line]
    inputs = [{n: np.array([r[n]], dtype=np.int64) for n in manifest["input_names"]} for r in rows]
    run, backend, precision, build_log = open_backend(args.bundle, manifest, args.backend, args.precision, args.threads)
    scores = sample_scores(rows, [run(x)[0] for x in inputs], manifest)
    for i in range(args.warmup):
        run(inputs[i % len(inputs)])
    times = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        run(inputs[i % len(inputs)])
        times.append((time.perf_counter() - t0) * 1000)
    ms = np.array(times)
    lengths = [len(r["input_ids"]) for r in rows]
    results = {
        "bundle": manifest["name"], "backend": backend, "precision": precision, "device": describe_device(),
        "split": f"test sample ({len(rows)} examples)", "examples": len(rows), "labels": manifest["labels"],
        **scores,
        "size_bytes": (args.bundle / manifest["onnx_for_ort"]).stat().st_size,
        "latency": {"batch_size": 1, "sequence_length": f"sample lengths {min(lengths)}-{max(lengths)}",
                    "p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
                    "p99_ms": round(float(np.percentile(ms, 99)), 3), "mean_ms": round(float(ms.mean()), 3),
                    "repeats": len(ms), "throughput_per_s": round(1000 / float(np.percentile(ms, 50)), 1)},
        "engine_build_log_lines": len(build_log),
    }
    args.out.write_text(json.dumps(results, indent=2))
    print(f"{backend} {precision}: {results['metric']} {results['score']:.4f} on {len(rows)} examples, "
          f"p50 {results['latency']['p50_ms']} ms, p99 {results['latency']['p99_ms']} ms -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
