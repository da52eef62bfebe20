"""INT8 methods on a tiny BERT: static QDQ calibrations, accuracy-aware fallback, the Optimum reference, QAT."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from compress.core.artifact import Artifact
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
              "force": True, "min_steps": 0}]
    assert main([str(write_recipe(folder, tiny_bert, csv, steps, benchmark={"backends": ["torch-cpu"]})),
                 "--out", str(folder / "runs")]) == 0
    return folder / "runs" / "tiny" / "00-teacher", csv


def op_counts(path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def int8_initializers(path) -> int:
    """INT8 matrices stored in the file (weights; zero points are INT8 too, but not matrices)."""
    return sum(t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2 for t in onnx.load(str(path)).graph.initializer)


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
              "preprocess": False},
             {"name": "entropy-like-minmax", "type": "quantize", "from": "onnx", "method": "static",
              "calibration": "entropy", "calibration_samples": 64, "parity_min_agreement": 0.9}]
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
    # Entropy calibration really searches: with all else equal it clips activations where MinMax does not.
    minmax, entropy = (activation_scales(Artifact.load(run / f).file("model")) for f in ("02-minmax",
                                                                                          "06-entropy-like-minmax"))
    assert minmax.keys() == entropy.keys()
    assert any(entropy[k] < minmax[k] * 0.99 for k in minmax)


def activation_scales(path) -> dict[str, float]:
    """Scale of each QuantizeLinear that quantizes an activation (not an initializer), by its input's name."""
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    return {n.input[0]: float(numpy_helper.to_array(inits[n.input[1]]).reshape(-1)[0])
            for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


def _consumers_of_dq(path) -> list:
    graph = onnx.load(str(path)).graph
    dq = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return [n for n in graph.node if n.op_type != "QuantizeLinear" and dq & set(n.input)]


def test_parity_tolerance_is_enforced(tmp_path, trained, capsys):
    steps = [TEACHER, ONNX, {"name": "int8", "type": "quantize", "method": "static", "parity_max_logit_diff": 1e-9}]
    code = main([str(write_recipe(tmp_path, *trained, steps)), "--out", str(tmp_path / "runs")])
    assert code == 1
    assert "> parity.max_logit_diff 1e-09" in capsys.readouterr().err
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


def loaded(path, tmp_path):
    """The graph ONNX Runtime runs for `path`, with the initializers it computed at load."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / f"{path.parent.name}.loaded.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath)


def test_4bit_embedding_tables_shrink_the_file_and_load_as_the_8bit_model(tmp_path, trained, capsys):
    """embedding_bits 4 stores each table in 4 bits (the tiny tables save less than the expanding nodes cost, so the
    test counts tensor bytes, not the file's); what ONNX Runtime runs is the 8-bit graph, with tables on the 8-bit
    grid within half a 4-bit step (plus the 8-bit rounding) of the 8-bit model's, zero points kept."""
    from onnx import numpy_helper

    from compress.core.embeddings4 import PACKED, embedding_tables
    from compress.core.size import size_split

    steps = [TEACHER, ONNX, {"name": "int8", "type": "quantize", "from": "onnx"},
             {"name": "int4-tables", "type": "quantize", "from": "onnx", "embedding_bits": 4,
              "embedding_block_size": 16}]
    assert main([str(write_recipe(tmp_path, *trained, steps)), "--out", str(tmp_path / "runs")]) == 0
    run = tmp_path / "runs" / "tiny"
    eight, four = (Artifact.load(run / folder) for folder in ("02-int8", "03-int4-tables"))
    tables = embedding_tables(onnx.load(str(eight.file("model"))))
    assert len(tables) == 3  # word, position, token type: fused into QEmbedLayerNormalization
    ran8, ran4 = (loaded(a.file("model"), tmp_path) for a in (eight, four))
    assert [n.op_type for n in ran4.graph.node] == [n.op_type for n in ran8.graph.node]  # the chain is folded
    values8, values4 = ({t.name: numpy_helper.to_array(t) for t in m.graph.initializer} for m in (ran8, ran4))
    for name, zero_point in tables.items():
        zero = int(values8[zero_point])
        before, after = (v[name].astype(np.int32) - zero for v in (values8, values4))
        blocks = before.reshape(before.shape[0], -1, 16)
        half_step = np.abs(blocks).max(-1, keepdims=True) / 14
        assert (np.abs(after - before).reshape(blocks.shape) <= half_step + 1).all(), name
        assert (after[before == 0] == 0).all() and (after != before).any(), name
    stored = {t.name: t for t in onnx.load(str(four.file("model"))).graph.initializer}
    assert 2 * sum(np.prod(stored[name + PACKED].dims) for name in tables) == sum(values8[n].size for n in tables)
    split8, split4 = (size_split(a)["embeddings"] for a in (eight, four))
    # 4 bits a value and an FP16 scale per 16 (0.625 of the 8-bit bytes), plus the expansion's fixed cost: the shared
    # [256, 2] INT8 lookup and each table's 45 bytes of chain constants (block and table shapes, scale 1, zero point)
    fixed = 256 * 2 + 45 * len(tables)
    assert split4["parameters"] == split8["parameters"] and split4["bytes"] < 0.7 * split8["bytes"] + fixed
    assert four.metrics["embedding_block_size"] == 16


def test_a_4bit_block_that_does_not_divide_a_table_s_rows_fails_the_step(tmp_path, trained, capsys):
    steps = [TEACHER, ONNX, {"name": "int4-tables", "type": "quantize", "embedding_bits": 4,
                             "embedding_block_size": 64}]  # the tiny BERT's rows are 32 wide
    assert main([str(write_recipe(tmp_path, *trained, steps)), "--out", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err
    assert "int4-tables: embedding_bits 4" in err and "blocks of 64 (embedding_block_size)" in err
    assert not (tmp_path / "runs" / "tiny" / "02-int4-tables").exists()


@pytest.fixture(scope="module")
def fragile(tmp_path_factory, trained) -> tuple:
    """(checkpoint, csv): the trained tiny BERT rewritten to compute the same function with one huge activation
    channel (value channel 0 of layer 0 times 1000, the matching input column of the attention output
    projection divided by 1000). The per-tensor activation scale it stretches rounds every other channel to
    zero, so full static INT8 breaks while FP32 is unchanged: the case accuracy-aware mode exists for."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(trained[0])
    layer = model.bert.encoder.layer[0].attention
    with torch.no_grad():
        layer.self.value.weight[0] *= 1000
        layer.self.value.bias[0] *= 1000
        layer.output.dense.weight[:, 0] /= 1000
    folder = tmp_path_factory.mktemp("fragile")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(trained[0]).save_pretrained(folder)
    return folder, trained[1]


def aware_step(**settings) -> dict:
    return {"name": "aware", "type": "quantize", "method": "accuracy-aware", "max_accuracy_drop": 0.0,
            "sensitivity_examples": 16, **settings}


def test_accuracy_aware_returns_sensitive_nodes_to_fp32_until_goal_holds(tmp_path, fragile):
    # On 24 easy dev examples accuracy barely moves, so the goal that bites is the logit tolerance, which
    # the search treats as part of the goal (drop within budget AND parity within tolerance).
    steps = [TEACHER, ONNX, aware_step(parity_max_logit_diff=0.05)]
    assert main([str(write_recipe(tmp_path, *fragile, steps)), "--out", str(tmp_path / "runs")]) == 0
    art = Artifact.load(tmp_path / "runs" / "tiny" / "02-aware")
    m = art.metrics
    assert m["attempts"][0]["fp32_nodes"] == 0 and m["attempts"][0]["parity_failures"]  # full INT8 misses
    assert m["budget_met"] and m["dev_score_drop_points"] <= 0.0 and m["fp32_nodes"]
    assert m["parity_vs_fp32"]["max_abs_logit_diff"] <= 0.05
    assert m["fp32_nodes"] == [r["node"] for r in m["sensitivity"][: len(m["fp32_nodes"])]]  # most sensitive first
    assert "layer.0/attention" in m["fp32_nodes"][0]  # the node fed by the planted outlier channel
    assert int8_weight_inputs(art.file("model"), m["fp32_nodes"]) == {n: [] for n in m["fp32_nodes"]}
    assert m["quantized_nodes"] > 0


def int8_weight_inputs(path, names: list[str]) -> dict[str, list[str]]:
    """For each named node, the inputs it reads from a DequantizeLinear of an INT8 initializer (a quantized weight).

    A node left in FP32 must have none. Its activation inputs may still come through a Q/DQ pair: ORT quantizes a
    tensor once for all its consumers, so an FP32 node that shares its input with a quantized one (Q, K and V read
    the same tensor) gets the dequantized copy. Which nodes the search leaves in FP32 depends on the CPU's INT8
    kernels (VNNI or not), so only what holds for every node is asserted."""
    graph = onnx.load(str(path)).graph
    inits = {t.name for t in graph.initializer}
    weights = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    nodes = {n.name: n for n in graph.node}
    return {name: [i for i in nodes[name].input if i in weights] for name in names}


def test_nodes_excluded_from_static_int8_keep_fp32_weights_whichever_are_chosen(tmp_path, trained):
    """The property above for forced choices, not only the search's: each quantizable node alone, and the Q/K/V
    MatMuls of one layer together, which read one shared tensor (the case where an FP32 node gets a DQ input)."""
    import logging

    from compress.core.calibration import calibration_reader, onnx_input_names
    from compress.core.models import load_tokenizer
    from compress.recipe import load_recipe
    from compress.stages.quantize_accuracy_aware import quantizable_nodes
    from compress.stages.quantize_methods import StaticConfig, quantize_qdq

    recipe = write_recipe(tmp_path, *trained, [TEACHER, ONNX])
    assert main([str(recipe), "--out", str(tmp_path / "runs")]) == 0
    onnx_dir = tmp_path / "runs" / "tiny" / "01-onnx"
    source, cache, cfg = onnx_dir / "model.raw.onnx", tmp_path / "calibration.json", StaticConfig(name="int8")
    ctx = load_recipe(recipe).context(tmp_path, logging.getLogger("test"))
    reader = calibration_reader(load_tokenizer(onnx_dir), ctx.data.train[:16], ctx.max_length, onnx_input_names(source))
    quantize_qdq(cfg, source, tmp_path / "all.onnx", cache, reader)  # calibrates once; the ranges are cached
    graph = onnx.load(str(source)).graph
    inits = {t.name for t in graph.initializer}
    nodes = quantizable_nodes(source, cfg.op_types)
    weighted = [n.name for n in graph.node if n.name in nodes and inits & set(n.input)]
    qkv = [n for n in weighted if "layer.0/attention/self/" in n]
    assert len(qkv) == 3 and len(weighted) >= 12
    for fp32 in [[n] for n in nodes] + [qkv]:
        quantize_qdq(cfg, source, tmp_path / "some.onnx", cache, fp32_nodes=fp32)
        found = int8_weight_inputs(tmp_path / "some.onnx", weighted)
        assert all(found[n] == [] for n in fp32 if n in found)  # the excluded keep FP32 weights
        assert all(found[n] for n in weighted if n not in fp32)  # and the check sees the others' INT8 weights


def test_accuracy_aware_keeps_the_closest_model_when_the_goal_is_out_of_reach(tmp_path, fragile):
    steps = [TEACHER, ONNX, aware_step(parity_max_logit_diff=1e-9, max_fp32_nodes=1)]
    assert main([str(write_recipe(tmp_path, *fragile, steps)), "--out", str(tmp_path / "runs")]) == 0
    art = Artifact.load(tmp_path / "runs" / "tiny" / "02-aware")
    m = art.metrics
    assert not m["budget_met"] and len(m["attempts"]) == 2 and len(m["fp32_nodes"]) <= 1
    OrtRuntime(art.file("model"))  # a usable model was saved all the same
    assert "parity.max_logit_diff" in (tmp_path / "runs" / "tiny" / "run.log").read_text()


def test_optimum_reference_is_marked_and_matches_our_dynamic_int8(tmp_path, trained):
    steps = [TEACHER, ONNX, {"name": "ours", "type": "quantize", "method": "dynamic"},
             {"name": "optimum", "type": "quantize", "from": "onnx", "method": "optimum-dynamic"}]
    assert main([str(write_recipe(tmp_path, *trained, steps)), "--out", str(tmp_path / "runs")]) == 0
    run = tmp_path / "runs" / "tiny"
    ref = Artifact.load(run / "03-optimum")
    assert ref.metrics["reference"] == "optimum ORTQuantizer avx512_vnni dynamic"
    assert ref.metrics["parity_vs_fp32"]["prediction_agreement"] >= 0.9
    assert op_counts(ref.file("model")).get("DynamicQuantizeLinear", 0) > 0
    assert sorted(p.name for p in ref.path.glob("*.onnx")) == ["model.onnx"]


def test_qat_trains_through_fake_quant_and_exports_int8_qdq_onnx(tmp_path, trained):
    steps = [TEACHER, {"name": "qat", "type": "qat", "epochs": 1, "batch_size": 16, "learning_rate": 1e-4,
                       "calibration_samples": 32}]
    assert main([str(write_recipe(tmp_path, *trained, steps)), "--out", str(tmp_path / "runs")]) == 0
    run = tmp_path / "runs" / "tiny"
    art = Artifact.load(run / "01-qat")
    m = art.metrics
    assert art.kind == "onnx" and m["precision"] == "int8" and m["fake_quantized_linears"] == 2 * 6 + 2
    assert m["parity_vs_fake_quant"]["prediction_agreement"] >= 0.98
    ops = op_counts(art.file("model"))
    assert ops["DequantizeLinear"] >= 2 * m["fake_quantized_linears"]  # input and weight of each Linear
    assert int8_initializers(art.file("model")) == m["folded_weights"] == m["fake_quantized_linears"]
    assert m["history"][0]["dev_score"] >= 0.9
    row = next(r for r in json.loads((run / "report.json").read_text())["rows"] if r["artifact"] == "qat")
    assert row["status"] == "measured" and row["accuracy"] >= 0.9  # ONNX Runtime runs it, and it still classifies


@pytest.mark.parametrize("reduce_range, low, high", [(True, -64, 63), (False, -128, 127)])
def test_qat_weights_export_on_the_7_bit_grid_when_reduce_range(tmp_path, tiny_bert, reduce_range, low, high):
    """reduce_range keeps every exported INT8 weight in [-64, 63] (no int16 saturation in x86 u8 x s8 kernels
    without VNNI), and preparing the weights for export does not change what the fake-quantized model computes."""
    import numpy as np
    import torch
    from onnx import numpy_helper
    from torch.ao.quantization import disable_observer

    from compress.core.models import load_classifier
    from compress.stages.qat import add_fake_quant, bake_weights, fold_weight_quantizers
    from export.onnx import to_onnx

    model = load_classifier(tiny_bert, ["neg", "pos"]).eval()
    add_fake_quant(model, reduce_range)
    ids = torch.randint(5, model.config.vocab_size, (8, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(input_ids=ids)  # sets the ranges
        model.apply(disable_observer)
        before = model(input_ids=ids).logits
        bake_weights(model)
        assert torch.equal(model(input_ids=ids).logits, before)
    to_onnx(model, {"input_ids": ids[:2].numpy()}, tmp_path / "q.onnx", 17)
    fold_weight_quantizers(tmp_path / "q.onnx")
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "q.onnx")).graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert len(weights) == 2 * 6 + 2
    assert min(w.min() for w in weights) == low and max(np.abs(w).max() for w in weights) >= high
    assert all(w.min() >= low and w.max() <= high for w in weights)
