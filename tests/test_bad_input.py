"""Bad input of every kind: exit code 2, a message naming the file, field and value, no traceback, nothing written.

Each case builds its bad input from the tiny session models and data (no downloads) and runs the real command
line, `compress.run.main`, with a fresh `--out`: after it, `--out` must not exist (no run folder, manifest,
report or run.log).
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import yaml

from compress.run import main
from tests.conftest import sentiment_rows, write_recipe, write_tokenizer

FINETUNE = [{"name": "teacher", "type": "finetune", "epochs": 1}]
ALBERTIZE = {"name": "albert", "type": "distill", "student": {"albertize": {"embedding_size": 8}}}
TWO_GROUPS = ALBERTIZE | {"student": {"albertize": {"embedding_size": 8, "num_groups": 2}}}


@dataclass
class Inputs:
    """The good inputs a case spoils one thing of."""

    tmp: Path
    bert: Path
    albert: Path
    csv: Path

    def recipe(self, steps: list[dict] = FINETUNE, model: Path | None = None, data: dict | None = None,
               **sections) -> Path:
        """A recipe for the tiny model and data; `data` keys are merged into the usual data section."""
        path = write_recipe(self.tmp, model or self.bert, self.csv, steps, **sections)
        raw = yaml.safe_load(path.read_text())
        raw["data"] |= data or {}
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    def checkpoint(self, without: tuple[str, ...] = (), files: dict[str, bytes] | None = None) -> Path:
        """A copy of the tiny BERT without some files (glob patterns) and with others written over."""
        folder = self.tmp / "ckpt"
        shutil.copytree(self.bert, folder, ignore=shutil.ignore_patterns(*without))
        for name, content in (files or {}).items():
            (folder / name).write_bytes(content)
        return folder

    def file(self, name: str, content: str | bytes | list[dict]) -> Path:
        """A data or recipe file: text, raw bytes, or rows written as CSV."""
        path = self.tmp / name
        if isinstance(content, list):
            pd.DataFrame(content).to_csv(path, index=False)
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path


def truncated(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


def gpt2(inputs: Inputs) -> Path:
    """A tiny GPT-2 classifier folder, a tokenizer beside it: a well-formed checkpoint of an unsupported kind."""
    from transformers import AutoModelForSequenceClassification, GPT2Config

    folder = inputs.tmp / "gpt2"
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2, num_labels=2)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder, safe_serialization=True)
    write_tokenizer(folder)
    return folder


def rows(n: int = 60, **changes) -> list[dict]:
    """Tiny sentiment rows (grouped by movie) with each key of `changes` set to one value in every row."""
    return [r | changes for r in sentiment_rows(n)]


TOKEN = "token-classification"
# id: (what builds the recipe, substrings the message must hold: the file, field and value at fault)
Case = tuple[Callable[[Inputs], Path], list[str]]
CASES: dict[str, object] = {  # a Case, or pytest.param of one where it needs a mark
    # the recipe file itself
    "recipe-missing": (lambda i: i.tmp / "nope.yaml", ["nope.yaml", "not found"]),
    "recipe-not-utf8": (lambda i: i.file("latin1.yaml", b"name: caf\xe9\nsteps: []\n"),
                        ["latin1.yaml", "not UTF-8", "byte 9"]),
    "recipe-bad-yaml": (lambda i: i.file("broken.yaml", "name: [unclosed\n"), ["broken.yaml", "not valid YAML"]),
    "recipe-not-a-mapping": (lambda i: i.file("list.yaml", "- a\n- b\n"), ["list.yaml", "a mapping"]),
    # keys, types and values
    "typo-key": (lambda i: i.recipe([{"name": "teacher", "type": "finetune", "epohcs": 1}]),
                 ["recipe.yaml", "steps[0].epohcs", "Extra inputs are not permitted"]),
    "typo-section": (lambda i: i.recipe(benchmrk={}), ["benchmrk", "Extra inputs are not permitted"]),
    "wrong-type": (lambda i: i.recipe([{"name": "teacher", "type": "finetune", "epochs": "many"}]),
                   ["steps[0].epochs", "'many'"]),
    "out-of-range": (lambda i: i.recipe([{"name": "teacher", "type": "finetune", "learning_rate": 5}]),
                     ["steps[0].learning_rate", "(got 5)"]),
    "max-length-out-of-range": (lambda i: i.recipe(data={"max_length": 4}), ["data.max_length", "(got 4)"]),
    "negative-seed": (lambda i: i.recipe(seed=-1), ["recipe.yaml", "seed: Input should be greater than or equal to 0",
                                                    "(got -1)"]),
    "unknown-step-type": (lambda i: i.recipe([{"name": "a", "type": "sharpen"}]), ["steps[0]", "'sharpen'"]),
    "bad-from": (lambda i: i.recipe([{"name": "a", "type": "export", "from": "later"}]),
                 ["steps[0] (a).from", "'later' is not an earlier step"]),
    "duplicate-step-names": (lambda i: i.recipe(FINETUNE + [{"name": "teacher", "type": "export"}]),
                             ["steps[1] (teacher)", "'teacher' is taken"]),
    "wrong-input-kind": (lambda i: i.recipe([{"name": "q", "type": "quantize"}]),
                         ["steps[0] (q)", "takes ('onnx',)", "hf-checkpoint"]),
    "unknown-quantize-method": (lambda i: i.recipe([{"name": "o", "type": "export"},
                                                    {"name": "q", "type": "quantize", "method": "kl"}]),
                                ["steps[1]", "method must be one of", "(got 'kl')"]),
    "impossible-heads-ratio": (lambda i: i.recipe([{"name": "p", "type": "prune", "heads": 1.0}]),
                               ["steps[0].heads", "heads[all] = 1.0", "would remove every head"]),
    "impossible-ffn-ratio": (lambda i: i.recipe([{"name": "p", "type": "prune", "ffn": 1.5}]),
                             ["steps[0].ffn", "ffn = 1.5"]),
    "gate-unknown-baseline": (lambda i: i.recipe(gate={"baseline": "nope"}), ["gate", "'nope' is not a step name"]),
    # the model source
    "model-missing": (lambda i: i.recipe(model=i.tmp / "no-model"), ["model.source", "no-model", "not found"]),
    "model-no-tokenizer": (lambda i: i.recipe(model=i.checkpoint(without=("tokenizer*", "vocab.txt", "special*"))),
                           ["model.source", "ckpt", "no tokenizer"]),
    "model-no-weights": (lambda i: i.recipe(model=i.checkpoint(without=("model.safetensors",))),
                         ["model.source", "ckpt", "no weights"]),
    "model-pickle-not-allowed": (lambda i: i.recipe(model=i.checkpoint(without=("model.safetensors",),
                                                                       files={"pytorch_model.bin": b""})),
                                 ["model.source", "ckpt", "allow_pickle"]),
    "model-garbage-safetensors": (lambda i: i.recipe(model=i.checkpoint(files={"model.safetensors": b"\xff" * 64})),
                                  ["model.source", "ckpt/model.safetensors", "not a safetensors file"]),
    "model-truncated-safetensors": (
        lambda i: i.recipe(model=i.checkpoint(files={"model.safetensors": truncated(i.bert / "model.safetensors")})),
        ["model.source", "ckpt/model.safetensors", "truncated safetensors file"]),
    "model-config-not-json": (lambda i: i.recipe(model=i.checkpoint(files={"config.json": b"{not json"})),
                              ["model.source", "ckpt/config.json", "not a readable JSON file"]),
    "model-gpt2-export-first": (lambda i: i.recipe([{"name": "o", "type": "export"}], model=gpt2(i)),
                                ["model.source", "gpt2/config.json", "model_type 'gpt2' is not supported"]),
    "max-length-beyond-positions": (lambda i: i.recipe(data={"max_length": 200}),
                                    ["data.max_length 200", "max_position_embeddings 128", "model.source"]),
    # architecture along the chain of steps
    "albertize-an-albert": (lambda i: i.recipe([ALBERTIZE, ALBERTIZE | {"name": "again"}]),
                            ["steps[1] (again)", "student.albertize needs a BERT input, not albert"]),
    "layer-drop-uneven-over-albert-groups": (
        lambda i: i.recipe([TWO_GROUPS, {"name": "d", "type": "distill", "student": {"layer_drop": [0]}}]),
        ["steps[1] (d)", "student.layer_drop: 1 layers do not split evenly", "2 shared groups"]),
    "prune-a-two-group-albert": (
        lambda i: i.recipe([TWO_GROUPS, {"name": "p", "type": "prune", "heads": 0.5}]),
        ["steps[1] (p)", "prune supports bert and albert", "num_hidden_groups=2"]),
    # found only when a stage runs (the first step): the run folder it had made is removed again
    "stage-drop-layers-beyond-depth": (lambda i: i.recipe([{"name": "p", "type": "prune", "drop_layers": [5]}]),
                                       ["prune: drop_layers [5] with 2 layers"]),
    # the data
    "data-missing": (lambda i: i.recipe(data={"source": str(i.tmp / "nope.csv")}),
                     ["data.source", "nope.csv", "not found"]),
    "data-unknown-format": (lambda i: i.recipe(data={"source": str(i.file("d.txt", "a\n"))}),
                            ["data.source", "d.txt", "cannot tell the format", "data.format"]),
    "data-empty-file": (lambda i: i.recipe(data={"source": str(i.file("empty.csv", ""))}),
                        ["empty.csv", "cannot read as csv"]),
    "data-binary-file": (lambda i: i.recipe(data={"source": str(i.file("bin.csv", bytes(range(256)) * 4))}),
                         ["bin.csv", "cannot read as csv"]),
    "data-bad-jsonl-line": (lambda i: i.recipe(data={"source": str(i.file("d.jsonl", '{"text": "a"}\n[1, 2\n'))}),
                            ["d.jsonl", "line 2 is not a JSON object: '[1, 2'"]),
    "data-missing-column": (lambda i: i.recipe(data={"text_column": "review"}),
                            ["reviews.csv", "no column 'review'", "data.text_column"]),
    "data-one-class": (lambda i: i.recipe(data={"source": str(i.file("one.csv", rows(label="pos")))}),
                       ["one.csv", "column 'label' has one label, 'pos'"]),
    "data-every-row-dropped": (lambda i: i.recipe(data={"source": str(i.file("blank.csv", rows(text=" ")))}),
                               ["blank.csv", "no row has a text and a label", "'text': 60"]),
    "data-hf-disk-without-datasets": pytest.param(
        lambda i: i.recipe(data={"source": str(i.tmp), "format": "hf-disk"}),
        ["data.source", "hf-disk", "pip install datasets"],
        marks=pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets is installed")),
    "split-column-bad-values": (
        lambda i: i.recipe(data={"source": str(i.file("s.csv", rows(fold="validation"))),
                                 "split": {"column": "fold"}}),
        ["s.csv", "column 'fold' (data.split.column)", "['validation']"]),
    "split-column-and-fractions": (lambda i: i.recipe(data={"split": {"column": "fold", "dev_fraction": 0.2}}),
                                   ["data.split", "column 'fold' gives the splits", "dev_fraction"]),
    "split-column-on-builtin": (lambda i: i.recipe(data={"source": "bbc_news", "split": {"column": "fold"}}),
                                ["data", "split.column", "'bbc_news'"]),
    "split-files-unknown-key": (
        lambda i: i.recipe(data={"source": {"train": str(i.csv), "dev": str(i.csv), "tset": str(i.csv)}}),
        ["data.source.tset", "Extra inputs are not permitted", "data.source.test: Field required"]),
    "split-files-missing-file": (
        lambda i: i.recipe(data={"source": {"train": str(i.csv), "dev": str(i.tmp / "dev.csv"), "test": str(i.csv)}}),
        ["data.source", "dev: data file not found", "dev.csv"]),
    # token classification
    "unknown-task": (lambda i: i.recipe(task="qa"), ["task", "(got 'qa')"]),
    "conll2003-without-task": (lambda i: i.recipe(data={"source": "conll2003", "split": {}}),
                               ["data.source 'conll2003' is token-classification data",
                                "set task: token-classification"]),
    "ner-from-csv": (lambda i: i.recipe(task=TOKEN), ["reviews.csv", "token-classification reads conll, jsonl"]),
    "ner-text-pair": (lambda i: i.recipe(task=TOKEN, data={"text_pair_column": "q"}),
                      ["data.text_pair_column", "tags one text's words"]),
    "ner-misaligned-tags": (
        lambda i: i.recipe(task=TOKEN, data={"source": str(i.file("t.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}'
                                                                  '\n')), "split": {}}),
        ["t.jsonl", "row 0: 2 words but 1 tags"]),
    "ner-conll-line-without-tag": (
        lambda i: i.recipe(task=TOKEN, data={"source": str(i.file("c.conll", "good B-ORG\nfilm\n")), "split": {}}),
        ["c.conll", "line 2 has one column", "'film'"]),
    "ner-conll-with-group-column": (
        lambda i: i.recipe(task=TOKEN, data={"source": str(i.file("g.conll", "good B-ORG\n"))}),
        ["g.conll", "data.split.group_column does not apply"]),
    "split-files-and-fractions": (
        lambda i: i.recipe(data={"source": {"train": str(i.csv), "dev": str(i.csv), "test": str(i.csv)}}),
        ["data", "one file per split", "['group_column']"]),
}


@pytest.fixture
def inputs(tmp_path, tiny_bert, tiny_albert, tiny_csv) -> Inputs:
    return Inputs(tmp_path, tiny_bert, tiny_albert, tiny_csv)


def assert_refused(argv: list[str], out: Path, expected: list[str], capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    assert not out.exists(), f"bad input left {sorted(p.name for p in out.rglob('*'))} in {out}"


@pytest.mark.parametrize("build, expected", CASES.values(), ids=CASES.keys())
def test_bad_input_exits_2_naming_it_and_writes_nothing(inputs, capsys, build, expected):
    out = inputs.tmp / "runs"
    assert_refused([str(build(inputs)), "--out", str(out)], out, expected, capsys)


def test_out_under_a_regular_file_exits_2_naming_it(inputs, capsys):
    blocker = inputs.file("not-a-folder", "x")
    out = blocker / "runs"
    assert_refused([str(inputs.recipe()), "--out", str(out)], out, [f"--out {str(out)!r}", "Not a directory"],
                   capsys)
    assert blocker.read_text() == "x"


class Stopped(Exception):
    """Raised in place of the first stage: the test needs the pipeline's start only."""


