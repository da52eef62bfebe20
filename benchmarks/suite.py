"""One benchmark row: an artifact on a back end — the task's score on test (accuracy, or entity F1 for token
classification, with the task's other figures), size, parameters, load time, peak memory and a
latency sweep over batch sizes and sequence lengths, with and without tokenization; batch-1 latency on the test
split's own lengths, and achieved GMAC/s beside this machine's measured GEMM rate at the model's shapes (and the
CPU's nominal peak), with an ONNX Runtime profile of the row's time by operator type (benchmarks.efficiency).

Each row is measured in a fresh child process (`benchmark_isolated`): its peak resident memory, load time and
thread settings are then its own, not left over from the previous model or the pipeline that trained it.
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator

from benchmarks.efficiency import gemm_rate, profile_ort
from benchmarks.hardware import describe, nominal_peak
from compress.core.artifact import Artifact
from compress.core.config import Strict
from compress.core.data import Dataset
from compress.core.evaluate import evaluate
from compress.core.latency import measure_latency
from compress.core.models import load_tokenizer
from compress.core.size import MACS_SEQUENCE_LENGTH, architecture_cost, model_bytes, parameter_count, size_split
from compress.core.task import encode
from runtimes import BACKENDS, Unavailable, open_runtime

# Part of the pipeline's cache key: bump it when the figures a row holds change, so old rows are re-measured.
METHOD_VERSION = 6  # 6: rows carry gemm_shapes, gemm_rate (measured) and operator_split (ONNX Runtime profile)


class BenchmarkConfig(Strict):
    """The recipe's `benchmark:` section: which back ends, shapes and timing budget every row is measured with."""

    backends: list[str] = Field(
        ["torch-cpu", "ort-cpu", "torch-cuda", "torch-cuda-fp16", "ort-cuda", "ort-trt", "tensorrt"],
        description="Runtimes to try; each artifact is measured on those that accept its kind.",
    )
    batch_sizes: list[Annotated[int, Field(ge=1)]] = [1]
    sequence_lengths: list[Annotated[int, Field(ge=8, le=512)]] = [128]
    threads: int = Field(2, ge=1)
    warmup: int = Field(10, ge=0)
    min_repeats: int = Field(30, ge=5)
    min_seconds: float = Field(3.0, ge=0, description="Measure each latency point at least this long (capped by "
                               "max_seconds): a shared machine's load swings over seconds.")
    max_seconds: float = Field(8.0, gt=0, description="Time budget per latency point.")
    eval_batch_size: int = Field(64, ge=1)
    dynamic_examples: int = Field(200, ge=1, description="Test examples (a seeded sample) timed one at a time at "
                                  "their own token lengths, as a user sending single texts sees latency.")
    artifacts: list[str] | None = Field(None, description="Steps whose artifacts are measured; default: all. "
                                        "Each row costs a process and a pass over the test split.")

    def measurement_settings(self) -> dict:
        """What a row's figures depend on (its cache key): which artifacts are measured is not among them."""
        return self.model_dump(exclude={"artifacts"})

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(BACKENDS))
        if unknown:
            raise ValueError(f"unknown back ends {unknown}; known: {sorted(BACKENDS)}")
        return v


def _rss_mb(field: str) -> float | None:
    """VmHWM (peak) or VmRSS (now) of this process. VmHWM belongs to the process image, so a spawned child's figure
    starts from zero at exec and never includes its parent's memory."""
    status = Path("/proc/self/status")
    if not status.is_file():
        if field != "VmHWM" or sys.platform == "win32":
            return None
        import resource  # macOS: ru_maxrss is in bytes

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 1)
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def _latency_sweep(runtime, tokenizer, data: Dataset, cfg: BenchmarkConfig) -> list[dict]:
    points = []
    for batch in cfg.batch_sizes:
        examples = (data.test * batch)[:batch]
        for seq in cfg.sequence_lengths:
            # Real test texts, padded/truncated to exactly `seq` tokens so every runtime sees the same shapes.
            inputs = encode(tokenizer, examples, seq, pad_to_max=True)
            budget = (cfg.warmup, cfg.min_repeats, cfg.max_seconds, batch, cfg.min_seconds)
            model_only = measure_latency(lambda: runtime.run(inputs), *budget)
            end_to_end = measure_latency(lambda: runtime.run(encode(tokenizer, examples, seq, pad_to_max=True)),
                                         *budget)
            points.append({"batch_size": batch, "sequence_length": seq, **model_only,
                           "with_tokenization": end_to_end})
    return points


def _dynamic_latency(runtime, tokenizer, data: Dataset, cfg: BenchmarkConfig, max_length: int) -> dict:
    """Batch 1 at the test split's own lengths: the fixed-shape sweep pads every text to `seq`, which a server
    feeding single texts never does. A seeded sample of test examples, each tokenized alone (truncated at
    max_length, no padding), cycled; at least one call per example unless max_seconds runs out first."""
    sample = random.Random(0).sample(data.test, min(cfg.dynamic_examples, len(data.test)))
    inputs = [encode(tokenizer, [e], max_length) for e in sample]
    calls = itertools.cycle(inputs)
    timing = measure_latency(lambda: runtime.run(next(calls)), cfg.warmup, max(cfg.min_repeats, len(inputs)),
                             cfg.max_seconds, 1, cfg.min_seconds)
    return {"examples": len(inputs), "mean_tokens": round(statistics.mean(x["input_ids"].shape[1] for x in inputs), 1),
            **timing}


