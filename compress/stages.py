"""Importing a stage module registers it. Adding a stage: one file, one line here."""
from compress import finetune, quantize  # noqa: F401
from compress import distill  # noqa: F401
from export import onnx  # noqa: F401
