"""One benchmark row: an artifact on a back end — accuracy on test, size, parameters, latency sweep."""
from __future__ import annotations

import time

from benchmarks.accuracy import evaluate
from benchmarks.latency import measure_latency
from benchmarks.size import architecture_cost, model_bytes, parameter_count, size_split
from compress.artifact import Artifact
from compress.data import Dataset, encode
from compress.models import load_tokenizer
from runtimes import Unavailable, open_runtime


def benchmark_artifact(artifact: Artifact, backend: str, cfg, data: Dataset, max_length: int) -> dict:
    """`cfg` is a BenchmarkConfig. A back end that cannot run here gives a row that says why, never a number."""
    row = {"artifact": artifact.name, "backend": backend, "kind": artifact.kind}
    start = time.perf_counter()
    try:
        runtime = open_runtime(backend, artifact, cfg.threads)
    except Unavailable as e:
        return row | {"status": "not measured", "reason": str(e)}
    load_seconds = time.perf_counter() - start
    tokenizer = load_tokenizer(artifact.path)
    test = evaluate(runtime.run, tokenizer, data.test, data.labels, max_length, cfg.eval_batch_size,
                    desc=f"{artifact.name} on {backend}: test")
    latency = []
    for batch in cfg.batch_sizes:
        for seq in cfg.sequence_lengths:
            # Real test texts, padded/truncated to exactly `seq` tokens so every runtime sees the same shapes.
            inputs = encode(tokenizer, (data.test * batch)[:batch], seq, pad_to_max=True)
            figures = measure_latency(lambda: runtime.run(inputs), cfg.warmup, cfg.min_repeats, cfg.max_seconds, batch)
            latency.append({"batch_size": batch, "sequence_length": seq, **figures})
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
        "latency": latency,
    }
