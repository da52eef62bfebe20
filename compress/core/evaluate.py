"""Task metrics from any runtime: one prediction loop, so every back end is scored identically."""
from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from compress.core.data import Example, batches
from compress.core.progress import progress

RunBatch = Callable[[dict[str, np.ndarray]], np.ndarray]


def predict_logits(run: RunBatch, tokenizer, examples: list[Example], max_length: int, batch_size: int,
                   desc: str = "evaluate") -> np.ndarray:
    chunks = batches(tokenizer, examples, max_length, batch_size)
    n = (len(examples) + batch_size - 1) // batch_size
    return np.concatenate([run(inputs) for inputs, _ in progress(chunks, desc, total=n)])


def classification_metrics(labels: np.ndarray, logits: np.ndarray, names: list[str]) -> dict:
    pred = logits.argmax(-1)
    ids = list(range(len(names)))
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        "macro_f1": float(f1_score(labels, pred, labels=ids, average="macro", zero_division=0)),
        "per_class": {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, n in enumerate(names)},
        "examples": int(len(labels)),
    }


def evaluate(run: RunBatch, tokenizer, examples: list[Example], names: list[str], max_length: int,
             batch_size: int, desc: str = "evaluate") -> dict:
    logits = predict_logits(run, tokenizer, examples, max_length, batch_size, desc)
    return classification_metrics(np.array([e.label for e in examples]), logits, names)
