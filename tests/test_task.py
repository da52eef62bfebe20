"""The Task classes: every stage runs on a tiny config of each task through one parametrized recipe, and the
standalone edge runner's own task mapping agrees with them."""
from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from compress.core.errors import CompressError
from compress.core.task import TASKS, Example, task_for, task_headed, task_named
from compress.run import main
from export.edge import RUNNER
from tests.conftest import save_tiny_model, sentiment_rows, write_recipe
from tests.test_ner_stages import TAGS, save_encoder, write_conll

TRAINING = {"epochs": 6, "batch_size": 16, "learning_rate": 3e-3, "warmup_ratio": 0.0, "min_steps": 0}
# Every registered stage but tensorrt (a recipe refuses it where TensorRT is missing: test_tensorrt runs it on a
# fake), on the same tiny recipe whatever the task.
STEPS = [
    {"name": "teacher", "type": "finetune", "force": True, **TRAINING},
    {"name": "pruned", "type": "prune", "heads": 0.5, "ffn": 0.5},
    {"name": "student", "type": "distill", "from": "teacher", "student": {"layer_drop": [1]}, **TRAINING,
     "epochs": 1},
    {"name": "vocab", "type": "vocab_prune", "from": "teacher"},
    {"name": "searched", "type": "search", "from": "teacher", "max_accuracy_drop": 100, "refine_epochs": 1,
     "sequence_length": 16, "space": {"layers": [1], "heads": [0.5], "ffn": [0.5]},
     "distillation": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "loss": {"hidden": 1.0}},
     "quantization": {"parity": {"min_agreement": 0.0}}},
    {"name": "onnx", "type": "export", "from": "teacher"},
    {"name": "int8", "type": "quantize", "method": "dynamic"},
    {"name": "mobile", "type": "ort_mobile", "from": "onnx"},
    {"name": "edge", "type": "edge_bundle", "from": "onnx", "sample_size": 8},
    {"name": "qat", "type": "qat", "from": "teacher", "epochs": 1, "batch_size": 16, "learning_rate": 1e-4,
     "calibration_samples": 16, "parity": {"examples": 16}},
]


def sequence_inputs(folder: Path) -> tuple[Path, dict]:
    """A tiny BERT sentiment classifier and reviews grouped by movie."""
    import pandas as pd

    pd.DataFrame(sentiment_rows(240)).to_csv(folder / "reviews.csv", index=False)
    return save_tiny_model(folder / "model"), {"source": str(folder / "reviews.csv"), "max_length": 16,
                                               "split": {"group_column": "movie"}}


def token_inputs(folder: Path) -> tuple[Path, dict]:
    """A tiny bare BERT encoder and tagged sentences grouped by document."""
    return save_encoder(folder / "model", "bert"), {"source": str(write_conll(folder / "ner.conll")),
                                                     "max_length": 24}


INPUTS = {"sequence-classification": sequence_inputs, "token-classification": token_inputs}


@pytest.mark.parametrize("name", list(TASKS))
def test_every_stage_runs_on_a_tiny_config_of_each_task(name, tmp_path):
    task = task_named(name)
    model, data = INPUTS[name](tmp_path)
    recipe = write_recipe(tmp_path, model, Path(data["source"]), STEPS, task=name)
    recipe.write_text(yaml.safe_dump(yaml.safe_load(recipe.read_text()) | {"data": data}, sort_keys=False))
    assert main([str(recipe), "--out", str(tmp_path / "runs")]) == 0
    report = json.loads((tmp_path / "runs" / "tiny" / "report.json").read_text())
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "tiny").glob("*/manifest.json")]
    assert {m["name"] for m in manifests} >= {s["name"] for s in STEPS}
    rows = [r for r in report["rows"] if r["status"] == "measured"]
    assert {r["artifact"] for r in rows} >= {"teacher", "pruned", "student", "vocab", "searched", "onnx", "int8", "qat"}
    assert all(r["metric"] == task.metric and r["metric_label"] == task.metric_label for r in rows)
    teacher = next(r for r in rows if r["artifact"] == "teacher")
    assert teacher["score"] >= 0.8  # the tiny data are easy: training happened, scored by the task's metric
    trained = {m["name"]: m["metrics"] for m in manifests if "best_dev_score" in m["metrics"]}
    assert trained.keys() >= {"teacher", "student", "qat"}
    assert all(m["metric"] == task.metric for m in trained.values())
    bundle = json.loads((tmp_path / "runs" / "tiny" / "08-edge" / "edge" / "bundle.json").read_text())
    assert bundle["task"] == name


def load_runner():
    spec = importlib.util.spec_from_file_location("edge_runner_copy", RUNNER)
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    return runner


def test_the_edge_runner_scores_each_task_as_its_task_class_does():
    """The runner ships without compress, so it keeps its own mapping: the same tasks, score names and the names
    results give figures (precision: the model's), and on the same predictions the same score."""
    runner = load_runner()
    assert set(runner.SCORERS) == set(TASKS)
    for name, task in TASKS.items():
        assert runner.RESULT_NAMES.get(name, {}) == task.row_names, name
    names = TAGS
    manifest = {"labels": names, "outside": names.index("O")}
    tags = [[1, 3, 4, 0], [4, 1, 4]]  # B-PER I-PER O B-LOC / O B-PER O
    examples = [Example(" ".join(f"w{i}" for i in range(len(t))), tuple(t), None, tuple(f"w{i}" for i in range(len(t))))
                for t in tags]
    guessed = [[1, 4, 4, 0], [4, 1, 4]]
    rows = [{"label": list(t), "words": list(e.words), "first": list(range(len(t)))} for t, e in zip(tags, examples)]
    logits = [np.eye(len(names))[g] for g in guessed]
    cases = {"token-classification": (examples, guessed, rows, logits),
             "sequence-classification": ([Example("a", 0), Example("b", 1), Example("c", 1)], [0, 0, 1],
                                         [{"label": 0}, {"label": 1}, {"label": 1}], list(np.eye(2)[[0, 0, 1]]))}
    for name, (examples, predicted, rows, logits) in cases.items():
        task, labels = TASKS[name], (names if name == "token-classification" else ["neg", "pos"])
        want = task.row_figures(task.score(examples, predicted, labels, parts=False))
        got = runner.sample_scores(rows, logits, {**manifest, "labels": labels, "task": name})
        assert got["metric"] == task.metric and got["metric_label"] == task.metric_label, name
        assert got["score"] == pytest.approx(want["score"]), name
        assert set(got) <= set(want) | {"per_class"}, name


def test_a_checkpoint_or_model_class_names_its_task():
    assert task_headed(["BertForTokenClassification"]).name == "token-classification"
    assert task_headed(["AlbertForSequenceClassification"]).name == "sequence-classification"
    assert task_for({"architectures": None}).name == "sequence-classification"  # a bare encoder: the default
    with pytest.raises(CompressError, match="unknown task 'qa'"):
        task_named("qa")
    assert all(pickle.loads(pickle.dumps(t)) is t for t in TASKS.values())  # one instance, in every process
