"""Latency of one call on one fixed batch: warm-up, then repeat until the median is stable or time runs out."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np


def measure_latency(run: Callable[[], object], warmup: int, min_repeats: int, max_seconds: float,
                    batch_size: int, min_seconds: float = 0.0) -> dict:
    """Repeats until `min_repeats` are done, `min_seconds` have passed (so the samples span the slow swings of a
    shared machine, not one quiet second) and the median of the second half of the samples is within 2% of the
    first half's; or until `max_seconds` pass. Percentiles are in milliseconds; `stable` says which stop it was,
    so a figure cut off by the time budget is never presented as converged."""
    for _ in range(warmup):
        run()
    samples: list[float] = []
    start = time.perf_counter()
    stable = False
    while True:
        t0 = time.perf_counter()
        run()
        samples.append(time.perf_counter() - t0)
        n = len(samples)
        elapsed = time.perf_counter() - start
        if n >= min_repeats and elapsed >= min(min_seconds, max_seconds):
            first, second = np.median(samples[: n // 2]), np.median(samples[n // 2 :])
            stable = bool(abs(second - first) <= 0.02 * first)
            if stable or elapsed > max_seconds:
                break
    ms = np.array(samples) * 1000
    p50 = float(np.percentile(ms, 50))
    return {
        "p50_ms": round(p50, 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "repeats": n,
        "stable": stable,
        "throughput_per_s": round(batch_size * 1000 / p50, 1),
    }
