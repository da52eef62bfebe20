"""The spine on tiny models: a recipe runs end to end, resumes, and refuses bad input cleanly."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from compress.core.artifact import Artifact
from compress.run import main
from tests.conftest import TINY_TRAINING, tiny_config, write_recipe, write_tokenizer

STEPS = [
    {"name": "teacher", "type": "finetune", **TINY_TRAINING},
    {"name": "onnx", "type": "export"},
    {"name": "int8", "type": "quantize", "method": "dynamic"},
]


def test_recipe_runs_end_to_end_then_resumes_without_work(tmp_path, tiny_bert, tiny_csv):
    recipe = write_recipe(tmp_path, tiny_bert, tiny_csv, STEPS)
    out = tmp_path / "runs"
    assert main([str(recipe), "--out", str(out)]) == 0
    run = out / "tiny"
    report = json.loads((run / "report.json").read_text())
    rows = {(r["artifact"], r["backend"]): r for r in report["rows"]}
    assert rows[("teacher", "torch-cpu")]["accuracy"] >= 0.8  # the cue words make this easy: training happened
    assert rows[("onnx", "ort-cpu")]["accuracy"] == pytest.approx(rows[("teacher", "torch-cpu")]["accuracy"])
    assert rows[("int8", "ort-cpu")]["size_bytes"] < rows[("onnx", "ort-cpu")]["size_bytes"]
    assert Artifact.load(run / "01-onnx").metrics["parity"]["max_abs_logit_diff"] < 1e-3
    assert "| int8 | ort-cpu | int8 |" in (run / "report.md").read_text()

    stamps = {p.name: (p / "manifest.json").stat().st_mtime_ns for p in run.glob("0*")}
    assert main([str(recipe), "--out", str(out)]) == 0
    assert {p.name: (p / "manifest.json").stat().st_mtime_ns for p in run.glob("0*")} == stamps
    assert json.loads((run / "report.json").read_text())["rows"] == report["rows"]


def test_changed_step_reruns_it_and_its_descendants_only(tmp_path, tiny_bert, tiny_csv):
    out = tmp_path / "runs"
    assert main([str(write_recipe(tmp_path, tiny_bert, tiny_csv, STEPS)), "--out", str(out)]) == 0
    before = {p.name: Artifact.load(p).hash for p in (out / "tiny").glob("0*")}
    teacher_row = out / "tiny" / "benchmarks" / "teacher.torch-cpu.json"
    measured_at = teacher_row.stat().st_mtime_ns
    changed = STEPS[:2] + [{**STEPS[2], "per_channel": False}]
    # Measuring fewer artifacts changes no figure, so the teacher's cached row is reused.
    benchmark = {**yaml.safe_load(write_recipe(tmp_path, tiny_bert, tiny_csv, STEPS).read_text())["benchmark"],
                 "artifacts": ["teacher", "int8"]}
    recipe = write_recipe(tmp_path, tiny_bert, tiny_csv, changed, benchmark=benchmark)
    assert main([str(recipe), "--out", str(out)]) == 0
    after = {p.name: Artifact.load(p).hash for p in (out / "tiny").glob("0*")}
    assert after["00-teacher"] == before["00-teacher"] and after["01-onnx"] == before["01-onnx"]
    assert after["02-int8"] != before["02-int8"]
    rows = json.loads((out / "tiny" / "report.json").read_text())["rows"]
    assert {r["artifact"] for r in rows} == {"teacher", "int8"}
    assert teacher_row.stat().st_mtime_ns == measured_at


def test_interrupted_stage_leaves_no_complete_folder_and_resumes(tmp_path, tiny_bert, tiny_csv, monkeypatch):
    from compress.core import stage

    recipe = write_recipe(tmp_path, tiny_bert, tiny_csv, STEPS)
    out = tmp_path / "runs"
    real = stage.STAGES["export"]

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setitem(stage.STAGES, "export", stage.StageSpec(real.config, interrupted, real.accepts, real.produces))
    with pytest.raises(KeyboardInterrupt):
        main([str(recipe), "--out", str(out)])
    run = out / "tiny"
    assert Artifact.load(run / "00-teacher") is not None
    assert not (run / "01-onnx").exists() and not (run / "01-onnx.partial").exists()
    teacher_stamp = (run / "00-teacher" / "manifest.json").stat().st_mtime_ns

    monkeypatch.setitem(stage.STAGES, "export", real)
    assert main([str(recipe), "--out", str(out)]) == 0
    assert (run / "00-teacher" / "manifest.json").stat().st_mtime_ns == teacher_stamp
    assert Artifact.load(run / "02-int8") is not None


def test_gate_failure_exits_nonzero_naming_artifact(tmp_path, tiny_bert, tiny_csv, capsys):
    # An untrained copy of the model as a second "teacher" branch: its accuracy must fall below a 0-point budget.
    # (It is at chance: allow_chance_baseline lets it through fine-tuning, so that the gate is what judges it.)
    steps = [STEPS[0], {"name": "onnx", "type": "export"},
             {"name": "untrained", "type": "finetune", "from": "source", "epochs": 1, "learning_rate": 1e-9,
              "force": True, "min_steps": 0}]
    recipe = write_recipe(tmp_path, tiny_bert, tiny_csv, steps,
                          gate={"baseline": "teacher", "max_accuracy_drop": 0.0, "allow_chance_baseline": True})
    code = main([str(recipe), "--out", str(tmp_path / "runs")])
    log = (tmp_path / "runs" / "tiny" / "run.log").read_text()
    assert code == 1
    assert "GATE FAILED: untrained on torch-cpu" in log


def test_a_stage_gives_the_same_weights_whatever_ran_before_it(tmp_path, tiny_csv):
    """The classification head is drawn when a headless encoder is loaded: seeded per stage, a resumed run and
    a run from scratch fine-tune the same model."""
    from transformers import BertModel

    encoder = tmp_path / "encoder"
    BertModel(tiny_config("bert")).save_pretrained(encoder)
    write_tokenizer(encoder)
    recipe = write_recipe(tmp_path, encoder, tiny_csv, [{"name": "teacher", "type": "finetune", **TINY_TRAINING}])
    assert main([str(recipe), "--out", str(tmp_path / "a")]) == 0
    torch.rand(1000)  # whatever ran earlier in this process
    assert main([str(recipe), "--out", str(tmp_path / "b")]) == 0
    weights = [(tmp_path / run / "tiny" / "00-teacher" / "model.safetensors").read_bytes() for run in ("a", "b")]
    assert weights[0] == weights[1]
