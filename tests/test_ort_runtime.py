"""OrtRuntime's CPU session settings, on one-node graphs built here."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from runtimes.ort_runtime import OrtRuntime


def scale_by_1e_minus_10(path):
    """z = x * 1e-10: from x = 1e-30 it makes 1e-40, a denormal float32."""
    graph = helper.make_graph([helper.make_node("Mul", ["x", "s"], ["z"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(np.array(1e-10, dtype=np.float32), "s")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_cpu_sessions_flush_denormals_while_they_run_and_only_then(tmp_path):
    """Padded attention makes denormals that x86 computes slowly (see denormals_flushed); a flushed run gives
    0 where a plain session keeps 1e-40, and the thread is back to keeping denormals after the call."""
    path = scale_by_1e_minus_10(tmp_path / "scale.onnx")
    x = np.full((1, 4), 1e-30, dtype=np.float32)
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert (plain > 0).all()
    assert (OrtRuntime(path, threads=1).run({"x": x}) == 0).all()
    assert np.float32(1e-39) * np.float32(1.0) > 0
