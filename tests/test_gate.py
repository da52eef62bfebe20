"""The gate fails on a drop beyond the limit and on any missing figure; it never passes by default."""
from __future__ import annotations

import json

from compress.gate import main, violations


def report(rows, base=0.85):
    return {"baseline": {"artifact": "teacher", "accuracy": base}, "rows": rows}


def row(name, acc, backend="ort-cpu", status="measured"):
    return {"artifact": name, "backend": backend, "status": status, "accuracy": acc}


def test_within_limit_passes_and_beyond_fails_naming_artifact_drop_and_limit():
    r = report([row("teacher", 0.85, "torch-cpu"), row("int8", 0.845), row("tiny", 0.80)])
    found = violations(r, max_drop=1.0)
    assert len(found) == 1
    assert "tiny on ort-cpu" in found[0] and "5.000 points" in found[0] and "limit is 1.0" in found[0]
    assert violations(r, max_drop=1.0, artifacts=["int8"]) == []


def test_each_artifact_can_have_its_own_limit():
    r = report([row("int8", 0.84), row("small", 0.837)])  # 1.0 and 1.3 points down
    assert violations(r, max_drop=1.0, artifacts={"int8": 1.0, "small": 1.5}) == []
    found = violations(r, max_drop=5.0, artifacts={"int8": 0.5, "small": 1.5})  # the mapping's limits, not 5.0
    assert len(found) == 1 and "int8 on ort-cpu" in found[0] and "limit is 0.5" in found[0]


def test_missing_figures_fail():
    assert violations(report([row("int8", None)]), 1.0) == ["int8 on ort-cpu: accuracy missing"]
    assert "no measured accuracy" in violations(report([row("int8", 0.9, status="not measured")]), 1.0)[0]
    assert "no measured accuracy" in violations(report([], base=None), 1.0)[0]
    assert violations(report([row("teacher", 0.85)]), 1.0, artifacts=["ghost"]) == [
        "ghost: no measured accuracy in the report"]


def test_unmeasured_gpu_rows_do_not_fail_when_another_row_is_measured():
    r = report([row("int8", 0.85), row("int8", None, "ort-cuda", "not measured")])
    assert violations(r, 1.0) == []


def tagger_report(rows, base=0.85):
    """A token-classification report: rows and baseline scored by entity F1."""
    return {"metric": "entity_f1", "baseline": {"artifact": "teacher", "metric": "entity_f1", "score": base},
            "rows": [r | {"metric": "entity_f1", "score": r.pop("accuracy")} for r in rows]}


def test_a_tagger_is_judged_by_entity_f1_and_the_messages_say_so():
    found = violations(tagger_report([row("int8", 0.8380)], base=0.8500), 1.0)
    assert found == ["int8 on ort-cpu: entity_f1 0.8380 is 1.200 points below the baseline 0.8500; the limit is 1.0"]
    assert violations(tagger_report([row("int8", 0.845)]), 1.0) == []
    assert violations(tagger_report([row("int8", None)]), 1.0) == ["int8 on ort-cpu: entity_f1 missing"]
    assert violations(tagger_report([], base=None), 1.0) == ["baseline 'teacher' has no measured entity_f1"]
    assert violations(tagger_report([]), 1.0, artifacts=["ghost"]) == ["ghost: no measured entity_f1 in the report"]
    mixed = tagger_report([row("int8", 0.85)])
    mixed["rows"][0]["metric"] = "accuracy"  # a row scored by another metric is not comparable, never a pass
    assert violations(mixed, 1.0) == ["int8 on ort-cpu: its score is accuracy, the baseline is entity_f1; one cannot "
                                      "be judged by the other"]


def test_cli_exit_codes(tmp_path, capsys):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report([row("int8", 0.80)])))
    assert main([str(path), "--max-drop", "1.0"]) == 1
    assert "GATE FAILED: int8 on ort-cpu" in capsys.readouterr().err
    assert main([str(path), "--max-drop", "6.0"]) == 0
    assert main([str(tmp_path / "missing.json"), "--max-drop", "1"]) == 2


def test_a_failed_row_fails_the_gate_with_its_reason_even_beside_a_measured_one():
    failed = {**row("int8", None, "ort-cuda", "failed"), "reason": "RuntimeError: CUDA out of memory"}
    found = violations(report([row("int8", 0.85), failed]), 1.0)
    assert found == ["int8 on ort-cuda: its benchmark failed (RuntimeError: CUDA out of memory); there is no "
                     "accuracy to judge"]
    base_failed = {**row("teacher", None, "torch-cpu", "failed"), "reason": "the benchmark process died"}
    found = violations(report([base_failed], base=None), 1.0)
    assert found[0] == "baseline 'teacher' has no measured accuracy" and "process died" in found[1]


