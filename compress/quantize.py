"""quantize: ONNX FP32 -> INT8. One config, one verb; each method is a function in METHODS.

Methods share one signature so static PTQ, accuracy-aware search and QAT plug in beside
`dynamic` without touching the pipeline.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

from pydantic import Field

from compress.artifact import Artifact
from compress.stage import Context, StageResult, StepConfig, register
from export.parity import compare_logits
from runtimes.ort_runtime import OrtRuntime


class QuantizeConfig(StepConfig):
    type: Literal["quantize"] = "quantize"
    method: Literal["dynamic"] = "dynamic"
    per_channel: bool = Field(True, description="One scale per output channel of each weight.")
    parity_examples: int = Field(256, ge=1)
    quantize_embeddings: bool = Field(True, description="INT8 embedding lookups (Gather / EmbedLayerNormalization).")

# ONNX Runtime's dynamic mode quantizes every op in its IntegerOpsRegistry, the embedding lookups included
# (Gather, and EmbedLayerNormalization -> QEmbedLayerNormalization; uint8, one scale per table).
EMBEDDING_OPS = ("Gather", "EmbedLayerNormalization")


def dynamic_int8(cfg: QuantizeConfig, parent: Artifact, ctx: Context, out: Path) -> dict:
    """INT8 weights, activations quantized on the fly: no calibration data needed."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    ops = [op for op in IntegerOpsRegistry if cfg.quantize_embeddings or op not in EMBEDDING_OPS]
    quantize_dynamic(
        parent.file("model"), out / "model.onnx", per_channel=cfg.per_channel, weight_type=QuantType.QInt8,
        op_types_to_quantize=ops,
        # The transformer optimizer leaves some weights without type info; without this the quantizer stops with
        # "Unable to find data type for weight_name".
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return {"per_channel": cfg.per_channel, "quantize_embeddings": cfg.quantize_embeddings}


METHODS: dict[str, Callable[[QuantizeConfig, Artifact, Context, Path], dict]] = {"dynamic": dynamic_int8}


@register(QuantizeConfig, accepts=("onnx",), produces="onnx")
def quantize(cfg: QuantizeConfig, parent: Artifact, ctx: Context, out: Path) -> StageResult:
    from transformers import AutoConfig

    from compress.models import load_tokenizer

    details = METHODS[cfg.method](cfg, parent, ctx, out)
    tokenizer = load_tokenizer(parent.path)
    tokenizer.save_pretrained(out)
    AutoConfig.from_pretrained(parent.path).save_pretrained(out)
    parity = compare_logits(OrtRuntime(parent.file("model")).run, OrtRuntime(out / "model.onnx").run, tokenizer,
                            ctx.data.dev[: cfg.parity_examples], ctx.recipe.data.max_length)
    ctx.log.info("%s: %s INT8 agrees with FP32 on %.1f%% of %d dev predictions", cfg.name, cfg.method,
                 100 * parity["prediction_agreement"], parity["examples"])
    return StageResult("onnx", {"model": "model.onnx"},
                       {"method": cfg.method, "precision": "int8", "parity_vs_fp32": parity, **details})
