"""augment: perturbed batches swap one-piece words for near ones, keep everything else, and train on soft losses."""
from __future__ import annotations

import pytest
import torch

from compress.stages.augment import AugmentConfig, WordSwap, nearest, word_pieces
from compress.stages.distill import DistillLoss, LossConfig
from tests.conftest import sentencepiece_tokenizer
from tests.test_distill import load


def test_nearest_finds_the_closest_other_word_and_leaves_non_words_alone():
    embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [1.0, 1.0]])
    words = torch.tensor([True, True, True, True, False])
    table = nearest(embeddings, words, k=1, chunk=3)  # chunks smaller than the vocabulary
    assert table.squeeze(1).tolist() == [1, 0, 3, 2, 4]


def test_a_perturbed_batch_swaps_only_lone_words_for_their_neighbours(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer, teacher = AutoTokenizer.from_pretrained(tiny_bert), load(tiny_bert)
    swap = WordSwap(AugmentConfig(share=1.0, words=1.0, neighbours=3), tokenizer, teacher, seed=0)
    rows = [["[CLS]", "good", "film", "[SEP]", "[PAD]", "[PAD]", "[PAD]"],
            ["[CLS]", "the", "plot", "##s", "was", "dull", "[SEP]"]]  # plot + ##s: one word of two pieces
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(r) for r in rows])
    inputs = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    out = swap.maybe(inputs)
    before, after = inputs["input_ids"], out["input_ids"]
    lone = {(0, 1), (0, 2), (1, 1), (1, 4), (1, 5)}
    for i, j in ((i, j) for i in range(before.shape[0]) for j in range(before.shape[1])):
        if (i, j) in lone:  # words=1.0: each is swapped, for one of its 3 neighbours, never itself
            assert after[i, j] != before[i, j] and after[i, j] in swap.table[before[i, j]]
        else:  # [CLS], [SEP], padding, the word before a continuation piece and the piece itself
            assert after[i, j] == before[i, j]
    assert torch.equal(out["attention_mask"], inputs["attention_mask"])
    assert WordSwap(AugmentConfig(share=1e-9), tokenizer, teacher, seed=0).maybe(inputs) is None


def test_sentencepiece_words_start_with_the_metaspace():
    tokenizer = sentencepiece_tokenizer(["a good film and a dull plot, the actor was fine"] * 20)
    word, continuation = word_pieces(tokenizer)
    special = set(tokenizer.all_special_tokens)
    starts = {t for t in tokenizer.get_vocab() if t.startswith("▁") and t[1:].isalpha()}
    assert starts and {"a", ","} <= set(tokenizer.get_vocab())
    for token, i in tokenizer.get_vocab().items():
        assert bool(word[i]) == (token in starts)
        assert bool(continuation[i]) == (not token.startswith("▁") and token not in special)


def test_a_perturbed_batch_keeps_no_hard_label_and_is_not_cached(tiny_bert):
    from transformers import AutoTokenizer

    teacher, student = load(tiny_bert), load(tiny_bert)
    swap = WordSwap(AugmentConfig(share=1.0), AutoTokenizer.from_pretrained(tiny_bert), teacher, seed=0)
    inputs = {"input_ids": torch.tensor([[2, 5, 9, 11, 3], [2, 7, 8, 3, 0]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])}
    cache, labels = {}, torch.tensor([0, 1])
    hard_only = LossConfig(kl=0.0, ce=1.0)
    assert DistillLoss(hard_only, teacher, student, cache).__call__(student, inputs, labels).item() > 0
    cache.clear()
    perturbed = DistillLoss(hard_only, teacher, student, cache, swap)(student, inputs, labels)
    assert perturbed.item() == 0.0 and not cache
    soft = DistillLoss(LossConfig(kl=1.0, ce=0.0, hidden=1.0), teacher, student, cache, swap)
    torch.nn.init.normal_(student.bert.encoder.layer[0].attention.self.query.weight)  # not a perfect copy
    assert soft(student, inputs, labels).item() > 0 and not cache


@pytest.mark.parametrize("field,value", [("share", 0.0), ("words", 1.5), ("neighbours", 0)])
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        AugmentConfig(**{field: value})
