"""Task metrics from any runtime: one prediction loop, so every back end is scored identically.

Every metrics dict has `score` (the task's headline figure, which dev selection, the gate and the report read)
and `metric` (its name): accuracy for sequence classification, entity-level micro-F1 for token classification.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from compress.core.data import Example, batches, encode_words, is_tagged
from compress.core.progress import progress

RunBatch = Callable[[dict[str, np.ndarray]], np.ndarray]
OUTSIDE = "O"  # the IOB tag of a word in no entity: what a word cut off by max_length is predicted as


def predict_logits(run: RunBatch, tokenizer, examples: list[Example], max_length: int, batch_size: int,
                   desc: str = "evaluate") -> np.ndarray:
    """Logits of every decision: a row per example, or (token classification) a row per real token in order,
    so two runtimes fed the same examples give arrays parity can compare row by row."""
    order = by_length(examples)
    chunks = batches(tokenizer, [examples[i] for i in order], max_length, batch_size)
    n = (len(examples) + batch_size - 1) // batch_size
    rows: list[np.ndarray] = []
    for inputs, _ in progress(chunks, desc, total=n):
        logits = run(inputs)
        mask = inputs["attention_mask"].astype(bool)
        rows += [r[None] for r in logits] if logits.ndim == 2 else [r[m] for r, m in zip(logits, mask)]
    return np.concatenate([rows[k] for k in np.argsort(order)])


def by_length(examples: list[Example]) -> list[int]:
    """Indices of `examples`, shortest text first: batches of like lengths pad little, and the order depends on
    the text alone, so runtimes with different tokenizers (parity after vocabulary pruning) see the same batches."""
    return sorted(range(len(examples)), key=lambda i: len(examples[i].text) + len(examples[i].text_pair or ""))


def points_below(reference: float, value: float) -> float:
    """Points of the score `value` is below `reference`, float noise removed but never rounded further: every
    budget (gate, search, accuracy-aware PTQ, the report's reference row) compares this same figure, so a drop of
    1.004 is over a 1.0 budget everywhere, while 0.85 - 0.84 (1.0000000000000009 in floats) is not."""
    return round(100 * (reference - value), 9)


# A model within this many points of its task's chance score has learned nothing a drop could show; the margin is
# capped at a tenth of the room above chance, so that on a 99%-majority set a model need not be perfect to count.
CHANCE_POINTS = 1.0
CHANCE_HEADROOM_SHARE = 0.1


def chance_level(metrics: dict) -> tuple[float, str] | None:
    """The score a model with no skill gets on the examples `metrics` was measured on, and how: for accuracy, the
    share of the most frequent class (a model that answers one class for everything gets at most that, however
    imbalanced the labels); for entity F1, 0 (tagging every word O finds no entity). None when the metrics carry
    no per-class supports (rows measured elsewhere and ingested)."""
    if metrics.get("metric", "accuracy") == "accuracy":
        support = [c["support"] for c in (metrics.get("per_class") or {}).values()]
        if not sum(support):
            return None
        return max(support) / sum(support), "always answering its most frequent class"
    return 0.0, "finding no entity"


def at_chance(metrics: dict) -> str | None:
    """Why a model is at chance (its score, the chance score and what gets it), or None when it is above chance by
    more than the margin (CHANCE_POINTS, at most CHANCE_HEADROOM_SHARE of the points between chance and 1).
    The one definition the fine-tuning check, the report's warning, "Against the reference" and the gate share."""
    level = chance_level(metrics)
    score = metrics.get("score", metrics.get("accuracy"))
    if level is None or not isinstance(score, (int, float)):
        return None
    chance, what = level
    margin = min(CHANCE_POINTS, 100 * CHANCE_HEADROOM_SHARE * (1 - chance))
    if points_below(score, chance) > margin:  # the points chance is below the score
        return None
    name = "entity F1" if metrics.get("metric") == "entity_f1" else "accuracy"
    return f"{name} {score:.4f} against {chance:.4f} for {what} (at most {margin:.2f} points above it)"


def classification_metrics(labels: np.ndarray, logits: np.ndarray, names: list[str]) -> dict:
    pred = logits.argmax(-1)
    ids = list(range(len(names)))
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=ids, zero_division=0)
    accuracy = float(accuracy_score(labels, pred))
    return {
        "metric": "accuracy", "score": accuracy, "accuracy": accuracy,
        "macro_f1": float(f1_score(labels, pred, labels=ids, average="macro", zero_division=0)),
        "per_class": {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, n in enumerate(names)},
        "examples": int(len(labels)),
    }