def stop(*args) -> None:
    raise Stopped


def test_rows_without_text_pair_or_label_are_dropped_counted_and_logged(inputs, capsys, monkeypatch):
    import compress.pipeline
    from compress.core.data import DataConfig, load_dataset

    good = [r | {"pair": "p"} for r in sentiment_rows(60)]
    data = good + [{"text": "", "label": "pos", "movie": "m1", "pair": "p"},
                   {"text": "fine", "label": None, "movie": "m1", "pair": "p"},
                   {"text": "fine", "label": "pos", "movie": "m1", "pair": None},
                   {"text": "NA", "label": "pos", "movie": "m1", "pair": "None"}]  # words, not missing values
    path = inputs.file("pairs.csv", data)
    cfg = DataConfig(source=str(path), text_pair_column="pair", split={"group_column": "movie"})
    ds = load_dataset(cfg, seed=0)
    assert ds.dropped == {"text": 1, "text_pair": 1, "label": 1}
    everything = ds.train + ds.dev + ds.test
    assert len(everything) == 61 and "nan" not in {e.text_pair for e in everything}
    assert {(e.text, e.text_pair) for e in everything} >= {("NA", "None")}

    # the pipeline's "data" line says what was left out; stop it right after (a stage would train)
    monkeypatch.setattr(compress.pipeline, "run_step", stop)
    recipe = inputs.recipe(data={"source": str(path), "text_pair_column": "pair"})
    with pytest.raises(Stopped):
        main([str(recipe), "--out", str(inputs.tmp / "runs")])
    assert "rows left out: 1 without text, 1 without text_pair, 1 without label" in capsys.readouterr().err


