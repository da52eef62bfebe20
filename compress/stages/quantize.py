"""quantize: ONNX FP32 -> INT8. One step type, one verb; `method` picks the variant (compress/stages/
quantize_methods.py, quantize_accuracy_aware.py), each a config class that knows how to apply itself.

The recipe keeps one `type: quantize` step; its keys are validated against the chosen method's class alone
(a key of another method is an error that says so), and `method` defaults to `dynamic`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag

from compress.core.artifact import Artifact
from compress.core.models import copy_model_files
from compress.core.parity import compare_logits
from compress.core.stage import Context, StageResult, register
from compress.stages.quantize_accuracy_aware import AccuracyAwareConfig
from compress.stages.quantize_methods import DynamicConfig, OptimumDynamicConfig, QuantizeBase, StaticConfig
from runtimes.ort_runtime import OrtRuntime

METHODS = (DynamicConfig, StaticConfig, AccuracyAwareConfig, OptimumDynamicConfig)


def _method(step: Any) -> str | None:
    if isinstance(step, dict):
        return step.get("method", "dynamic")
    return getattr(step, "method", None)


QuantizeConfig = Annotated[
    Union[tuple(Annotated[m, Tag(m.model_fields["method"].default)] for m in METHODS)],
    Discriminator(_method, custom_error_type="unknown_method",
                  custom_error_message=f"method must be one of {[m.model_fields['method'].default for m in METHODS]}"),
]


@register(QuantizeConfig, accepts=("onnx",), produces="onnx")
def quantize(cfg: QuantizeBase, parent: Artifact, ctx: Context, out: Path) -> StageResult:
    details = cfg.apply(parent, ctx, out)
    tokenizer = copy_model_files(parent.path, out)
    parity = compare_logits(OrtRuntime(parent.file("model")).run, OrtRuntime(out / "model.onnx").run,
                            tokenizer, ctx.data.dev[: cfg.parity.examples], ctx.max_length)
    ctx.log.info("%s: %s INT8 agrees with FP32 on %.1f%% of %d dev predictions (max |logit diff| %.3g)", cfg.name,
                 cfg.method, 100 * parity["prediction_agreement"], parity["examples"], parity["max_abs_logit_diff"])
    cfg.judge_parity(parity, ctx)
    return StageResult("onnx", {"model": "model.onnx"},
                       {"method": cfg.method, "precision": "int8", "parity_vs_fp32": parity, **details})
