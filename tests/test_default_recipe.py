"""recipes/default.yaml carries over to the user's own stack: their data (a CSV with its own split column), an ALBERT
with a SentencePiece (Unigram) tokenizer, no Optimum, and the Python API.

The default recipe's steps are kept as they are (fine-tune, export, our INT8 beside Optimum's, the search with
`unlabeled: data` and vocabulary pruning, the chosen student's export and INT8, benchmark, gate); what a tiny model
on tiny data needs is changed: its training settings, the search's and gate's budgets (a random tiny model's
dev/test figures move by whole points), and fast benchmark settings.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import compress
from compress.core.errors import CompressError
from compress.run import main
from tests.conftest import TINY_TRAINING, WORDS, save_tiny_model, sentencepiece_albert, sentiment_rows

ROOT = Path(__file__).resolve().parents[1]
FAST = {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3, "group_by_length": True, "min_steps": 0}


def default_recipe(source: Path, data: dict) -> dict:
    """recipes/default.yaml with the user's model and data; sized for a tiny model (see the module docstring)."""
    recipe = yaml.safe_load((ROOT / "recipes" / "default.yaml").read_text())
    recipe["model"]["source"] = str(source)
    recipe["data"] = recipe["data"] | data
    steps = {s["name"]: s for s in recipe["steps"]}
    steps["teacher"].update(TINY_TRAINING, min_steps=80)  # a teacher above chance on the small limits below
    search = steps["small"]
    assert search["distillation"]["unlabeled"] == "data" and "vocabulary" in search  # what this test is about
    search["distillation"].update(FAST)
    search.update(max_accuracy_drop=100, max_minutes=10, sequence_length=16, prune_batches=4,
                  space={"layers": [2, 4], "heads": [0.5], "ffn": [0.75]})  # two shapes: what is tested is the data
    recipe["benchmark"] |= {"backends": ["torch-cpu", "ort-cpu"], "sequence_lengths": [16], "warmup": 1,
                            "min_repeats": 5, "max_seconds": 0.3}
    recipe["gate"]["max_accuracy_drop"] = 100
    return recipe


def write(folder: Path, recipe: dict) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def rows(run: Path) -> dict:
    return {(r["artifact"], r["backend"]): r for r in json.loads((run / "report.json").read_text())["rows"]}


def test_the_default_recipe_runs_on_a_csv_with_its_own_split_column(tmp_path):
    """Only data.source and the column names changed: the CSV's columns are review / sentiment, its splits a
    `fold` column. `unlabeled: data` on it means the training texts (the log says so)."""
    frame = pd.DataFrame(sentiment_rows(240)).rename(columns={"text": "review", "label": "sentiment"})
    frame["fold"] = ["train"] * 160 + ["dev"] * 40 + ["test"] * 40
    frame.drop(columns=["movie"]).to_csv(tmp_path / "mine.csv", index=False)
    source = save_tiny_model(tmp_path / "model", num_hidden_layers=4)
    recipe = default_recipe(source, {"source": str(tmp_path / "mine.csv"), "text_column": "review",
                                     "label_column": "sentiment", "split": {"column": "fold"}})
    assert main([str(write(tmp_path, recipe)), "--out", str(tmp_path / "runs")]) == 0
    run = tmp_path / "runs" / "default"
    log = (run / "run.log").read_text()
    assert "160 train / 40 dev / 40 test" in log
    assert "unlabeled: 'data': " in log and "distillation reads its 160 training texts only" in log
    found = rows(run)
    for name, backend in [("teacher", "torch-cpu"), ("teacher-int8", "ort-cpu"), ("optimum-int8", "ort-cpu"),
                          ("small-int8", "ort-cpu")]:
        assert found[(name, backend)]["status"] == "measured"
    search = json.loads((run / "04-small" / "manifest.json").read_text())["metrics"]["search"]
    assert search["chosen"].startswith("l2-h50-f75")  # the faster of the two (refined: refine_epochs is set)


