"""ONNX export helpers that need no model: sharing identical initializers after fusion."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.onnx import share_identical_initializers


def two_layers_with_copied_weights():
    """y = (x @ W) @ W', where W' is a copy of W under another name: what the Attention fusion leaves behind when
    it packs the Q/K/V weights of each application of one shared ALBERT layer."""
    w = np.arange(16, dtype=np.float32).reshape(4, 4) / 16
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"]), helper.make_node("MatMul", ["h", "w1"], ["y"]),
             helper.make_node("Add", ["y", "b"], ["z"])]
    inits = [numpy_helper.from_array(w, "w0"), numpy_helper.from_array(w.copy(), "w1"),
             numpy_helper.from_array(w[0].copy(), "b")]  # same bytes as a row of w, other shape: must stay
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_identical_initializers_become_one_and_outputs_do_not_change():
    model = two_layers_with_copied_weights()
    x = np.ones((1, 4), dtype=np.float32)
    before = run(model, x)
    assert share_identical_initializers(model) == 1
    assert sorted(t.name for t in model.graph.initializer) == ["b", "w0"]
    assert [n.input[1] for n in model.graph.node] == ["w0", "w0", "b"]
    np.testing.assert_array_equal(run(model, x), before)
    assert share_identical_initializers(model) == 0
