"""Standalone on-device runner, shipped in every edge bundle as `run_on_device.py`.

Needs only numpy plus onnxruntime or tensorrt: not compress, not transformers, not torch.
Text is not tokenized here; the bundle ships the sample's token ids, produced by the
model's own tokenizer when the bundle was made, so the device measures exactly the model.
It builds the TensorRT engine on the device (engines are not portable across GPUs),
measures accuracy and latency (p50/p95/p99, batch 1) on the labelled sample, and writes
results JSON describing the device. `python -m benchmarks.ingest results.json --run DIR`
merges it into a run's report.

The TensorRT code lives here, once: the project's `tensorrt` stage and back end import it.
Device memory goes through the CUDA runtime library via ctypes, which every TensorRT
install brings, so no pycuda/cuda-python is needed on the device.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import glob
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------- CUDA runtime through ctypes


class Cuda:
    """The four CUDA runtime calls a TensorRT engine needs from Python."""

    H2D, D2H = 1, 2

    def __init__(self) -> None:
        candidates = [ctypes.util.find_library("cudart"), *sorted(glob.glob("/usr/local/cuda*/lib64/libcudart.so*")),
                      *sorted(glob.glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages", "nvidia", "*",
                                                     "lib", "libcudart.so*")))]
        for name in filter(None, candidates):
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            raise RuntimeError("CUDA runtime library (libcudart) not found")
        self.stream = ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(ctypes.byref(self.stream)), "cudaStreamCreate")

    @staticmethod
    def _check(code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"{what} failed with CUDA error {code}")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cudaMalloc")
        return ptr.value

    def copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:
        self._check(self.lib.cudaMemcpy(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes), kind),
                    "cudaMemcpy")

    def sync(self) -> None:
        self._check(self.lib.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")


# ---------------------------------------------------------------- TensorRT build and run


def build_engine(onnx_path: Path, engine_path: Path, shapes: dict[str, tuple[tuple, tuple, tuple]],
                 timing_cache: Path | None = None, strongly_typed: bool = True, fp16_flag: bool = False,
                 workspace_mib: int = 2048) -> list[str]:
    """Parse ONNX, add one optimization profile (min/opt/max per input), build, save; returns the build log.

    Strongly typed networks take their precision from the ONNX (FP16 weights, Q/DQ nodes) and are the only
    kind TensorRT 11 builds; `fp16_flag` is the TensorRT 10 alternative for an FP32 ONNX on the device.
    """
    import tensorrt as trt

    lines: list[str] = []

    class Log(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg):  # noqa: ANN001 (TensorRT's signature)
            if severity != trt.ILogger.Severity.VERBOSE:
                lines.append(f"[{severity.name}] {msg}")

    logger = Log()
    builder = trt.Builder(logger)
    typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # TensorRT 11: always strongly typed
    flags = 1 << int(typed) if strongly_typed and typed is not None else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if fp16_flag and not strongly_typed and hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        profile.set_shape(name, *shapes[name])
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed:\n" + "\n".join(lines[-20:]))
    engine_path.write_bytes(bytes(serialized))
    if timing_cache:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return lines


class TrtEngine:
    """A deserialized engine; `run` takes int64 id arrays and returns host logits after a stream sync.

    Device buffers are allocated once, for the profile's largest shapes, so timings hold no cudaMalloc.
    """

    def __init__(self, engine_path: Path) -> None:
        import tensorrt as trt

        self.trt, self.cuda = trt, Cuda()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # must outlive the engine
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load {engine_path} (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output = next(n for n in names if n not in self.inputs)
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        for name in self.inputs:
            self.context.set_input_shape(name, tuple(self.engine.get_tensor_profile_shape(name, 0)[2]))
        self.buffers = {n: self.cuda.malloc(int(np.prod(tuple(self.context.get_tensor_shape(n)))) * self.dtypes[n].itemsize)
                        for n in names}
        for name, ptr in self.buffers.items():
            self.context.set_tensor_address(name, ptr)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        for name in self.inputs:
            host = np.ascontiguousarray(inputs[name], dtype=self.dtypes[name])
            self.cuda.copy(self.buffers[name], host.ctypes.data, host.nbytes, Cuda.H2D)
            self.context.set_input_shape(name, host.shape)
        out = np.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.dtypes[self.output])
        if not self.context.execute_async_v3(self.cuda.stream.value):
            raise RuntimeError("TensorRT execution failed")
        self.cuda.sync()
        self.cuda.copy(out.ctypes.data, self.buffers[self.output], out.nbytes, Cuda.D2H)
        return out.astype(np.float32)


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
