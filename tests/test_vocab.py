"""Vocabulary pruning, the tokenizer/model match check, INT8 embeddings and the size split, on tiny models."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from compress.core.artifact import Artifact
from compress.core.data import load_dataset
from compress.core.errors import CompressError
from compress.core.models import load_tokenizer
from compress.recipe import load_recipe
from compress.run import main
from compress.stages.vocab_prune import (check_same_pieces, check_tokenizer_kind, coverage, fill_by_drift, kept_ids,
                                        prune_embeddings, trim_positions, write_pruned_tokenizer)
from tests.conftest import (WORDS, save_tiny_model, sentencepiece_albert, sentencepiece_tokenizer, sentiment_rows,
                            tiny_config, write_recipe, write_wordpiece)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece(folder, words: list[str]):
    from transformers import AutoTokenizer

    write_wordpiece(folder, SPECIALS + words)
    return AutoTokenizer.from_pretrained(folder)


def test_kept_texts_keep_their_pieces_and_the_rest_is_counted(tmp_path):
    from transformers import AutoTokenizer

    old = wordpiece(tmp_path / "old", ["play", "plays", "film", "films", "##s", "bad", "good", "the"])
    corpus = ["the film plays", "play films", "good play"]
    keep = kept_ids(old, tiny_config(), corpus, min_count=1, keep_characters=False)
    assert [old.convert_ids_to_tokens(i) for i in keep] == SPECIALS + ["play", "plays", "film", "films", "good", "the"]
    new = write_pruned_tokenizer(old, keep, tmp_path / "new")
    slow = AutoTokenizer.from_pretrained(tmp_path / "new", use_fast=False)
    assert not slow.is_fast and len(new) == len(slow) == len(keep)
    for text in corpus:  # same pieces, ids renumbered in the old order
        pieces = old.tokenize(text)
        assert new.tokenize(text) == slow.tokenize(text) == pieces
        assert new(text)["input_ids"] == slow(text)["input_ids"] == [keep.index(i) for i in old(text)["input_ids"]]
    # "bad" is gone and has no pieces left -> [UNK]; "##s" is gone, so "goods" (good ##s) cannot be split -> [UNK];
    # "the plays" stays covered.
    report = coverage(old, new, set(keep), ["bad film", "goods", "the plays"])
    assert new.tokenize("bad film goods") == ["[UNK]", "film", "[UNK]"]
    assert report["token_occurrences"] == 2 + 2 + 2
    assert report["uncovered_occurrences"] == 2 and report["words_affected"] == 2 and report["words_now_unk"] == 2
    assert report["words_now_split_differently"] == 0 and report["texts_fully_covered"] == 1
    assert report["tokens_after"] == 2 + 1 + 2


def test_a_word_with_a_dropped_piece_is_split_differently(tmp_path):
    old = wordpiece(tmp_path / "old", ["play", "plays", "##s", "film"])
    keep = kept_ids(old, tiny_config(), ["play films"], min_count=1, keep_characters=False)  # keeps play, film, ##s; drops "plays"
    new = write_pruned_tokenizer(old, keep, tmp_path / "new")
    assert old.tokenize("plays") == ["plays"] and new.tokenize("plays") == ["play", "##s"]
    report = coverage(old, new, set(keep), ["plays"])
    assert report["words_now_split_differently"] == 1 and report["words_now_unk"] == 0
    assert report["uncovered_share"] == 1.0


def test_min_count_drops_rare_tokens_but_never_specials(tmp_path):
    old = wordpiece(tmp_path / "old", ["good", "bad", "film"])
    keep = kept_ids(old, tiny_config(), ["good film", "good"], min_count=2, keep_characters=False)
    assert old.convert_ids_to_tokens(keep) == SPECIALS + ["good"]


def test_kept_characters_split_rare_words_into_pieces_instead_of_unk(tmp_path):
    chars = ["b", "d", "f", "g", "o", "z", "##a", "##d", "##i", "##l", "##m", "##o", "##q"]
    old = wordpiece(tmp_path / "old", ["good", "film", "bad"] + chars)
    corpus = ["good good film", "Good bad"]  # film and bad are rare; no word has a q or z
    keep = kept_ids(old, tiny_config(), corpus, min_count=2, keep_characters=True)
    assert set(old.convert_ids_to_tokens(keep)) == set(SPECIALS) | {
        "good", "b", "d", "f", "g", "o", "##a", "##d", "##i", "##l", "##m", "##o"}
    new = write_pruned_tokenizer(old, keep, tmp_path / "new")
    assert new.tokenize("good film bad") == ["good", "f", "##i", "##l", "##m", "b", "##a", "##d"]
    without = write_pruned_tokenizer(old, kept_ids(old, tiny_config(), corpus, 2, keep_characters=False),
                                     tmp_path / "without")
    assert without.tokenize("good film bad") == ["good", "[UNK]", "[UNK]"]
    report = coverage(old, new, set(keep), ["good film bad"])
    assert report["words_affected"] == 2 and report["words_now_unk"] == 0


def test_fill_by_drift_brings_back_the_words_whose_split_moves_the_model_most(tmp_path):
    from transformers import BertForSequenceClassification

    old = wordpiece(tmp_path / "old", ["good", "film", "films", "bad", "plays", "play", "b", "##s", "##a", "##d",
                                       "[unused0]"])
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config(vocab_size=len(old))).eval()
    keep = kept_ids(old, model.config, ["good film"], min_count=1, keep_characters=False)
    new = write_pruned_tokenizer(old, keep, tmp_path / "new")

    def drift(word: str) -> float:  # the model reads the word whole, then as the pieces the pruned vocabulary gives
        split = [old.cls_token_id, *old.convert_tokens_to_ids(new.tokenize(word)), old.sep_token_id]
        with torch.no_grad():
            whole, pieces = (model(input_ids=torch.tensor([ids])).logits.log_softmax(-1)
                             for ids in (old(word)["input_ids"], split))
        return float((whole - pieces).abs().sum())

    candidates = ["films", "bad", "plays", "play", "b"]  # no ##pieces; [unused0] never comes out of the tokenizer
    ranked = sorted(candidates, key=drift, reverse=True)
    assert len({round(drift(w), 6) for w in candidates}) == len(candidates)  # a strict order to check against
    assert old.convert_ids_to_tokens(fill_by_drift(model, old, keep, len(keep) + 2)) == ranked[:2]
    assert sorted(old.convert_ids_to_tokens(fill_by_drift(model, old, keep, len(old)))) == sorted(candidates)
    assert fill_by_drift(model, old, keep, len(keep)) == []


@pytest.mark.parametrize("arch", ["bert", "albert"])
def test_trimmed_positions_load_in_stock_transformers_with_the_same_logits(tmp_path, arch):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config(arch)).eval()
    ids = torch.tensor([[2, 7, 11, 30, 3]])
    before = model(input_ids=ids).logits
    trim_positions(model, 16, tmp_path)
    model.save_pretrained(tmp_path / "trimmed")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "trimmed").eval()
    assert loaded.config.max_position_embeddings == 16
    assert loaded.base_model.embeddings.position_embeddings.weight.shape[0] == 16
    torch.testing.assert_close(loaded(input_ids=ids).logits, before, rtol=0, atol=1e-6)
    with pytest.raises(CompressError, match="max_positions 32 .* 16"):
        trim_positions(loaded, 32, tmp_path)


@pytest.mark.parametrize("positions, data, bench, field", [
    (128, 256, [16], "data.max_length 256"), (128, 16, [16, 256], "benchmark.sequence_lengths 256"),
    (64, 16, [16], "the report's MACs sequence length 128")])
def test_max_positions_shorter_than_a_recipe_length_is_a_recipe_error(tmp_path, tiny_bert, tiny_csv, positions,
                                                                      data, bench, field):
    steps = [{"name": "v", "type": "vocab_prune", "max_positions": positions}]
    recipe = write_recipe(tmp_path, tiny_bert, tiny_csv, steps)
    raw = yaml.safe_load(recipe.read_text())
    raw["data"]["max_length"], raw["benchmark"]["sequence_lengths"] = data, bench
    recipe.write_text(yaml.safe_dump(raw))
    with pytest.raises(CompressError, match=rf"steps\[0\] \(v\): max_positions {positions} is shorter than {field}"):
        load_recipe(recipe)


def test_max_positions_below_eight_is_a_recipe_error(tmp_path, tiny_bert, tiny_csv):
    steps = [{"name": "v", "type": "vocab_prune", "max_positions": 4}]
    with pytest.raises(CompressError, match=r"steps\[0\]\.max_positions.*greater than or equal to 8"):
        load_recipe(write_recipe(tmp_path, tiny_bert, tiny_csv, steps))


@pytest.mark.parametrize("arch", ["bert", "albert"])
def test_pruned_embeddings_keep_tied_lm_head_and_bias_consistent(arch):
    from transformers import AutoModelForMaskedLM

    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(tiny_config(arch)).eval()
    with torch.no_grad():
        model.get_output_embeddings().bias.normal_()  # a non-zero bias, so slicing it wrong shows
    keep = [0, 1, 2, 3, 4, 7, 11, 20, 30, 41]
    ids = torch.tensor([[2, 7, 11, 30, 3]])
    before = model(input_ids=ids).logits[..., keep]
    prune_embeddings(model, keep)
    after = model(input_ids=torch.tensor([[keep.index(i) for i in ids[0].tolist()]])).logits
    head = model.get_output_embeddings()
    assert head.weight is model.get_input_embeddings().weight  # still tied
    assert model.config.vocab_size == len(keep) == head.bias.shape[0] == after.shape[-1]
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_a_wordlevel_tokenizer_is_refused_by_name(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")))
    with pytest.raises(CompressError, match="WordLevel"):
        check_tokenizer_kind(tok, tmp_path)


def test_model_and_tokenizer_that_do_not_match_are_an_error(tmp_path, tiny_bert):
    folder = tmp_path / "mixed"
    shutil.copytree(tiny_bert, folder)
    old = load_tokenizer(folder)
    write_pruned_tokenizer(old, list(range(20)), folder)  # 20-token tokenizer beside a 43-row embedding table
    with pytest.raises(CompressError, match=r"vocab_size 43 .* has 20 tokens"):
        load_tokenizer(folder)


def test_missing_extra_corpus_is_a_recipe_error(tmp_path, tiny_bert, tiny_csv):
    steps = [{"name": "v", "type": "vocab_prune", "extra_corpus": str(tmp_path / "nope.txt")}]
    with pytest.raises(CompressError, match=r"steps\[0\]\.extra_corpus.*nope\.txt"):
        load_recipe(write_recipe(tmp_path, tiny_bert, tiny_csv, steps))


STEPS = [
    {"name": "teacher", "type": "finetune", "epochs": 2, "batch_size": 16, "learning_rate": 1e-3},
    {"name": "small-vocab", "type": "vocab_prune"},
    {"name": "onnx", "type": "export"},
    {"name": "int8", "type": "quantize"},
    {"name": "int8-fp32-embeddings", "type": "quantize", "from": "onnx", "quantize_embeddings": False},
    {"name": "onnx-gathers", "type": "export", "from": "small-vocab", "fuse_embeddings": False},
    {"name": "int4-embeddings", "type": "quantize", "embedding_bits": 4, "embedding_block_size": 16},
]

FRESH = """
import json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
folder, texts = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
with torch.no_grad():
    print(json.dumps(model(**tok(texts, padding=True, return_tensors="pt")).logits.tolist()))