def achieved_gmacs_per_s(macs: int | None, latency: list[dict]) -> float | None:
    """GMAC/s the kernels achieved: one sequence-128 example's MACs over the p50 of the batch-1, sequence-128
    latency point; None where the sweep has no such point or the architecture's MACs are unknown."""
    point = next((p for p in latency if (p["batch_size"], p["sequence_length"]) == (1, MACS_SEQUENCE_LENGTH)), None)
    return round(macs / (point["p50_ms"] / 1e3) / 1e9, 2) if macs and point else None


def logits_shape(runtime, tokenizer, data: Dataset, max_length: int) -> list[int]:
    """The output of one test example at its own length: (1, classes), or a token head's (1, tokens, tags), so the
    row says which head it measured."""
    return list(runtime.run(encode(tokenizer, data.test[:1], max_length)).shape)


def _row_key(artifact: Artifact, backend: str) -> dict:
    return {"artifact": artifact.name, "backend": backend, "kind": artifact.kind}


def not_measured_row(name: str, kind: str, backend: str, reason: str) -> dict:
    """A back end, or a skipped step, that cannot run here (no GPU, missing package): a fact about the machine,
    not a failure."""
    return {"artifact": name, "backend": backend, "kind": kind, "status": "not measured", "reason": reason}


def _not_measured(artifact: Artifact, backend: str, reason: str) -> dict:
    return not_measured_row(artifact.name, artifact.kind, backend, reason)


def _failed(artifact: Artifact, backend: str, reason: str) -> dict:
    """A back end that should have run and broke: the report says so and the gate counts it against the artifact."""
    return _row_key(artifact, backend) | {"status": "failed", "reason": reason}


def benchmark_artifact(artifact: Artifact, backend: str, cfg: BenchmarkConfig, data: Dataset, max_length: int) -> dict:
    """A back end that cannot run here gives a row that says why, never a number.
    Latency points are model-only (pre-tokenized inputs) with the end-to-end figure (text in, logits out) beside."""
    row = _row_key(artifact, backend)
    tokenizer = load_tokenizer(artifact.path)
    rss_before = _rss_mb("VmRSS")
    start = time.perf_counter()
    try:
        runtime = open_runtime(backend, artifact, cfg.threads)
    except Unavailable as e:
        return _not_measured(artifact, backend, str(e))
    load_seconds = time.perf_counter() - start
    test = evaluate(runtime.run, tokenizer, data.test, data.labels, max_length, cfg.eval_batch_size,
                    desc=f"{artifact.name} on {backend}: test")
    load_average = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None  # others' work skews timing
    latency = _latency_sweep(runtime, tokenizer, data, cfg)
    cost = architecture_cost(artifact.path) or {}  # encoder_parameters, macs_seq128, gemm_shapes
    hw = describe()
    peak = nominal_peak(hw["isa"], hw["cpu_hz"], cfg.threads, runtime.precision) if runtime.device == "cpu" else None
    row |= {
        "status": "measured",
        "device": runtime.device,
        "precision": runtime.precision,
        "threads": cfg.threads,
        "split": "test",
        **data.task.row_figures(test),  # metric, metric_label, score (which the report, gate and compare judge)
        "test_examples": test["examples"],
        "logits_shape": logits_shape(runtime, tokenizer, data, max_length),
        "size_bytes": model_bytes(artifact),
        "parameters": parameter_count(artifact),
        **cost,
        "size_split": size_split(artifact),
        "load_seconds": round(load_seconds, 3),
        "rss_before_load_mb": rss_before,
        "peak_rss_mb": _rss_mb("VmHWM"),
        "load_average_1min": load_average,
        "latency": latency,
        "dynamic_latency": _dynamic_latency(runtime, tokenizer, data, cfg, max_length),
        "gmacs_per_s": achieved_gmacs_per_s(cost.get("macs_seq128"), latency),
        "nominal_peak": peak,
    }
    # After peak_rss_mb is read: the profiled session and the GEMM graphs are not the row's memory.
    profiled = encode(tokenizer, data.test[:1], cfg.sequence_lengths[0], pad_to_max=True)  # the sweep's first shape
    return row | {
        "gemm_rate": gemm_rate(backend, runtime.precision, cost.get("gemm_shapes"), cfg.threads),
        "operator_split": profile_ort(artifact, cfg.threads, profiled) if backend == "ort-cpu" else None,
    }


def benchmark_isolated(artifact: Artifact, backend: str, cfg: BenchmarkConfig, data: Dataset, max_length: int) -> dict:
    """`benchmark_artifact` in a fresh spawned process. Whatever goes wrong in there (an execution provider that
    will not start, a shape outside an engine's profile, CUDA out of memory, a crash that kills the process)
    becomes a "failed" row with the reason, so one bad row never costs the report of a run whose stages all
    finished. A back end this machine cannot run at all (no GPU, no TensorRT) is answered here, without a process."""
    reason = BACKENDS[backend].missing() if backend in BACKENDS else None
    if reason:
        return _not_measured(artifact, backend, reason)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(benchmark_artifact, artifact, backend, cfg, data, max_length).result()
        except BrokenProcessPool as e:
            return _failed(artifact, backend, f"the benchmark process died (out of memory or a crash in the runtime): {e}")
        except Exception as e:  # noqa: BLE001  (any error in the row's process is that row's result)
            return _failed(artifact, backend, f"{type(e).__name__}: {e}")