def test_an_albert_with_a_unigram_tokenizer_goes_through_the_default_recipe(tmp_path, tiny_csv):
    """The search prunes its SentencePiece vocabulary; the chosen student's tokenizer is a smaller Unigram."""
    source = sentencepiece_albert(tmp_path / "albert", [r["text"] for r in sentiment_rows(240)] + WORDS)
    recipe = default_recipe(source, {"source": str(tiny_csv), "limit_train": 120,
                                     "split": {"group_column": "movie"}})
    assert main([str(write(tmp_path, recipe)), "--out", str(tmp_path / "runs")]) == 0
    run = tmp_path / "runs" / "default"
    chosen = json.loads((run / "04-small" / "tokenizer.json").read_text())["model"]
    teacher = json.loads((run / "00-teacher" / "tokenizer.json").read_text())["model"]
    assert chosen["type"] == teacher["type"] == "Unigram" and len(chosen["vocab"]) < len(teacher["vocab"])
    config = json.loads((run / "04-small" / "config.json").read_text())
    assert config["model_type"] == "albert" and config["vocab_size"] == len(chosen["vocab"])
    assert rows(run)[("small-int8", "ort-cpu")]["status"] == "measured"


def test_without_optimum_the_reference_step_is_skipped_and_its_row_says_why(tmp_path, tiny_bert, tiny_csv,
                                                                             monkeypatch):
    """An environment without Optimum (transformers 5, say) still runs the recipe: the optimum-dynamic step and the
    steps built on it are skipped, their rows read "not measured" with the reason, the gate judges the rest."""
    for module in ("optimum", "optimum.onnxruntime", "optimum.onnxruntime.configuration"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    steps = [{"name": "teacher", "type": "finetune", **TINY_TRAINING},
             {"name": "onnx", "type": "export"},
             {"name": "int8", "type": "quantize"},
             {"name": "ref", "type": "quantize", "from": "onnx", "method": "optimum-dynamic"},
             {"name": "ref-mobile", "type": "ort_mobile", "from": "ref"}]
    recipe = {"name": "tiny", "model": {"source": str(tiny_bert)},
              "data": {"source": str(tiny_csv), "max_length": 16, "split": {"group_column": "movie"}},
              "steps": steps, "benchmark": {"backends": ["ort-cpu"], "sequence_lengths": [16], "min_repeats": 5,
                                            "max_seconds": 0.2},
              "gate": {"baseline": "onnx", "max_accuracy_drop": 100, "artifacts": ["int8"]}}
    assert main([str(write(tmp_path, recipe)), "--out", str(tmp_path / "runs")]) == 0
    run = tmp_path / "runs" / "tiny"
    assert not (run / "03-ref").exists() and not (run / "04-ref-mobile").exists()
    found = rows(run)
    assert found[("int8", "ort-cpu")]["status"] == "measured"
    ref, mobile = found[("ref", "ort-cpu")], found[("ref-mobile", "ort-cpu")]
    assert ref["status"] == mobile["status"] == "not measured"
    assert ref["reason"].startswith("step skipped: Optimum is not installed") and "compress[reference]" in ref["reason"]
    assert mobile["reason"].startswith("step skipped: its input 'ref' was skipped: Optimum is not installed")
    assert "ref on ort-cpu: not measured: step skipped: Optimum is not installed" in (run / "report.md").read_text()


def test_run_recipe_is_the_command_in_python(tmp_path, tiny_bert, tiny_csv):
    """compress.run_recipe takes a dict (or a path), returns the report with the gate's verdict, and raises
    CompressError on bad input, as the command exits 2."""
    recipe = {"name": "api", "model": {"source": str(tiny_bert)},
              "data": {"source": str(tiny_csv), "max_length": 16, "split": {"group_column": "movie"}},
              "steps": [{"name": "onnx", "type": "export"}, {"name": "int8", "type": "quantize"}],
              "benchmark": {"backends": ["ort-cpu"], "sequence_lengths": [16], "min_repeats": 5, "max_seconds": 0.2},
              "gate": {"max_accuracy_drop": 100, "artifacts": ["int8"], "allow_chance_baseline": True}}  # untrained
    report = compress.run_recipe(recipe, out=tmp_path / "runs")
    written = json.loads((tmp_path / "runs" / "api" / "report.json").read_text())
    assert {k: v for k, v in report.items() if k != "gate"} == written
    assert report["gate"] == {"passed": True, "violations": [], "limits": "100.0 points"}
    assert {r["artifact"] for r in report["rows"]} == {"onnx", "int8"}
    again = compress.run_recipe(write(tmp_path, recipe), out=tmp_path / "runs")  # a path; every row reused
    assert again["rows"] == report["rows"] and again["gate"] == report["gate"]
    with pytest.raises(CompressError, match=r"recipe \(dict\): invalid recipe\n  steps\[0\]: Input tag 'nope'"):
        compress.run_recipe(recipe | {"steps": [{"name": "x", "type": "nope"}]}, out=tmp_path / "runs")