def entity_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """Entity-level scores as CoNLL's conlleval (seqeval's default mode): an entity counts only when its type
    and both boundaries match. `per_class` is per entity type."""
    from seqeval.metrics import accuracy_score as token_accuracy
    from seqeval.metrics import classification_report

    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    micro, macro = report.pop("micro avg"), report.pop("macro avg")
    types = {k: v for k, v in report.items() if not k.endswith(" avg")}
    f1 = float(micro["f1-score"])
    return {
        "metric": "entity_f1", "score": f1, "entity_f1": f1, "precision": float(micro["precision"]),
        "recall": float(micro["recall"]), "macro_f1": float(macro["f1-score"]),
        "token_accuracy": float(token_accuracy(gold, predicted)),
        "per_class": {t: {"precision": float(v["precision"]), "recall": float(v["recall"]),
                          "f1": float(v["f1-score"]), "support": int(v["support"])} for t, v in sorted(types.items())},
        "examples": len(gold),
    }


def word_predictions(logits: np.ndarray, first: np.ndarray, examples: list[Example], outside: int) -> list[list[int]]:
    """A tag id per word, read at the word's first piece; words past max_length get `outside` (a miss, not a
    word left out of the score)."""
    tags = [[outside] * len(e.words) for e in examples]
    for i, j in zip(*np.nonzero(first >= 0)):
        tags[i][first[i, j]] = int(logits[i, j].argmax())
    return tags


def entity_counts(gold: list[list[str]], predicted: list[list[str]]) -> np.ndarray:
    """(true positives, false positives, false negatives) of entities per sentence: the parts micro-F1 sums."""
    from seqeval.metrics.sequence_labeling import get_entities

    rows = []
    for g, p in zip(gold, predicted):
        true, found = set(get_entities(g)), set(get_entities(p))
        rows.append((len(true & found), len(found - true), len(true - found)))
    return np.array(rows, dtype=float).reshape(-1, 3)


def score_of(parts: np.ndarray) -> np.ndarray:
    """The score from per-example parts summed over the second-to-last axis: accuracy from (correct,), entity
    micro-F1 from (tp, fp, fn)."""
    total = parts.sum(-2)
    if parts.shape[-1] == 1:
        return total[..., 0] / parts.shape[-2]
    tp, fp, fn = total[..., 0], total[..., 1], total[..., 2]
    return np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=2 * tp + fp + fn > 0)


def drop_standard_error(reference: np.ndarray, parts: np.ndarray, resamples: int = 500, seed: int = 0) -> float:
    """Points: the standard error of `reference`'s score minus `parts`' over the same examples, by a paired
    bootstrap (both scored on each resample). Why: a budget of a point on a dev set of a thousand examples is
    within its noise; how much a drop can be trusted depends on the set's size and on how often the two disagree."""
    picks = np.random.default_rng(seed).integers(len(parts), size=(resamples, len(parts)))
    return float(100 * (score_of(reference[picks]) - score_of(parts[picks])).std())


def _evaluate_tags(run: RunBatch, tokenizer, examples: list[Example], names: list[str], max_length: int,
                   batch_size: int, desc: str, parts: bool) -> dict:
    outside = names.index(OUTSIDE) if OUTSIDE in names else 0
    order, found = by_length(examples), []
    for i in progress(range(0, len(examples), batch_size), desc, total=(len(examples) + batch_size - 1) // batch_size):
        chunk = [examples[k] for k in order[i : i + batch_size]]
        inputs, first = encode_words(tokenizer, chunk, max_length)
        found += word_predictions(run(inputs), first, chunk, outside)
    predicted = [found[k] for k in np.argsort(order)]
    gold, predicted = [[names[t] for t in e.label] for e in examples], [[names[t] for t in p] for p in predicted]
    return entity_metrics(gold, predicted) | ({"parts": entity_counts(gold, predicted)} if parts else {})


def evaluate(run: RunBatch, tokenizer, examples: list[Example], names: list[str], max_length: int,
             batch_size: int, desc: str = "evaluate", parts: bool = False) -> dict:
    """The task's metrics; `parts`: also each example's share of the score (an array, see score_of), for
    drop_standard_error."""
    if is_tagged(examples):
        return _evaluate_tags(run, tokenizer, examples, names, max_length, batch_size, desc, parts)
    logits = predict_logits(run, tokenizer, examples, max_length, batch_size, desc)
    labels = np.array([e.label for e in examples])
    correct = {"parts": (logits.argmax(-1) == labels).astype(float)[:, None]} if parts else {}
    return classification_metrics(labels, logits, names) | correct
