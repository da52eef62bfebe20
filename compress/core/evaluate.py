"""Task metrics from any runtime: one prediction loop, so every back end is scored identically.

Every metrics dict has `score` (the task's headline figure, which dev selection, the gate and the report read),
`metric` (its key) and `metric_label` (its name for readers): what each is, the task says (compress.core.task).
"""
from __future__ import annotations

import numpy as np

from compress.core.progress import progress
from compress.core.task import Example, RunBatch, example_task, scored_by


def _chunks(examples: list[Example], batch_size: int, desc: str):
    """Consecutive batches of the examples, with a progress bar."""
    starts = range(0, len(examples), batch_size)
    return (examples[i : i + batch_size] for i in progress(starts, desc, total=len(starts)))


def predict_logits(run: RunBatch, tokenizer, examples: list[Example], max_length: int, batch_size: int,
                   desc: str = "evaluate") -> np.ndarray:
    """Logits of every decision the task's model makes (Task.decisions: a row per example, or per real token),
    so two runtimes fed the same examples give arrays parity can compare row by row."""
    task, order = example_task(examples), by_length(examples)
    rows = []
    for chunk in _chunks([examples[i] for i in order], batch_size, desc):
        inputs = task.encode(tokenizer, chunk, max_length)
        logits = run(inputs)
        rows += [task.decisions(logits[i : i + 1], {k: v[i : i + 1] for k, v in inputs.items()})
                 for i in range(len(chunk))]
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


def at_chance(metrics: dict) -> str | None:
    """Why a model is at chance (its score, the task's chance score and what gets it: Task.chance), or None when
    it is above chance by more than the margin (CHANCE_POINTS, at most CHANCE_HEADROOM_SHARE of the points between
    chance and 1). The one definition the fine-tuning check, the report's warning, "Against the reference" and the
    gate share. Rows from before metrics were named hold accuracy."""
    task = scored_by(metrics.get("metric") or "accuracy")
    level = task and task.chance(metrics)
    score = metrics.get("score", metrics.get("accuracy"))
    if level is None or not isinstance(score, (int, float)):
        return None
    chance, what = level
    margin = min(CHANCE_POINTS, 100 * CHANCE_HEADROOM_SHARE * (1 - chance))
    if points_below(score, chance) > margin:  # the points chance is below the score
        return None
    return f"{task.metric_label} {score:.4f} against {chance:.4f} for {what} (at most {margin:.2f} points above it)"


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


def evaluate(run: RunBatch, tokenizer, examples: list[Example], names: list[str], max_length: int,
             batch_size: int, desc: str = "evaluate", parts: bool = False) -> dict:
    """The task's metrics (Task.predict, Task.score); `parts`: also each example's share of the score (an array,
    see score_of), for drop_standard_error."""
    task, order = example_task(examples), by_length(examples)
    found = [p for chunk in _chunks([examples[i] for i in order], batch_size, desc)
             for p in task.predict(run, tokenizer, chunk, max_length, names)]
    return task.score(examples, [found[k] for k in np.argsort(order)], names, parts)
