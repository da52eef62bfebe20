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

from compress.core.artifact import Artifact
from compress.core.errors import StageFailed
from compress.core.models import copy_model_files
from compress.core.parity import ParityChecked, compare_logits
from compress.core.stage import Context, StageResult, register
from runtimes.ort_runtime import OrtRuntime


class OrtMobileConfig(ParityChecked):
    """`parity`: the .ort model must predict as the ONNX model it was converted from."""

    PARITY_DEFAULTS = {"min_agreement": 0.99}
    type: Literal["ort_mobile"] = "ort_mobile"
    optimization_style: Literal["Fixed", "Runtime"] = Field(
        "Fixed", description="Fixed: optimizations baked in for the conversion machine's kernels; Runtime: applied on the device.")
    type_reduction: bool = Field(True, description="Also record the element types each operator needs (smaller builds).")


@register(OrtMobileConfig, accepts=("onnx",), produces="onnx")
def ort_mobile(cfg: OrtMobileConfig, parent: Artifact, ctx: Context, out: Path) -> StageResult:
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory(dir=out) as tmp:  # the converter takes a folder and converts all it holds
        os.link(parent.file("model"), Path(tmp) / "model.onnx")
        convert_onnx_models_to_ort(Path(tmp), out, [OptimizationStyle[cfg.optimization_style]],
                                   enable_type_reduction=cfg.type_reduction)
    model, configs = out / "model.ort", sorted(out.glob("required_operators*.config"))
    if not model.is_file() or not configs:
        raise StageFailed(f"{cfg.name}: the converter wrote no model.ort + operator config "
                          f"(files: {sorted(p.name for p in out.iterdir())})")
    config = configs[0]
    tokenizer = copy_model_files(parent.path, out)
    parity = compare_logits(OrtRuntime(parent.file("model")).run, OrtRuntime(model).run, tokenizer,
                            ctx.data.dev[: cfg.parity.examples], ctx.max_length)
    ctx.log.info("%s: .ort %.1f MB (ONNX %.1f MB), agrees with ONNX on %.1f%% of %d dev predictions", cfg.name,
                 model.stat().st_size / 1e6, parent.file("model").stat().st_size / 1e6,
                 100 * parity["prediction_agreement"], parity["examples"])
    cfg.parity.enforce(parity, cfg.name, ".ort vs ONNX")
    return StageResult("onnx", {"model": model.name, "operators": config.name},
                       {"precision": parent.metrics.get("precision", "fp32"), "parity_vs_onnx": parity,
                        "ort_bytes": model.stat().st_size, "onnx_bytes": parent.file("model").stat().st_size,
                        "optimization_style": cfg.optimization_style})