"""


@pytest.mark.parametrize("arch", ["bert", "albert"])
def test_pipeline_prunes_and_covered_test_texts_predict_identically(tmp_path, arch, tiny_csv):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = save_tiny_model(tmp_path / "source", arch, max_position_embeddings=256)  # trimmed to 128 below
    (tmp_path / "extra.txt").write_text("superb films\n")
    recipe = write_recipe(tmp_path, source, tiny_csv, STEPS)
    raw = yaml.safe_load(recipe.read_text())
    raw["data"]["limit_train"] = 12  # a small training corpus leaves some test words out of the vocabulary
    raw["steps"][1]["extra_corpus"] = str(tmp_path / "extra.txt")
    raw["steps"][1]["max_positions"] = 128  # the least the report's MACs figure (sequence 128) allows
    recipe.write_text(yaml.safe_dump(raw))
    assert main([str(recipe), "--out", str(tmp_path / "runs")]) == 0
    run = tmp_path / "runs" / "tiny"
    pruned = Artifact.load(run / "01-small-vocab")
    m = pruned.metrics
    assert m["vocab_size_after"] < m["vocab_size_before"] == 43
    assert m["max_positions_before"] == 256 and m["max_positions_after"] == 128
    assert 0 < m["coverage"]["test"]["uncovered_share"] < 1
    assert m["coverage"]["test"]["words_affected"] == (m["coverage"]["test"]["words_now_unk"]
                                                       + m["coverage"]["test"]["words_now_split_differently"])

    # Test texts whose tokens are all kept: the pruned model, loaded by stock transformers in a fresh process,
    # gives the teacher's logits.
    data = load_dataset(load_recipe(recipe).data, seed=0)
    old_tok = AutoTokenizer.from_pretrained(run / "00-teacher")
    kept = {old_tok.convert_tokens_to_ids(t) for t in AutoTokenizer.from_pretrained(pruned.path).get_vocab()}
    covered = [e.text for e in data.test if set(old_tok(e.text)["input_ids"]) <= kept]
    assert 0 < len(covered) < len(data.test)
    assert {"superb", "##s"} <= set(AutoTokenizer.from_pretrained(pruned.path).get_vocab())  # from extra_corpus
    teacher = AutoModelForSequenceClassification.from_pretrained(run / "00-teacher").eval()
    with torch.no_grad():
        expected = teacher(**old_tok(covered, padding=True, return_tensors="pt")).logits.numpy()
    fresh = subprocess.run([sys.executable, "-c", FRESH, str(pruned.path), json.dumps(covered)],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    got = np.array(json.loads(fresh.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (got.argmax(-1) == expected.argmax(-1)).all()

    rows = {(r["artifact"], r["backend"]): r for r in json.loads((run / "report.json").read_text())["rows"]}
    split = {name: rows[(name, backend)]["size_split"] for name, backend in
             [("teacher", "torch-cpu"), ("small-vocab", "torch-cpu"), ("int8", "ort-cpu"),
              ("int8-fp32-embeddings", "ort-cpu"), ("int4-embeddings", "ort-cpu")]}
    assert split["small-vocab"]["embeddings"]["bytes"] < split["teacher"]["embeddings"]["bytes"]
    assert split["small-vocab"]["encoder"] == split["teacher"]["encoder"]
    parameters = rows[("small-vocab", "torch-cpu")]["parameters"]
    assert sum(p["parameters"] for p in split["small-vocab"].values()) == parameters
    int8, fp32 = split["int8"]["embeddings"], split["int8-fp32-embeddings"]["embeddings"]
    assert int8["bytes"] < 1.1 * int8["parameters"] and fp32["bytes"] == 4 * fp32["parameters"]
    # 4 bits a value plus one FP16 scale per 16 values (the FP32 LayerNorm of 2 x hidden values rides along), and
    # the expansion's one fixed cost: a [256, 2] INT8 lookup shared by all tables
    int4 = split["int4-embeddings"]["embeddings"]
    assert int4["parameters"] == fp32["parameters"] and int4["bytes"] < 0.8 * int4["parameters"] + 256 * 2
    assert {"## Size split", "## Vocabulary pruning"} <= set((run / "report.md").read_text().splitlines())


SENTENCES = [r["text"] for r in sentiment_rows(240)]


@pytest.mark.parametrize("kind", ["Unigram", "BPE"])
def test_sentencepiece_pruning_keeps_the_pieces_of_every_covered_text(tmp_path, kind):
    """Unigram and BPE models (ALBERT-style tokenizer.json) are cut like WordPiece: texts whose pieces are all kept
    split the same way (ids renumbered), and the rest is counted."""
    from transformers import AutoTokenizer

    old = sentencepiece_tokenizer(SENTENCES + WORDS, kind, vocab_size=90)
    corpus = SENTENCES[:6]
    keep = kept_ids(old, tiny_config(), corpus, min_count=1, keep_characters=False)
    assert len(keep) < len(old)
    write_pruned_tokenizer(old, keep, tmp_path / "new")
    new = AutoTokenizer.from_pretrained(tmp_path / "new")
    assert new.is_fast and len(new) == len(keep) and not (tmp_path / "new" / "spiece.model").exists()
    for text in corpus:
        assert new.tokenize(text) == old.tokenize(text)
        assert new(text)["input_ids"] == [keep.index(i) for i in old(text)["input_ids"]]
    covered = [t for t in SENTENCES if set(old(t)["input_ids"]) <= set(keep)]
    assert len(corpus) < len(covered) < len(SENTENCES)  # texts beyond the corpus are covered, not all of them
    check_same_pieces(old, new, keep, SENTENCES, "v")  # every covered text splits as before
    assert coverage(old, new, set(keep), SENTENCES)["uncovered_occurrences"] > 0
    model = json.loads(new.backend_tokenizer.to_str())["model"]
    if kind == "Unigram":  # the lowest score stays, so the unknown-character score does not move
        old_scores = [score for _, score in json.loads(old.backend_tokenizer.to_str())["model"]["vocab"]]
        assert min(score for _, score in model["vocab"]) == min(old_scores)
    else:  # the merges that make kept tokens, and only those
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        assert 0 < len(merges) < len(json.loads(old.backend_tokenizer.to_str())["model"]["merges"])
        assert all({a, b, a + b} <= set(model["vocab"]) for a, b in merges)


def test_a_tokenizer_vocab_prune_cannot_cut_is_refused_at_validation(tmp_path, tiny_bert, tiny_csv):
    """WordLevel (or a slow-only tokenizer) cannot be cut: the recipe says so before anything runs, for a
    vocab_prune step and for a search's `vocabulary:`, naming the step; a WordPiece or SentencePiece one passes."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    source = tmp_path / "wordlevel"
    shutil.copytree(tiny_bert, source)
    vocab = json.loads((tiny_bert / "tokenizer.json").read_text())["model"]["vocab"]
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (source / f).unlink(missing_ok=True)
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(source)
    assert len(vocab) == 43
    for steps, where in (([{"name": "v", "type": "vocab_prune"}], r"steps\[0\] \(v\)"),
                         ([{"name": "t", "type": "finetune"},
                           {"name": "s", "type": "search", "space": {"layers": [1]}, "vocabulary": {}}],
                          r"steps\[1\] \(s\)")):
        with pytest.raises(CompressError, match=where + r": vocab_prune cuts fast WordPiece .* the input's is "
                                                        "WordLevel"):
            load_recipe(write_recipe(tmp_path, source, tiny_csv, steps))
        load_recipe(write_recipe(tmp_path, tiny_bert, tiny_csv, steps))
        albert = sentencepiece_albert(tmp_path / "albert", SENTENCES + WORDS, layers=2)
        load_recipe(write_recipe(tmp_path, albert, tiny_csv, steps))


