"""One benchmark row: an artifact on a back end — accuracy on test, size, parameters, load time, peak memory and a
latency sweep over batch sizes and sequence lengths, with and without tokenization.

Each row is measured in a fresh child process (`benchmark_isolated`): its peak resident memory, load time and
thread settings are then its own, not left over from the previous model or the pipeline that trained it.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from benchmarks.accuracy import evaluate
from benchmarks.latency import measure_latency
from benchmarks.size import architecture_cost, model_bytes, parameter_count, size_split
from compress.artifact import Artifact
from compress.data import Dataset, encode
from compress.models import load_tokenizer
from runtimes import BACKENDS, Unavailable, open_runtime

# Part of the pipeline's cache key: bump it when the figures a row holds change, so old rows are re-measured.
METHOD_VERSION = 3


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


def _latency_sweep(runtime, tokenizer, data: Dataset, cfg) -> list[dict]:
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


def _row_key(artifact: Artifact, backend: str) -> dict:
    return {"artifact": artifact.name, "backend": backend, "kind": artifact.kind}


def _not_measured(artifact: Artifact, backend: str, reason: str) -> dict:
    return _row_key(artifact, backend) | {"status": "not measured", "reason": reason}


def benchmark_artifact(artifact: Artifact, backend: str, cfg, data: Dataset, max_length: int) -> dict:
    """`cfg` is a BenchmarkConfig. A back end that cannot run here gives a row that says why, never a number.
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
    return row | {
        "status": "measured",
        "device": runtime.device,
        "precision": runtime.precision,
        "threads": cfg.threads,
        "split": "test",
        "accuracy": test["accuracy"],
        "macro_f1": test["macro_f1"],
        "per_class": test["per_class"],
        "test_examples": test["examples"],
        "size_bytes": model_bytes(artifact),
        "parameters": parameter_count(artifact),
        **(architecture_cost(artifact.path) or {}),  # encoder_parameters, macs_seq128
        "size_split": size_split(artifact),
        "load_seconds": round(load_seconds, 3),
        "rss_before_load_mb": rss_before,
        "peak_rss_mb": _rss_mb("VmHWM"),
        "load_average_1min": load_average,
        "latency": latency,
    }


def benchmark_isolated(artifact: Artifact, backend: str, cfg, data: Dataset, max_length: int) -> dict:
    """`benchmark_artifact` in a fresh spawned process; a process that dies gives a row saying so. A back end this
    machine cannot run at all (no GPU, no TensorRT) is answered here, without starting a process."""
    reason = BACKENDS[backend].missing() if backend in BACKENDS else None
    if reason:
        return _not_measured(artifact, backend, reason)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(benchmark_artifact, artifact, backend, cfg, data, max_length).result()
        except BrokenProcessPool as e:
            return _not_measured(artifact, backend,
                                 f"the benchmark process died (out of memory or a crash in the runtime): {e}")
