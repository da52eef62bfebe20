"""How close a row runs to this machine's own matrix-multiply rate, and where its time goes by operator type.

The nominal peak (benchmarks.hardware) is a vendor figure from ISA flags: it misses AMX, which ONNX Runtime's INT8
kernels use where the CPU has it, and says nothing of what the libraries reach. So each CPU row is also set against
a measured rate: the row's own engine (ONNX Runtime with the row's session settings, or torch) timing bare matrix
multiplies at the model's linear-layer shapes with the row's threads, measured once per (hardware and library
versions, shapes, precision, threads) and cached on disk. Beside it, an ONNX Runtime profile of the row's model
splits its time by operator type: the share outside the matrix multiplies is what a faster GEMM cannot buy.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.hardware import fingerprint
from compress.core.artifact import Artifact, digest, write_json_atomic
from compress.core.latency import measure_latency

GEMM_METHOD = 1  # part of the cache key: bump it when how the rate is measured changes
# What each (back end, precision) times. INT8 is timed as dynamically quantized models run it: ONNX Runtime fuses
# DynamicQuantizeLinear + MatMulInteger + the rescale into DynamicQuantizeMatMul, activation quantization included.
KERNELS = {
    ("ort-cpu", "int8"): "ONNX Runtime DynamicQuantizeLinear + MatMulInteger, int8 weights (runs as "
                         "DynamicQuantizeMatMul)",
    ("ort-cpu", "fp32"): "ONNX Runtime MatMul, fp32",
    ("torch-cpu", "fp32"): "torch.nn.functional.linear, fp32",
}
# Per shape: short, since a model has a few distinct shapes and the rate is measured once per machine.
GEMM_TIMING = {"warmup": 3, "min_repeats": 10, "max_seconds": 1.0, "batch_size": 1, "min_seconds": 0.2}
PROFILED_RUNS = 10  # runs of the profiled session after one left out (its first run allocates)


def cache_dir() -> Path:
    """$COMPRESS_CACHE_DIR, else $XDG_CACHE_HOME/compress, else ~/.cache/compress: the rate belongs to the
    machine, not to one run folder."""
    if os.environ.get("COMPRESS_CACHE_DIR"):
        return Path(os.environ["COMPRESS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compress"


def gemm_rate(backend: str, precision: str, shapes: list[list[int]] | None, threads: int) -> dict | None:
    """This machine's GMAC/s for `backend` at `shapes` ([M, K, N, calls] per linear layer, compress.core.size): the
    MACs of every call over the summed p50 times, as if the model ran nothing but its GEMMs. None for a back end
    or precision without a kernel here (GPU rows, fp16) or a model without known shapes."""
    kernel = KERNELS.get((backend, precision))
    if kernel is None or not shapes:
        return None
    cached = cache_dir() / "gemm" / f"{digest(fingerprint(), backend, precision, shapes, threads, GEMM_METHOD)}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    per_shape = []
    for m, k, n, calls in shapes:
        p50_ms = time_gemm(backend, precision, m, k, n, calls, threads)
        per_shape.append({"m": m, "k": k, "n": n, "calls": calls, "p50_ms": p50_ms,
                          "gmacs_per_s": round(m * k * n * calls / (p50_ms / 1e3) / 1e9, 1)})
    macs = sum(s["m"] * s["k"] * s["n"] * s["calls"] for s in per_shape)
    seconds = sum(s["p50_ms"] for s in per_shape) / 1e3
    rate = {"gmacs_per_s": round(macs / seconds / 1e9, 1), "kernel": kernel, "threads": threads, "shapes": per_shape}
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cached, rate)
    except OSError:  # a read-only home: the figure stands, it is only measured again next time
        pass
    return rate


def time_gemm(backend: str, precision: str, m: int, k: int, n: int, calls: int, threads: int) -> float:
    """p50 milliseconds of `calls` (m x k) @ (k x n) multiplies in one call of `backend`, each with a weight of its
    own as the model's layers have (so weights are not all cache-hot), and one ONNX Runtime run for all of them
    (a run's own overhead is not paid per multiply, nor is it in the model). Values are N(0, 1)."""
    x = np.random.default_rng(0).standard_normal((m, k), dtype=np.float32)
    if backend == "torch-cpu":
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        layers, data = [(torch.randn(n, k), torch.randn(n)) for _ in range(calls)], torch.from_numpy(x)
        try:
            with torch.inference_mode():
                return measure_latency(lambda: [torch.nn.functional.linear(data, w, b) for w, b in layers],
                                       **GEMM_TIMING)["p50_ms"]
        finally:
            torch.set_num_threads(before)
    import onnx

    from runtimes.ort_runtime import OrtRuntime

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gemm.onnx"
        onnx.save(gemm_graph(precision, m, k, n, calls), str(path))
        runtime = OrtRuntime(path, "cpu", threads, precision)  # the session settings of every CPU row
        return measure_latency(lambda: runtime.run({"x": x}), **GEMM_TIMING)["p50_ms"]


def gemm_graph(precision: str, m: int, k: int, n: int, calls: int = 1):
    """x (m, k) float times `calls` constant (k, n) weights, outputs y0, y1, ...: MatMul for fp32; for int8, x
    quantized on the fly and int8 weights, as onnxruntime.quantization.quantize_dynamic writes a linear layer."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights, nodes = [], []
    for i in range(calls):
        if precision == "fp32":
            weights.append(numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), f"w{i}"))
            nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"]))
            continue
        weights += [numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), f"w{i}"),
                    numpy_helper.from_array(np.array(0, np.int8), f"w{i}_zero"),
                    numpy_helper.from_array(np.array(0.01, np.float32), f"w{i}_scale")]
        nodes += [helper.make_node("DynamicQuantizeLinear", ["x"], [f"x{i}q", f"x{i}_scale", f"x{i}_zero"]),
                  helper.make_node("MatMulInteger", [f"x{i}q", f"w{i}", f"x{i}_zero", f"w{i}_zero"], [f"acc{i}"]),
                  helper.make_node("Cast", [f"acc{i}"], [f"acc{i}_f"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [f"x{i}_scale", f"w{i}_scale"], [f"scale{i}"]),
                  helper.make_node("Mul", [f"acc{i}_f", f"scale{i}"], [f"y{i}"])]
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [m, n]) for i in range(calls)]
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              outputs, weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def profile_ort(artifact: Artifact, threads: int, inputs: dict[str, np.ndarray], runs: int = PROFILED_RUNS) -> dict:
    """The row's model in a session of its own with ONNX Runtime's profiler on (the timed session never has it:
    profiling costs time), run `runs` times on `inputs` after one run left out; its time by operator type."""
    from runtimes.ort_runtime import OrtRuntime

    with tempfile.TemporaryDirectory() as tmp:
        runtime = OrtRuntime.open(artifact, "cpu", threads, profile=Path(tmp) / "profile")
        for _ in range(runs + 1):
            runtime.run(inputs)
        trace = json.loads(Path(runtime.session.end_profiling()).read_text())
    batch, sequence = inputs["input_ids"].shape
    return {"batch_size": batch, "sequence_length": sequence, **operator_split(trace)}


def operator_split(trace: list[dict]) -> dict:
    """Node time by operator type from an ONNX Runtime profile (Chrome trace events: one "model_run" per run, one
    "<node>_kernel_time" per node run, op type in args.op_name), leaving out the first run. Per run: the node time
    and the whole run's (their difference is the session's own overhead); ops by share of node time, largest
    first."""
    runs = sorted((e for e in trace if e.get("name") == "model_run"), key=lambda e: e["ts"])
    after_first = runs[0]["ts"] + runs[0]["dur"]
    timed = runs[1:]
    by_op: dict[str, float] = defaultdict(float)
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= after_first:
            by_op[e["args"]["op_name"]] += e["dur"]
    node_us, n = sum(by_op.values()), len(timed)
    return {"runs": n, "run_ms": round(sum(e["dur"] for e in timed) / n / 1e3, 3),
            "node_ms": round(node_us / n / 1e3, 3),
            "ops": [{"op": op, "ms": round(us / n / 1e3, 3), "share": round(us / node_us, 4)}
                    for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])]}
