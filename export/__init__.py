"""Artifact -> deployable: ONNX, TensorRT engines, ONNX Runtime mobile, edge bundles."""