def judged_row(name, acc, supports=(50, 50), backend="torch-cpu"):
    """A measured row with the per-class supports chance is read from (the classes' shares of test)."""
    per_class = {f"c{i}": {"precision": 0, "recall": 0, "f1": 0, "support": n} for i, n in enumerate(supports)}
    return row(name, acc, backend) | {"per_class": per_class}


def chance_report(rows):
    return {"baseline": {"artifact": "teacher", "backend": "torch-cpu", "accuracy": rows[0]["accuracy"]}, "rows": rows}


def test_a_baseline_at_chance_fails_the_gate_unless_the_recipe_expects_it():
    at_chance = chance_report([judged_row("teacher", 0.505), judged_row("int8", 0.50, backend="ort-cpu")])
    found = violations(at_chance, 1.0)
    assert found == ["baseline 'teacher' is at chance on test: accuracy 0.5050 against 0.5000 for always answering "
                     "its most frequent class (at most 1.00 points above it); no drop against it can show a loss, so "
                     "nothing is judged (train it longer or check the labels; gate.allow_chance_baseline: true if a "
                     "model at chance is expected)"]
    assert violations(at_chance, 1.0, allow_chance_baseline=True) == []
    assert violations(chance_report([judged_row("teacher", 0.52)]), 1.0) == []  # 2 points above: it learned


def test_chance_is_the_majority_share_so_one_class_for_everything_is_at_chance_on_imbalanced_data_too():
    from compress.core.evaluate import at_chance

    def metrics(acc, supports):
        return judged_row("m", acc, supports)

    assert at_chance(metrics(0.90, (90, 10)))  # answers the majority class for everything
    assert at_chance(metrics(0.10, (90, 10)))  # answers the minority class for everything
    assert at_chance(metrics(0.905, (90, 10))) and not at_chance(metrics(0.92, (90, 10)))
    # the margin is at most a tenth of the room above chance: on a 99% majority a model need not be perfect
    assert at_chance(metrics(0.9905, (990, 10))) and not at_chance(metrics(0.995, (990, 10)))
    assert at_chance(metrics(0.34, (34, 33, 33))) and not at_chance(metrics(0.40, (34, 33, 33)))
    tagger = {"metric": "entity_f1", "score": 0.0, "per_class": {"LOC": {"support": 12}}}
    assert "0.0000 for finding no entity" in at_chance(tagger)
    assert not at_chance(tagger | {"score": 0.2})
    assert at_chance({"accuracy": 0.5}) is None  # no supports (a row measured on a device): not judged


def test_a_tagger_finding_nothing_fails_the_gate_as_at_chance():
    rows = [r | {"metric": "entity_f1", "score": r.pop("accuracy")} for r in
            [judged_row("teacher", 0.0), judged_row("int8", 0.0, backend="ort-cpu")]]
    report = {"metric": "entity_f1", "rows": rows,
              "baseline": {"artifact": "teacher", "backend": "torch-cpu", "metric": "entity_f1", "score": 0.0}}
    found = violations(report, 1.0)
    assert len(found) == 1 and "entity F1 0.0000 against 0.0000 for finding no entity" in found[0]
    assert violations(report, 1.0, allow_chance_baseline=True) == []


def test_min_score_is_an_absolute_floor_for_the_baseline_and_the_gated_artifacts():
    r = chance_report([judged_row("teacher", 0.85), judged_row("int8", 0.845, backend="ort-cpu"),
                       judged_row("other", 0.70, backend="ort-cpu")])
    assert violations(r, 1.0, ["int8"], min_score=0.8) == []
    assert violations(r, 1.0, ["int8"], min_score=0.846) == [
        "int8 on ort-cpu: accuracy 0.8450 is below the gate's min_score 0.846"]
    assert violations(r, 1.0, ["int8"], min_score={"teacher": 0.86}) == [
        "teacher on torch-cpu: accuracy 0.8500 is below the gate's min_score 0.86"]
    assert violations(r, 20.0, ["other"], min_score={"other": 0.7}) == []  # at the floor is not below it


def test_a_report_of_a_failed_run_never_passes_the_gate(tmp_path, capsys):
    r = report([row("teacher", 0.85)]) | {"failure": {"step": "int8", "exit_code": 1, "reason": "parity 0.5"}}
    assert violations(r, 1.0) == ["the run failed at step int8: parity 0.5"]
    path = tmp_path / "report.json"
    path.write_text(json.dumps(chance_report([judged_row("teacher", 0.50)])))
    assert main([str(path), "--max-drop", "1.0"]) == 1
    assert "is at chance on test" in capsys.readouterr().err
    assert main([str(path), "--max-drop", "1.0", "--allow-chance-baseline"]) == 0
    assert main([str(path), "--max-drop", "1.0", "--allow-chance-baseline", "--min-score", "0.6"]) == 1
    assert main([str(path), "--max-drop", "1.0", "--min-score", "60"]) == 2
