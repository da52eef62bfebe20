"""INT8 methods on a tiny BERT: static QDQ calibrations, accuracy-aware fallback, the Optimum reference, QAT."""
from __future__ import annotations

import onnx
import pytest

from compress.artifact import Artifact
from compress.run import main
from runtimes.ort_runtime import OrtRuntime
from tests.conftest import sentiment_rows, write_recipe

# The source below is already trained for the labels, so this step keeps it as is.
TEACHER = {"name": "teacher", "type": "finetune"}
ONNX = {"name": "onnx", "type": "export"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert) -> tuple:
    """(checkpoint, csv): the tiny BERT trained once on the tiny sentiment data, so INT8 has predictions to keep."""
    import pandas as pd

    folder = tmp_path_factory.mktemp("trained")
    csv = folder / "reviews.csv"
    pd.DataFrame(sentiment_rows(240)).to_csv(csv, index=False)
    steps = [{"name": "teacher", "type": "finetune", "epochs": 4, "batch_size": 16, "learning_rate": 3e-3,
              "force": True}]
    assert main([str(write_recipe(folder, tiny_bert, csv, steps, benchmark={"backends": ["torch-cpu"]})),
                 "--out", str(folder / "runs")]) == 0
    return folder / "runs" / "tiny" / "00-teacher", csv


def op_counts(path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def int8_initializers(path) -> int:
    return sum(t.data_type == onnx.TensorProto.INT8 for t in onnx.load(str(path)).graph.initializer)


def test_static_calibrations_give_qdq_models_within_parity(tmp_path, trained):
    steps = [TEACHER, ONNX,
             {"name": "minmax", "type": "quantize", "from": "onnx", "method": "static", "calibration": "minmax",
              "calibration_samples": 64, "parity_min_agreement": 0.9},
             {"name": "entropy", "type": "quantize", "from": "onnx", "method": "static", "calibration": "entropy",
              "activation_type": "int8", "symmetric_activations": True, "parity_min_agreement": 0.9},
             {"name": "percentile", "type": "quantize", "from": "onnx", "method": "static",
              "calibration": "percentile", "percentile": 99.99, "start_from": "fused", "per_channel": False,
              "parity_min_agreement": 0.9},
             {"name": "matmul-only", "type": "quantize", "from": "onnx", "method": "static", "op_types": ["MatMul"],
              "preprocess": False}]
    out = tmp_path / "runs"
    assert main([str(write_recipe(tmp_path, *trained, steps)), "--out", str(out)]) == 0
    run = out / "tiny"
    for folder in ("02-minmax", "03-entropy", "04-percentile", "05-matmul-only"):
        art = Artifact.load(run / folder)
        ops = op_counts(art.file("model"))
        assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0, folder
        assert art.metrics["quantized_nodes"] > 0
        assert art.metrics["parity_vs_fp32"]["prediction_agreement"] >= 0.9
        assert int8_initializers(art.file("model")) > 0  # weights stored as INT8, not FP32 behind a Q/DQ pair
        OrtRuntime(art.file("model"))  # loads in ONNX Runtime
    assert Artifact.load(run / "03-entropy").metrics["calibration"] == "entropy"
    assert Artifact.load(run / "04-percentile").metrics["percentile"] == 99.99
    # op_types: only MatMul nodes consume dequantized tensors when only MatMul is asked for
    assert "Gemm" not in {n.op_type for n in _consumers_of_dq(Artifact.load(run / "05-matmul-only").file("model"))}
    assert "Gemm" in {n.op_type for n in _consumers_of_dq(Artifact.load(run / "02-minmax").file("model"))}


def _consumers_of_dq(path) -> list:
    graph = onnx.load(str(path)).graph
    dq = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return [n for n in graph.node if n.op_type != "QuantizeLinear" and dq & set(n.input)]


def test_parity_tolerance_is_enforced(tmp_path, trained, capsys):
    steps = [TEACHER, ONNX, {"name": "int8", "type": "quantize", "method": "static", "parity_max_logit_diff": 1e-9}]
    code = main([str(write_recipe(tmp_path, *trained, steps)), "--out", str(tmp_path / "runs")])
    assert code == 1
    assert "> parity_max_logit_diff 1e-09" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tiny" / "02-int8").exists()


@pytest.mark.parametrize("step, message", [
    ({"method": "dynamic", "calibration": "entropy"}, "['calibration'] do not apply to method 'dynamic'"),
    ({"method": "static", "max_accuracy_drop": 0.5}, "['max_accuracy_drop'] do not apply to method 'static'"),
    ({"method": "accuracy-aware"}, "needs max_accuracy_drop"),
    ({"method": "static", "op_types": ["MatMul", "Tokenize"]}, "cannot quantize op types ['Tokenize']"),
    ({"method": "static", "percentile": 99.9}, "percentile applies to calibration 'percentile'"),
    ({"method": "static", "calibration": "kl"}, "steps[2].calibration"),
])
def test_bad_quantize_settings_are_refused_before_running(tmp_path, trained, capsys, step, message):
    steps = [TEACHER, ONNX, {"name": "int8", "type": "quantize", **step}]
    assert main([str(write_recipe(tmp_path, *trained, steps)), "--out", str(tmp_path / "runs")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
