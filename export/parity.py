"""Numeric agreement between two runtimes on real batches: the check every conversion must pass."""
from __future__ import annotations

import numpy as np

from benchmarks.accuracy import RunBatch, predict_logits
from compress.data import Example


def compare_logits(reference: RunBatch, candidate: RunBatch, tokenizer, examples: list[Example],
                   max_length: int, batch_size: int = 32) -> dict:
    ref = predict_logits(reference, tokenizer, examples, max_length, batch_size, desc="parity reference")
    got = predict_logits(candidate, tokenizer, examples, max_length, batch_size, desc="parity candidate")
    return {
        "max_abs_logit_diff": float(np.abs(ref - got).max()),
        "prediction_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
        "examples": len(examples),
    }
