"""Evaluation batches examples of like lengths together and still returns a row per example in the caller's order,
for sentences and for tagged words alike."""
from __future__ import annotations

import numpy as np
from transformers import AutoTokenizer

from compress.core.task import Example
from compress.core.evaluate import evaluate, predict_logits
from tests.conftest import write_tokenizer

WORDS = "good bad movie plot fine dull great awful".split()


def echo_lengths(seen: list[int]):
    """A runtime whose logits are, per position, (its row's real length, its token id): each row says where it
    came from; `seen` collects each batch's padded length."""
    def run(inputs: dict) -> np.ndarray:
        seen.append(inputs["input_ids"].shape[1])
        lengths = inputs["attention_mask"].sum(1, keepdims=True).repeat(inputs["input_ids"].shape[1], 1)
        return np.stack([lengths, inputs["input_ids"]], -1).astype(float)
    return run


def test_rows_come_back_in_the_examples_order_from_batches_of_like_lengths(tmp_path):
    write_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    sizes = [7, 1, 5, 2, 6, 3, 1, 4]
    examples = [Example(" ".join(WORDS[:n]), 0) for n in sizes]
    seen: list[int] = []
    logits = predict_logits(lambda x: echo_lengths(seen)(x)[:, 0], tokenizer, examples, 32, 2)
    assert logits[:, 0].tolist() == [n + 2 for n in sizes]  # [CLS] and [SEP] around each text
    assert seen == [3, 5, 7, 9]  # words (1, 1), (2, 3), (4, 5), (6, 7), +2: each batch padded to its longer one

    tagged = [Example(" ".join(WORDS[:n]), (0,) * n, words=tuple(WORDS[:n])) for n in sizes]
    rows = predict_logits(echo_lengths([]), tokenizer, tagged, 32, 3)
    per_token = np.concatenate([np.full(n + 2, n + 2) for n in sizes])
    assert rows[:, 0].tolist() == per_token.tolist()  # a row per real token, example after example


def test_tagged_predictions_are_scored_against_their_own_sentences(tmp_path):
    write_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    names = ["O", "B-X"]
    sizes = [4, 1, 3, 2]
    gold = [tuple(int(i == n - 1) for i in range(n)) for n in sizes]  # each sentence's last word is an entity
    examples = [Example(" ".join(WORDS[:n]), g, words=tuple(WORDS[:n])) for n, g in zip(sizes, gold)]

    def last_word_tagger(inputs: dict) -> np.ndarray:
        """Tags the last real piece before [SEP]: right only if each row is scored against its own sentence."""
        length = inputs["attention_mask"].sum(1)
        logits = np.zeros(inputs["input_ids"].shape + (2,))
        logits[..., 0] = 1
        logits[np.arange(len(length)), length - 2] = [0, 1]
        return logits

    assert evaluate(last_word_tagger, tokenizer, examples, names, 32, 3)["entity_f1"] == 1.0
