"""tensorrt: ONNX -> TensorRT engine (FP32, FP16 or INT8) with one dynamic-shape profile and a timing cache.

Built from the plain export `model.raw.onnx`: TensorRT cannot parse ONNX Runtime's fused
contrib ops. Precision is put into the ONNX before TensorRT sees it, because TensorRT 11
removed BuilderFlag.FP16/INT8 and IInt8 calibrators and builds only strongly typed networks:
  fp16 - weights and activations converted with ONNX Runtime's float16 converter (I/O kept);
  int8 - a Q/DQ model: taken as is when the input already has QuantizeLinear nodes, else made
         by ONNX Runtime's static quantizer calibrated on a seeded sample of the training split
         (compress.core.calibration, as static PTQ and QAT), ranges saved as `calibration.json`.
         A Q/DQ input must be symmetric INT8 (zero point 0): TensorRT builds nothing else.
The prepared ONNX is held to `parity` against the input on ONNX Runtime (CPU) first, then the engine against
ONNX Runtime. The timing and calibration caches live in the run's `cache/tensorrt/` (the stage's own folder is
emptied on every build) and are copied into the artifact. Without tensorrt or a GPU the recipe is refused at
validation, before anything runs.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from compress.core.artifact import Artifact, digest
from compress.core.calibration import calibration_examples, calibration_reader, onnx_input_names
from compress.core.config import RecipeShapes, Strict
from compress.core.errors import CompressError
from compress.core.models import copy_model_files, load_tokenizer
from compress.core.parity import ParityChecked, compare_logits
from compress.core.stage import Context, StageResult, register
from compress.core.task import Example, encode
from runtimes.ort_runtime import OrtRuntime
from runtimes.tensorrt_runtime import tensorrt_missing


class ShapeRange(Strict):
    min: int = Field(ge=1)
    opt: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> ShapeRange:
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"need min <= opt <= max, got {self.min}, {self.opt}, {self.max}")
        return self


def covering(key: str, given: ShapeRange | None, fed: dict[str, int], opt: int | None = None) -> ShapeRange:
    """The `key` range that takes every size in `fed` (recipe field -> largest size it feeds). An explicit `given`
    is checked: ValueError names the fields it is too small for. Unset, it runs from 1 to the largest fed size,
    with `opt` (default: that size) as the shape TensorRT tunes for."""
    largest = max(fed.values())
    if given is None:
        return ShapeRange(min=1, opt=opt or largest, max=largest)
    beyond = [f"{field} {size}" for field, size in fed.items() if size > given.max]
    if beyond:
        raise ValueError(f"{key}.max {given.max} is smaller than {', '.join(beyond)}: the engine would refuse those "
                         f"shapes; raise {key}.max or leave {key} unset (sized to what the recipe feeds)")
    return given


class TensorRTConfig(ParityChecked):
    """`parity`: the prepared ONNX must predict as the input does, and the engine as ONNX Runtime does."""

    PARITY_DEFAULTS = {"min_agreement": 0.98}
    type: Literal["tensorrt"] = "tensorrt"
    precision: Literal["fp32", "fp16", "int8"] = "fp16"
    batch: ShapeRange | None = Field(None, description="Batch profile; default min 1, opt 1, max the largest batch "
                                     "the recipe feeds (benchmark.batch_sizes, benchmark.eval_batch_size).")
    sequence: ShapeRange | None = Field(None, description="Token-length profile; default min 1, opt/max the longest "
                                        "sequence the recipe feeds (data.max_length, benchmark.sequence_lengths).")
    calibration_examples: int = Field(512, ge=1, description="Seeded random training examples that calibrate "
                                      "INT8 ranges.")
    workspace_mib: int = Field(2048, ge=64)

    @model_validator(mode="after")
    def _tensorrt_here(self) -> TensorRTConfig:
        reason = tensorrt_missing()
        if reason:
            raise ValueError(f"a tensorrt step cannot run on this machine: {reason}")
        return self

    def profile(self, shapes: RecipeShapes) -> tuple[ShapeRange, ShapeRange]:
        """(batch, sequence) ranges that take every shape in `shapes`: the explicit ones, checked, or sized to them."""
        return (covering("batch", self.batch, shapes.batch_sizes, opt=1),
                covering("sequence", self.sequence, shapes.sequence_lengths))

    def check_shapes(self, shapes: RecipeShapes) -> None:
        """An engine refuses shapes outside its profile, so the benchmark's batches and lengths must fit. Unset
        ranges are sized here, into the config: the step's hash then covers them, and a longer benchmark sequence
        rebuilds the engine instead of reusing one that cannot take it."""
        self.batch, self.sequence = self.profile(shapes)


def has_qdq(path: Path) -> bool:
    import onnx

    return any(n.op_type == "QuantizeLinear" for n in onnx.load(str(path), load_external_data=False).graph.node)


def check_symmetric_int8(path: Path, parent: Artifact) -> None:
    """TensorRT's explicit quantization takes only symmetric INT8 (zero point 0). ONNX Runtime's default static
    quantization (asymmetric uint8 activations) is refused by TensorRT only at build time, far from the step that
    made it, so it is refused here, naming that step and the settings that fix it."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {t.name: t for t in graph.initializer}
    constants |= {n.output[0]: a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"}
    for node in (n for n in graph.node if n.op_type == "QuantizeLinear"):
        name = node.input[2] if len(node.input) > 2 else ""
        if not name:
            found = "uint8 (no zero point given: ONNX's default)"
        elif name not in constants:
            continue  # computed at run time: nothing to read here
        else:
            zero = numpy_helper.to_array(constants[name])
            if constants[name].data_type == onnx.TensorProto.INT8 and not zero.any():
                continue
            found = f"{zero.dtype} with zero point {next((v for v in zero.ravel() if v), 0)}"
        raise CompressError(f"{parent.name}: {path.name} quantizes {node.input[0]!r} to {found}; TensorRT builds "
                            f"only symmetric int8 (zero point 0): quantize with `activation_type: int8, "
                            f"symmetric_activations: true`")


def prepare_onnx(precision: str, parent: Artifact, tokenizer, calibration: list[Example], max_length: int,
                 out: Path, cache: Path | None = None) -> Path:
    """The ONNX whose types say the precision TensorRT must build; runs on ONNX Runtime too. INT8 ranges are read
    from `cache` when it exists (no calibration then), else calibrated and kept there; a copy lands in `out`."""
    raw = parent.file("raw") if "raw" in parent.files else parent.file("model")
    qdq = has_qdq(raw)
    if qdq:
        check_symmetric_int8(raw, parent)
    if precision == "fp32" or (precision == "int8" and qdq):
        os.link(raw, out / "network.onnx")
    elif precision == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(raw)), keep_io_types=True), str(out / "network.onnx"))
    else:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        # Symmetric INT8 (zero point 0) on the matrix products: what TensorRT's explicit quantization accepts.
        cache = cache or out / "calibration.json"
        reader = None if cache.is_file() else calibration_reader(tokenizer, calibration, max_length,
                                                                 onnx_input_names(raw))
        quantize_static(raw, out / "network.onnx", reader,
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"], per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=cache,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        if cache != out / "calibration.json":
            shutil.copyfile(cache, out / "calibration.json")
    return out / "network.onnx"


def cache_files(cfg: TensorRTConfig, parent: Artifact, ctx: Context) -> tuple[Path, Path]:
    """(timing cache, calibration cache) in the run's cache folder, which outlives the stage's own. Timings hold
    for one TensorRT version on one GPU model; ranges for one input model, sample and padding length."""
    import tensorrt as trt
    import torch

    folder = ctx.run_dir / "cache" / "tensorrt"
    folder.mkdir(parents=True, exist_ok=True)
    device = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{trt.__version__}-{torch.cuda.get_device_name(0)}")
    key = digest(parent.hash, cfg.calibration_examples, ctx.seed, ctx.max_length)
    return folder / f"timing-{device}.cache", folder / f"calibration-{key}.json"


@register(TensorRTConfig, accepts=("onnx",), produces="tensorrt-engine")
def build_tensorrt(cfg: TensorRTConfig, parent: Artifact, ctx: Context, out: Path) -> StageResult:
    from runtimes.tensorrt_engine import TrtEngine, build_engine

    max_length = ctx.max_length
    # What this stage feeds; a recipe's check_shapes has sized the profile to the benchmark's shapes already.
    batch, seq = cfg.profile(RecipeShapes({"data.max_length": max_length},
                                          {"benchmark.eval_batch_size": ctx.eval_batch_size}, {}))
    timing_cache, calibration_cache = cache_files(cfg, parent, ctx)
    tokenizer = load_tokenizer(parent.path)
    dev = ctx.data.dev[: cfg.parity.examples]
    calibration = calibration_examples(ctx.data.train, cfg.calibration_examples, ctx.seed)
    network = prepare_onnx(cfg.precision, parent, tokenizer, calibration, max_length, out, calibration_cache)
    reference = OrtRuntime(parent.file("model")).run
    onnx_parity = compare_logits(reference, OrtRuntime(network).run, tokenizer, dev, max_length)
    cfg.parity.enforce(onnx_parity, cfg.name, f"prepared {cfg.precision} ONNX vs the input on ONNX Runtime")
    names = list(encode(tokenizer, dev[:1], max_length))
    shapes = {n: ((batch.min, seq.min), (batch.opt, seq.opt), (batch.max, seq.max)) for n in names}
    log = build_engine(network, out / "model.engine", shapes, timing_cache, workspace_mib=cfg.workspace_mib)
    shutil.copyfile(timing_cache, out / "timing.cache")
    (out / "build.log").write_text("\n".join(log) + "\n")
    parity = compare_logits(reference, TrtEngine(out / "model.engine").run, tokenizer, dev, max_length,
                            batch_size=min(32, batch.max))
    ctx.log.info("%s: %s engine %.1f MB; agrees with ONNX Runtime on %.1f%% of %d dev predictions (max |diff| %.3g)",
                 cfg.name, cfg.precision, (out / "model.engine").stat().st_size / 1e6,
                 100 * parity["prediction_agreement"], parity["examples"], parity["max_abs_logit_diff"])
    cfg.parity.enforce(parity, cfg.name, f"TensorRT {cfg.precision} vs ONNX Runtime")
    copy_model_files(parent.path, out)
    files = {"model": "model.engine", "onnx": network.name, "timing_cache": "timing.cache", "build_log": "build.log"}
    if (out / "calibration.json").is_file():
        files["calibration_cache"] = "calibration.json"
    return StageResult("tensorrt-engine", files, {
        "precision": cfg.precision, "parity_vs_ort": parity, "prepared_onnx_parity": onnx_parity,
        "profile": {"batch": batch.model_dump(), "sequence": seq.model_dump()}})
