"""The standard error of a dev drop: the paired bootstrap agrees with the closed form where there is one, shrinks
with more examples, and scores entity F1 from per-sentence counts exactly as seqeval does."""
from __future__ import annotations

import numpy as np
import pytest

from compress.core.evaluate import drop_standard_error, score_of
from compress.core.task import entity_counts, entity_metrics


def test_the_bootstrap_matches_the_paired_closed_form_for_accuracy_and_shrinks_with_more_examples():
    rng = np.random.default_rng(0)
    teacher = (rng.random(2000) < 0.85).astype(float)
    student = np.where(rng.random(2000) < 0.1, 1 - teacher, teacher)  # disagrees on a tenth of the examples
    d = teacher - student
    closed = 100 * d.std() / np.sqrt(len(d))
    se = drop_standard_error(teacher[:, None], student[:, None], resamples=2000)
    assert se == pytest.approx(closed, rel=0.1)
    assert drop_standard_error(teacher[:500, None], student[:500, None]) > se  # a quarter of the examples: ~2x
    assert drop_standard_error(teacher[:, None], teacher[:, None]) == 0.0  # the same predictions: no doubt at all


def test_entity_counts_give_seqeval_s_micro_f1():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"], ["B-LOC", "O"]]
    predicted = [["B-PER", "I-PER", "O", "O"], ["O", "B-LOC"], ["B-LOC", "O"]]
    counts = entity_counts(gold, predicted)
    assert counts.tolist() == [[1, 0, 1], [0, 1, 1], [1, 0, 0]]
    assert float(score_of(counts)) == pytest.approx(entity_metrics(gold, predicted)["entity_f1"])