def test_fill_by_drift_brings_back_whole_sentencepiece_words(tmp_path):
    """A Unigram token ▁word is a candidate as the word it spells; the filled words come back whole."""
    from transformers import AlbertForSequenceClassification

    old = sentencepiece_tokenizer(SENTENCES + WORDS, "Unigram", vocab_size=90)
    torch.manual_seed(0)
    model = AlbertForSequenceClassification(tiny_config("albert", vocab_size=len(old))).eval()
    keep = kept_ids(old, model.config, SENTENCES[:3], min_count=1, keep_characters=True)
    filled = fill_by_drift(model, old, keep, len(keep) + 3)
    words = old.convert_ids_to_tokens(filled)
    assert len(filled) == 3 and all(w.startswith("▁") for w in words)  # word starts, read as their word
    new = write_pruned_tokenizer(old, sorted(keep + filled), tmp_path / "new")
    assert [new.tokenize(w[1:]) for w in words] == [[w] for w in words]


def test_the_tokenizer_kind_is_read_without_loading_or_from_the_slow_files(tmp_path, tiny_bert):
    from compress.core.models import tokenizer_kind

    assert tokenizer_kind(tiny_bert) == "WordPiece"
    slow = tmp_path / "slow"
    shutil.copytree(tiny_bert, slow)
    (slow / "tokenizer.json").unlink()  # vocab.txt alone: AutoTokenizer builds the fast WordPiece from it
    assert tokenizer_kind(slow) == "WordPiece"
    (slow / "vocab.txt").unlink()
    assert tokenizer_kind(slow).startswith("unloadable")