def test_jsonl_labels_keep_their_spelling_when_a_row_has_none(tmp_path):
    from compress.core.data import DataConfig, load_dataset

    path = tmp_path / "d.jsonl"
    lines = [{"text": f"t{i}", "label": i % 2} for i in range(40)] + [{"text": "x", "label": None}]
    path.write_text("\n".join(map(json.dumps, lines)))
    ds = load_dataset(DataConfig(source=str(path)), seed=0)
    assert ds.labels == ["0", "1"] and ds.dropped == {"label": 1}


def test_split_column_and_split_files_give_the_users_splits(tmp_path):
    from compress.core.data import DataConfig, load_dataset

    data = [r | {"fold": ("train", "train", "dev", "test")[i % 4]} for i, r in enumerate(sentiment_rows(80))]
    pd.DataFrame(data).to_csv(tmp_path / "all.csv", index=False)
    by_column = load_dataset(DataConfig(source=str(tmp_path / "all.csv"), split={"column": "fold"}), seed=0)
    assert (len(by_column.train), len(by_column.dev), len(by_column.test)) == (40, 20, 20)
    assert [e.text for e in by_column.dev] == [r["text"] for r in data if r["fold"] == "dev"]  # file order
    files = {}
    for split in ("train", "dev", "test"):
        files[split] = str(tmp_path / f"{split}.csv")
        pd.DataFrame([r for r in data if r["fold"] == split]).to_csv(files[split], index=False)
    by_file = load_dataset(DataConfig(source=files), seed=1)  # the seed plays no part in the user's splits
    assert (by_file.train, by_file.dev, by_file.test) == (by_column.train, by_column.dev, by_column.test)
    assert by_file.source == f"train {files['train']}, dev {files['dev']}, test {files['test']}"


def test_steps_carry_the_architecture_they_make(inputs):
    from compress.recipe import load_recipe

    # albertize makes an ALBERT of one shared layer, which prune takes; prune takes an ALBERT source too
    assert load_recipe(inputs.recipe([ALBERTIZE, {"name": "p", "type": "prune", "heads": 0.5}]))
    assert load_recipe(inputs.recipe([{"name": "p", "type": "prune", "heads": 0.5}], model=inputs.albert))
