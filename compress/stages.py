"""Importing a stage module registers it. Adding a stage: one file, one line here."""
from compress import distill, finetune, prune, qat, quantize, vocab  # noqa: F401
from export import edge, mobile, onnx, tensorrt  # noqa: F401
