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
