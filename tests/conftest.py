"""Tiny models and data built in the test session: no downloads, seconds to train."""
from __future__ import annotations

import os
import random
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The line of transformers installed: 5 removed head pruning and head masks (see compress.core.heads).
TRANSFORMERS_5 = int(version("transformers").split(".")[0]) >= 5

POSITIVE = "good great fine superb lovely brilliant moving funny charming smart".split()
NEGATIVE = "bad awful dull boring weak tired clumsy lazy bland messy".split()
FILLER = "the a movie film story plot actor scene this that is was very quite and but".split()
WORDS = POSITIVE + NEGATIVE + FILLER


def write_wordpiece(folder: Path, tokens: list[str]):
    """A WordPiece tokenizer over `tokens` (in id order), saved into `folder` and returned. Read from vocab.txt
    by from_pretrained: transformers 5's BertTokenizerFast ignores a `vocab_file` argument."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer


def write_tokenizer(folder: Path) -> None:
    write_wordpiece(folder, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ly"])


def tiny_config(arch: str = "bert", **overrides):
    from transformers import AlbertConfig, BertConfig

    common = dict(vocab_size=len(WORDS) + 7, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=128, num_labels=2,
                  id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    if arch == "albert":
        return AlbertConfig(**common | {"embedding_size": 16, "hidden_act": "gelu"} | overrides)
    return BertConfig(**common | overrides)


def save_tiny_model(folder: Path, arch: str = "bert", seed: int = 0, **overrides) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(tiny_config(arch, **overrides))
    model.save_pretrained(folder, safe_serialization=True)
    write_tokenizer(folder)
    return folder


def sentencepiece_tokenizer(texts: list[str], kind: str = "Unigram", vocab_size: int = 80):
    """An ALBERT-style fast tokenizer as SentencePiece models convert to (lower-casing, Metaspace ▁ word starts,
    [CLS] x [SEP]) with a Unigram or BPE model trained here on `texts`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import AlbertTokenizerFast

    specials = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.Unigram() if kind == "Unigram" else models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = (trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
               if kind == "Unigram" else trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials))
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    return AlbertTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", cls_token="[CLS]",
                               sep_token="[SEP]", mask_token="[MASK]")


def sentencepiece_albert(folder: Path, texts: list[str], kind: str = "Unigram", layers: int = 4,
                         vocab_size: int = 80) -> Path:
    """A tiny ALBERT classifier with a SentencePiece-style (Unigram or BPE) fast tokenizer trained on `texts`."""
    import torch
    from transformers import AlbertForSequenceClassification

    tokenizer = sentencepiece_tokenizer(texts, kind, vocab_size)
    torch.manual_seed(0)
    model = AlbertForSequenceClassification(tiny_config("albert", vocab_size=len(tokenizer),
                                                        num_hidden_layers=layers, pad_token_id=0))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A random 2-layer BERT classifier (hidden 32, 4 heads) with a matching WordPiece tokenizer."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def tiny_albert(tmp_path_factory) -> Path:
    """A random 2-layer ALBERT classifier (E=16, H=32, one shared layer group)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-albert"), "albert")


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """Labelled sentences whose label follows from their words, grouped by a fake movie id."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.choice(["pos", "neg"])
        cue = POSITIVE if label == "pos" else NEGATIVE
        words = rng.sample(FILLER, 4) + rng.sample(cue, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label, "movie": f"m{i % 40}"})
    return rows


@pytest.fixture
def tiny_csv(tmp_path) -> Path:
    import pandas as pd

    path = tmp_path / "reviews.csv"
    pd.DataFrame(sentiment_rows(240)).to_csv(path, index=False)
    return path


def write_recipe(folder: Path, model: Path | str, data: Path, steps: list[dict], **sections) -> Path:
    """A recipe file for the tiny model and data; `sections` override or add top-level keys."""
    recipe = {
        "name": "tiny",
        "seed": 0,
        "model": {"source": str(model)},
        "data": {"source": str(data), "max_length": 16, "split": {"group_column": "movie"}},
        "steps": steps,
        "benchmark": {"backends": ["torch-cpu", "ort-cpu"], "sequence_lengths": [16], "warmup": 1,
                      "min_repeats": 5, "max_seconds": 0.5, "threads": 1},
    } | sections
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# Settings under which the tiny BERT learns the tiny sentiment data (test accuracy ~1.0) in ~40 steps.
# force: the fixtures already carry a classifier head for these labels, which would otherwise skip training.
# min_steps 0: exactly these epochs (finetune's default floor of 500 steps is for real data, not seconds-long tests).
TINY_TRAINING = {"epochs": 4, "batch_size": 16, "learning_rate": 3e-3, "warmup_ratio": 0.0, "force": True,
                 "min_steps": 0}
