"""Standalone on-device runner, shipped in every edge bundle as `run_on_device.py`.

Needs only numpy plus onnxruntime or tensorrt: not compress, not transformers, not torch.
Text is not tokenized here; the bundle ships the sample's token ids, produced by the
model's own tokenizer when the bundle was made, so the device measures exactly the model.
It builds the TensorRT engine on the device (engines are not portable across GPUs),
measures accuracy and latency (p50/p95/p99, batch 1) on the labelled sample, and writes
results JSON describing the device. `python -m benchmarks.ingest results.json --run DIR`
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
        session = ort.InferenceSession(str(bundle / manifest["onnx_for_ort"]), options, providers=wanted)
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
    pred = np.array([int(np.argmax(run(x)[0])) for x in inputs])
    labels = np.array([r["label"] for r in rows])
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
        "accuracy": float((pred == labels).mean()), "macro_f1": macro_f1(labels, pred, len(manifest["labels"])),
        "size_bytes": (args.bundle / manifest["onnx_for_ort"]).stat().st_size,
        "latency": {"batch_size": 1, "sequence_length": f"sample lengths {min(lengths)}-{max(lengths)}",
                    "p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
                    "p99_ms": round(float(np.percentile(ms, 99)), 3), "mean_ms": round(float(ms.mean()), 3),
                    "repeats": len(ms), "throughput_per_s": round(1000 / float(np.percentile(ms, 50)), 1)},
        "engine_build_log_lines": len(build_log),
    }
    args.out.write_text(json.dumps(results, indent=2))
    print(f"{backend} {precision}: accuracy {results['accuracy']:.4f} on {len(rows)} examples, "
          f"p50 {results['latency']['p50_ms']} ms, p99 {results['latency']['p99_ms']} ms -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
