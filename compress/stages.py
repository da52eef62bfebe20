"""Importing a stage module registers it. Adding a stage: one file, one line here."""
from compress import finetune, quantize  # noqa: F401
from export import edge, mobile, onnx, tensorrt  # noqa: F401
