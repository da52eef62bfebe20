"""ort_mobile: ONNX -> ONNX Runtime's `.ort` format for phones, with its reduced-operator config.

`convert_onnx_models_to_ort` writes the flatbuffer model and `*.required_operators.config`,
the list a reduced-size ONNX Runtime build (build.sh --include_ops_by_config) needs. The
`.ort` file is loaded directly by ONNX Runtime, so the result is an ordinary onnx-kind
artifact that the benchmark measures on ort-cpu like any other.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field

from compress.artifact import Artifact
from compress.errors import StageFailed
from compress.stage import Context, StageResult, StepConfig, register
from export.parity import compare_logits
from runtimes.ort_runtime import OrtRuntime


class OrtMobileConfig(StepConfig):
    type: Literal["ort_mobile"] = "ort_mobile"
    optimization_style: Literal["Fixed", "Runtime"] = Field(
        "Fixed", description="Fixed: optimizations baked in for the conversion machine's kernels; Runtime: applied on the device.")
    type_reduction: bool = Field(True, description="Also record the element types each operator needs (smaller builds).")
    parity_examples: int = Field(256, ge=1)
    min_agreement: float = Field(0.99, ge=0, le=1, description="Share of dev predictions that must match the ONNX model.")


@register(OrtMobileConfig, accepts=("onnx",), produces="onnx")
def ort_mobile(cfg: OrtMobileConfig, parent: Artifact, ctx: Context, out: Path) -> StageResult:
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort
    from transformers import AutoConfig, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=out) as tmp:  # the converter takes a folder and converts all it holds
        os.link(parent.file("model"), Path(tmp) / "model.onnx")
        convert_onnx_models_to_ort(Path(tmp), out, [OptimizationStyle[cfg.optimization_style]],
                                   enable_type_reduction=cfg.type_reduction)
    model, configs = out / "model.ort", sorted(out.glob("required_operators*.config"))
    if not model.is_file() or not configs:
        raise StageFailed(f"{cfg.name}: the converter wrote no model.ort + operator config "
                          f"(files: {sorted(p.name for p in out.iterdir())})")
    config = configs[0]
    tokenizer = AutoTokenizer.from_pretrained(parent.path)
    tokenizer.save_pretrained(out)
    AutoConfig.from_pretrained(parent.path).save_pretrained(out)
    parity = compare_logits(OrtRuntime(parent.file("model")).run, OrtRuntime(model).run, tokenizer,
                            ctx.data.dev[: cfg.parity_examples], ctx.recipe.data.max_length)
    ctx.log.info("%s: .ort %.1f MB (ONNX %.1f MB), agrees with ONNX on %.1f%% of %d dev predictions", cfg.name,
                 model.stat().st_size / 1e6, parent.file("model").stat().st_size / 1e6,
                 100 * parity["prediction_agreement"], parity["examples"])
    if parity["prediction_agreement"] < cfg.min_agreement:
        raise StageFailed(f"{cfg.name}: .ort predictions agree with ONNX on {parity['prediction_agreement']:.3f} "
                          f"< min_agreement {cfg.min_agreement}")
    return StageResult("onnx", {"model": model.name, "operators": config.name},
                       {"precision": parent.metrics.get("precision", "fp32"), "parity_vs_onnx": parity,
                        "ort_bytes": model.stat().st_size, "onnx_bytes": parent.file("model").stat().st_size,
                        "optimization_style": cfg.optimization_style})
