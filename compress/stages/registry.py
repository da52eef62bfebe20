"""Every stage, registered: a stage registers itself (compress.core.stage.register) when its module is imported,
and this module imports them all, so whoever reads the table (the recipe's schema, the report's sections) imports
this and sees every stage. A new stage's module is listed here once."""
from compress.stages import distill, finetune, prune, qat, quantize, search, vocab_prune  # noqa: F401  (register)
from export import edge, mobile, onnx, tensorrt  # noqa: F401  (register)
