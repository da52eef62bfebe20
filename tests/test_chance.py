"""A model at chance never goes green: fine-tuning that ends at chance on dev stops the run there (exit 1, with what
to try) before any later step runs, unless the recipe says chance is expected; then the gate passes with a warning."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import yaml

from compress.run import main
from tests.conftest import TINY_TRAINING, sentiment_rows, write_recipe
from tests.test_ner_stages import TRAIN, save_encoder, tagged_sentences

STEPS = [{"name": "teacher", "type": "finetune", **TINY_TRAINING}, {"name": "onnx", "type": "export"}]


def shuffled_csv(folder: Path) -> Path:
    """The tiny sentiment texts with labels drawn at random, three positive to one negative: nothing to learn but
    the prior, so the model answers "pos" for everything (at chance, though 75% accurate)."""
    rng = random.Random(1)
    rows = [r | {"label": "pos" if rng.random() < 0.75 else "neg"} for r in sentiment_rows(240)]
    path = folder / "shuffled.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_a_teacher_at_chance_stops_the_run_before_the_later_steps(tmp_path, tiny_bert, capsys):
    recipe = write_recipe(tmp_path, tiny_bert, shuffled_csv(tmp_path), STEPS, gate={"max_accuracy_drop": 1.0})
    assert main([str(recipe), "--out", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "stage failed: teacher: the fine-tuned model is at chance on dev: accuracy" in err
    assert "for always answering its most frequent class" in err
    assert "Try more steps (min_steps, epochs), another learning_rate (now 0.003), or check the labels" in err
    run = tmp_path / "runs" / "tiny"
    assert not list(run.glob("0*"))  # neither the teacher nor the export: nothing made from a model at chance
    report = json.loads((run / "report.json").read_text())
    assert report["failure"]["step"] == "teacher" and report["rows"] == []
    assert "Run FAILED at step teacher (exit 1)" in (run / "report.md").read_text()


def test_allow_chance_baseline_lets_it_through_with_the_warning(tmp_path, tiny_bert):
    gate = {"max_accuracy_drop": 1.0, "allow_chance_baseline": True}
    recipe = write_recipe(tmp_path, tiny_bert, shuffled_csv(tmp_path), STEPS, gate=gate)
    assert main([str(recipe), "--out", str(tmp_path / "runs")]) == 0
    run = tmp_path / "runs" / "tiny"
    report = json.loads((run / "report.json").read_text())
    assert report["warnings"][0].startswith("the baseline teacher is at chance: test accuracy")
    assert {r["artifact"] for r in report["rows"] if r["status"] == "measured"} == {"teacher", "onnx"}
    log = (run / "run.log").read_text()
    assert "teacher: at chance on dev" in log and "gate passed" in log
    from compress.gate import violations  # the same report judged without it: the gate refuses the baseline

    assert "baseline 'teacher' is at chance on test" in violations(report, 1.0)[0]


def test_a_tagger_that_finds_no_entity_stops_the_run(tmp_path, capsys):
    """Tags drawn at random, nine words in ten O: the tagger learns to answer O everywhere, entity F1 0."""
    rng = random.Random(0)
    lines = []
    for sentence in tagged_sentences(240):
        lines += [f"{w} NN O {'B-PER' if rng.random() < 0.1 else 'O'}" for w, _ in sentence] + [""]
    conll = tmp_path / "random.conll"
    conll.write_text("\n".join(lines))
    path = write_recipe(tmp_path, save_encoder(tmp_path / "encoder", "bert"), conll,
                        [{"name": "teacher", "type": "finetune", **TRAIN}, {"name": "onnx", "type": "export"}],
                        task="token-classification", gate={"max_accuracy_drop": 1.0})
    raw = yaml.safe_load(path.read_text())
    raw["data"] = {"source": str(conll), "max_length": 24}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main([str(path), "--out", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err
    assert "teacher: the fine-tuned model is at chance on dev: entity F1 0.0000 against 0.0000 for finding no " \
           "entity" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "tiny" / "01-onnx").exists()
