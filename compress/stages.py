"""Importing a stage module registers it. Adding a stage: one file, one line here."""
from compress import finetune, qat, quantize  # noqa: F401
from export import onnx  # noqa: F401
