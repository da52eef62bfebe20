"""Token-classification data: CoNLL-2003 built in, CoNLL and JSONL files, tags aligned to first word pieces."""
from __future__ import annotations

import json

import numpy as np
import pytest

from compress.core.data import DataConfig, load_dataset
from compress.core.errors import CompressError
from compress.core.evaluate import evaluate
from compress.core.task import IGNORE, encode_labeled, entity_metrics, task_named
from tests.conftest import write_tokenizer

TOKEN = task_named("token-classification")
CONLL = """-DOCSTART- -X- -X- O

the DT B-NP O
good JJ I-NP B-ORG
film NN I-NP I-ORG
is VBZ B-VP O

a DT B-NP B-PER

-DOCSTART- -X- -X- O

boring JJ B-NP B-LOC
story NN I-NP O
"""


def test_conll2003_is_built_in_with_its_own_splits():
    ds = load_dataset(DataConfig(source="conll2003"), seed=0, task=TOKEN)
    assert (len(ds.train), len(ds.dev), len(ds.test)) == (14041, 3250, 3453)  # the published sentence counts
    assert ds.labels == sorted(f"{p}-{t}" for p in "BI" for t in ("LOC", "MISC", "ORG", "PER")) + ["O"]
    first = ds.train[0]
    assert first.words[:3] == ("EU", "rejects", "German")
    assert [ds.labels[t] for t in first.label[:3]] == ["B-ORG", "O", "B-MISC"]
    assert ds.task is TOKEN and all(len(e.words) == len(e.label) for e in ds.test)


def test_conll2003_is_not_sequence_classification_data():
    with pytest.raises(CompressError, match="'conll2003' is token-classification data"):
        load_dataset(DataConfig(source="conll2003"), seed=0)


def test_conll_file_keeps_documents_in_one_split(tmp_path):
    path = tmp_path / "d.conll"
    path.write_text(CONLL * 30)
    ds = load_dataset(DataConfig(source=str(path), split={"dev_fraction": 0.2, "test_fraction": 0.2}), 0, TOKEN)
    assert len(ds.train) + len(ds.dev) + len(ds.test) == 90  # three sentences a repeat, DOCSTART lines skipped
    assert ds.labels == ["B-LOC", "B-ORG", "B-PER", "I-ORG", "O"]
    # Each document is two sentences ("the good film is" + "a") or one: a split holds whole documents only.
    documents = {s: sum(e.words[0] != "a" for e in ds.split(s)) for s in ("train", "dev", "test")}
    assert sum(documents.values()) == 60 and all(n > 0 for n in documents.values())
    for split in ("train", "dev", "test"):
        firsts = [e.words[0] for e in ds.split(split)]
        assert firsts.count("a") == firsts.count("the")  # "a" never parted from the sentence before it


def test_jsonl_tokens_and_tags(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"tokens": ["good", "film"], "tags": ["B-ORG", "O"]}, {"tokens": ["bad"], "tags": ["B-PER"]}] * 20
    path.write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_dataset(DataConfig(source=str(path)), seed=0, task=TOKEN)
    assert ds.labels == ["B-ORG", "B-PER", "O"]
    assert {e.words for e in ds.train} == {("good", "film"), ("bad",)}


@pytest.mark.parametrize("content, message", [
    ('{"tokens": ["a", "b", "c"], "tags": ["O", "O"]}', "row 0: 3 words but 2 tags"),
    ('{"tokens": "a b", "tags": ["O", "O"]}', "lists of words and tags, got str and list"),
])
def test_misaligned_tags_are_refused_naming_the_row(tmp_path, content, message):
    path = tmp_path / "t.jsonl"
    path.write_text(content + "\n")
    with pytest.raises(CompressError, match=message):
        load_dataset(DataConfig(source=str(path)), seed=0, task=TOKEN)


def test_tags_sit_on_first_word_pieces_only(tmp_path):
    from transformers import AutoTokenizer

    write_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    path = tmp_path / "t.conll"
    path.write_text("the O\ngoods B-ORG\nfilms I-ORG\nis O\n\nfunnily B-PER\n\n" * 10)
    ds = load_dataset(DataConfig(source=str(path)), seed=0, task=TOKEN)
    example = next(e for e in ds.train if e.words[0] == "the")
    inputs, labels = encode_labeled(tokenizer, [example], 16)
    pieces = tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    assert pieces == ["[CLS]", "the", "good", "##s", "film", "##s", "is", "[SEP]"]
    names = [ds.labels[t] if t != IGNORE else None for t in labels[0]]
    assert names == [None, "O", "B-ORG", None, "I-ORG", None, "O", None]


def test_entity_f1_counts_whole_entities():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "O"]]  # PER cut short: a miss and a false entity
    m = entity_metrics(gold, predicted)
    assert m["metric"] == "entity_f1" and m["score"] == m["entity_f1"]
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["PER"]["f1"] == 0.0 and m["per_class"]["LOC"]["f1"] == 1.0
    assert m["token_accuracy"] == pytest.approx(5 / 6)


def test_words_cut_off_by_max_length_count_as_missed(tmp_path):
    from transformers import AutoTokenizer

    write_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    path = tmp_path / "t.conll"
    path.write_text(("the O\n" * 10 + "good B-ORG\n\n") * 10)
    ds = load_dataset(DataConfig(source=str(path)), seed=0, task=TOKEN)
    org = ds.labels.index("B-ORG")

    def always_org(inputs: dict[str, np.ndarray]) -> np.ndarray:
        logits = np.zeros((*inputs["input_ids"].shape, len(ds.labels)))
        logits[..., org] = 1.0
        return logits

    whole = evaluate(always_org, tokenizer, ds.test, ds.labels, 16, 8)
    cut = evaluate(always_org, tokenizer, ds.test, ds.labels, 8, 8)  # "good" (word 11) is past 8 pieces
    assert whole["recall"] == 1.0 and cut["recall"] == 0.0
