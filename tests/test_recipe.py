"""Bad input is refused before any work, with exit code 2 and a message naming the problem."""
from __future__ import annotations

import re

import pytest
import yaml

from compress.core.errors import CompressError
from compress.recipe import load_recipe
from compress.run import main
from tests.conftest import write_recipe

STEPS = [{"name": "teacher", "type": "finetune", "epochs": 1}]


def run_bad(tmp_path, capsys, recipe) -> str:
    out = tmp_path / "runs"
    assert main([str(recipe), "--out", str(out)]) == 2
    assert not out.exists(), "nothing may be written for an invalid recipe"
    return capsys.readouterr().err


def test_misspelled_key_names_the_field(tmp_path, tiny_bert, tiny_csv, capsys):
    recipe = write_recipe(tmp_path, tiny_bert, tiny_csv, [{"name": "teacher", "type": "finetune", "epohcs": 1}])
    err = run_bad(tmp_path, capsys, recipe)
    assert "steps[0].epohcs" in err and "Extra inputs are not permitted" in err


def test_wrong_type_and_out_of_range_name_field_and_value(tmp_path, tiny_bert, tiny_csv, capsys):
    recipe = write_recipe(tmp_path, tiny_bert, tiny_csv, [{"name": "teacher", "type": "finetune", "epochs": "many",
                                                          "learning_rate": 5}])
    err = run_bad(tmp_path, capsys, recipe)
    assert "steps[0].epochs" in err and "'many'" in err
    assert "steps[0].learning_rate" in err and "(got 5)" in err


def test_missing_data_file(tmp_path, tiny_bert, capsys):
    err = run_bad(tmp_path, capsys, write_recipe(tmp_path, tiny_bert, tmp_path / "nope.csv", STEPS))
    assert "data.source" in err and "nope.csv" in err


def test_checkpoint_without_weights(tmp_path, tiny_bert, tiny_csv, capsys):
    empty = tmp_path / "ckpt"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_bert / "config.json").read_text())
    err = run_bad(tmp_path, capsys, write_recipe(tmp_path, empty, tiny_csv, STEPS))
    assert "model.source" in err and "no weights" in err


def test_pickle_weights_need_explicit_opt_in(tmp_path, tiny_bert, tiny_csv, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text((tiny_bert / "config.json").read_text())
    (ckpt / "pytorch_model.bin").write_bytes(b"")
    err = run_bad(tmp_path, capsys, write_recipe(tmp_path, ckpt, tiny_csv, STEPS))
    assert "allow_pickle" in err


def test_unknown_stage_and_bad_references(tmp_path, tiny_bert, tiny_csv):
    for steps, expected in [
        ([{"name": "a", "type": "sharpen"}], "steps[0]"),
        ([{"name": "a", "type": "finetune"}, {"name": "a", "type": "export"}], "duplicate"),
        ([{"name": "a", "type": "export", "from": "later"}], "not an earlier step"),
        ([{"name": "a", "type": "quantize"}], "takes ('onnx',)"),
    ]:
        with pytest.raises(CompressError, match=re.escape(expected)):
            load_recipe(write_recipe(tmp_path, tiny_bert, tiny_csv, steps))


def test_gate_must_name_steps(tmp_path, tiny_bert, tiny_csv):
    recipe = write_recipe(tmp_path, tiny_bert, tiny_csv, STEPS, gate={"baseline": "nope"})
    with pytest.raises(CompressError, match="gate: 'nope' is not a step name"):
        load_recipe(recipe)


def test_benchmark_artifacts_must_name_steps_and_keep_the_baseline(tmp_path, tiny_bert, tiny_csv):
    steps = STEPS + [{"name": "onnx", "type": "export"}]
    for benchmark, expected in [
        ({"artifacts": ["teacher", "typo"]}, "benchmark.artifacts: 'typo' is not a step name"),
        ({"artifacts": ["onnx"]}, "benchmark.artifacts leaves out ['teacher']"),
    ]:
        with pytest.raises(CompressError, match=re.escape(expected)):
            load_recipe(write_recipe(tmp_path, tiny_bert, tiny_csv, steps, benchmark=benchmark))
    assert load_recipe(write_recipe(tmp_path, tiny_bert, tiny_csv, steps, benchmark={"artifacts": ["teacher"]}))


def test_not_a_mapping(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(["a", "b"]))
    with pytest.raises(CompressError, match="mapping"):
        load_recipe(path)


def test_shipped_recipes_validate():
    from pathlib import Path

    for path in sorted(Path(__file__).parent.parent.glob("recipes/*.yaml")):
        assert load_recipe(path).steps, path


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, tiny_bert, tiny_csv, capsys):
    recipe = write_recipe(tmp_path, tiny_bert, tiny_csv, STEPS + [{"name": "onnx", "type": "export"}])
    assert main([str(recipe), "--dry-run", "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "00-teacher: finetune <- source" in out and "01-onnx: export <- teacher" in out
    assert not (tmp_path / "runs").exists()


ONNX_STEPS = [{"name": "onnx", "type": "export"}]


def test_prune_recovery_refuses_a_name_or_input_it_would_ignore(tmp_path, tiny_bert, tiny_csv, capsys):
    steps = [{"name": "p", "type": "prune", "heads": 0.25, "iterations": 2, "recovery": {"from": "teacher"}}]
    err = run_bad(tmp_path, capsys, write_recipe(tmp_path, tiny_bert, tiny_csv, steps))
    assert "steps[0].recovery.from" in err and "Extra inputs are not permitted" in err


def test_parity_keys_old_flat_names_are_aliases_of_the_parity_section(tmp_path, tiny_bert, tiny_csv):
    def parity(step: dict):
        return load_recipe(write_recipe(tmp_path, tiny_bert, tiny_csv, [{"name": "onnx", "type": "export", **step}])
                           ).steps[0].parity

    assert parity({}).max_logit_diff == 1e-3 and parity({}).examples == 256  # the export stage's own default
    assert parity({"parity_tolerance": 0.01, "parity_examples": 8}) == parity({"parity": {"max_logit_diff": 0.01,
                                                                                         "examples": 8}})
    assert parity({"parity": {"examples": 8}}).max_logit_diff == 1e-3  # one key given, the others keep the defaults
    with pytest.raises(CompressError, match=r"steps\[0\].*parity_tolerance.*parity\.max_logit_diff"):
        parity({"parity_tolerance": 0.01, "parity": {"max_logit_diff": 0.02}})
    with pytest.raises(CompressError, match=r"steps\[0\]\.parity\.min_agreement"):
        parity({"parity": {"min_agreement": 2}})


def test_quantize_method_picks_its_config_and_defaults_to_dynamic(tmp_path, tiny_bert, tiny_csv, capsys):
    def step(**keys):
        steps = ONNX_STEPS + [{"name": "int8", "type": "quantize", **keys}]
        return load_recipe(write_recipe(tmp_path, tiny_bert, tiny_csv, steps)).steps[1]

    assert type(step()).__name__ == "DynamicConfig" and step().parity.min_agreement == 0.9
    assert type(step(method="static", calibration="entropy")).__name__ == "StaticConfig"
    assert step(method="accuracy-aware", max_accuracy_drop=0.5).settings()["calibration"] == "minmax"
    with pytest.raises(CompressError, match=r"steps\[1\]: method must be one of \['dynamic', 'static', "
                                            r"'accuracy-aware', 'optimum-dynamic'\] \(got 'kl'\)"):
        step(method="kl")
    with pytest.raises(CompressError, match=r"steps\[1\]\.bogus: Extra inputs are not permitted"):
        step(method="static", bogus=1)
