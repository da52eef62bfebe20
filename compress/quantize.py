"""quantize: ONNX FP32 -> INT8. One config, one verb; each method is a function in METHODS.

Methods share one signature (they write `out/model.onnx` and return their details), so the
stage around them — tokenizer/config copy and the parity check against FP32 — is written once.
- `dynamic`: INT8 weights, activations quantized at run time (no calibration).
- `static`: ONNX Runtime static INT8 in QDQ format, activation ranges calibrated on train examples.
- `accuracy-aware`: static, then FP32 fallback of the most sensitive nodes until a dev-accuracy
  budget holds (compress/accuracy_aware.py).
- `optimum-dynamic`: Optimum's ORTQuantizer with its avx512_vnni preset: the reference a user
  would otherwise reach for, measured on the same model.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from compress.artifact import Artifact
from compress.data import Example, encode
from compress.errors import CompressError, StageFailed
from compress.stage import Context, StageResult, StepConfig, register
from export.parity import compare_logits
from runtimes.ort_runtime import OrtRuntime

Method = Literal["dynamic", "static", "accuracy-aware", "optimum-dynamic"]
STATIC_FIELDS = {"calibration", "calibration_samples", "percentile", "activation_type", "symmetric_activations",
                 "reduce_range", "op_types", "start_from", "preprocess"}
SEARCH_FIELDS = {"max_accuracy_drop", "sensitivity_examples", "max_fp32_nodes"}
# Fields that only mean something for some methods; setting one for another method is an error, not a no-op.
METHOD_FIELDS = {"dynamic": set(), "optimum-dynamic": set(), "static": STATIC_FIELDS,
                 "accuracy-aware": STATIC_FIELDS | SEARCH_FIELDS}


class QuantizeConfig(StepConfig):
    type: Literal["quantize"] = "quantize"
    method: Method = "dynamic"
    per_channel: bool = Field(True, description="One scale per output channel of each weight.")
    parity_examples: int = Field(256, ge=1)
    quantize_embeddings: bool = Field(True, description="INT8 embedding lookups (Gather / EmbedLayerNormalization).")
    embedding_bits: Literal[8, 4] = Field(8, description="4: embedding tables in 4 bits, one scale per block "
                                          "(ORT GatherBlockQuantized); needs an export with fuse_embeddings: false.")
    embedding_block_size: int = Field(32, ge=16, description="Values per 4-bit scale along the hidden size; a power "
                                      "of two. Smaller blocks: closer to the FP32 table, more scale bytes.")
    parity_min_agreement: float = Field(0.9, ge=0, le=1, description="Least share of dev predictions equal to FP32's.")
    parity_max_logit_diff: float | None = Field(None, gt=0, description="Largest |logit - FP32 logit|; unset: unchecked.")
    # static and accuracy-aware
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_samples: int = Field(256, ge=1, description="Seeded random train examples that set activation ranges.")
    percentile: float = Field(99.999, gt=90, lt=100, description="Kept share of |activation| values (percentile only).")
    activation_type: Literal["uint8", "int8"] = Field("uint8", description="uint8 is what x86 integer kernels want.")
    symmetric_activations: bool = False
    reduce_range: bool = Field(False, description="7-bit weights: avoids int16 overflow on x86 without VNNI.")
    op_types: list[str] = Field(["MatMul", "Gemm"], min_length=1, description="ONNX operator types to quantize.")
    start_from: Literal["raw", "fused"] = Field("raw", description="The plain export, or ORT's fused model.onnx.")
    preprocess: bool = Field(True, description="Run onnxruntime's quant_pre_process (shape inference, folding) first.")
    # accuracy-aware
    max_accuracy_drop: float | None = Field(None, ge=0, description="Points of dev accuracy INT8 may lose vs FP32.")
    sensitivity_examples: int = Field(256, ge=1, description="Dev examples used to rank nodes by sensitivity.")
    max_fp32_nodes: int | None = Field(None, ge=1, description="At most this many nodes go back to FP32.")

    @field_validator("op_types")
    @classmethod
    def _known_op_types(cls, v: list[str]) -> list[str]:
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        unknown = sorted(set(v) - set(QDQRegistry) - set(QLinearOpsRegistry))
        if unknown:
            raise ValueError(f"ONNX Runtime cannot quantize op types {unknown}; it can: {sorted(QDQRegistry)}")
        return v

    @model_validator(mode="after")
    def _fields_fit_method(self) -> QuantizeConfig:
        stray = sorted(self.model_fields_set & (STATIC_FIELDS | SEARCH_FIELDS) - METHOD_FIELDS[self.method])
        if stray:
            raise ValueError(f"{stray} do not apply to method {self.method!r}")
        if "percentile" in self.model_fields_set and self.calibration != "percentile":
            raise ValueError(f"percentile applies to calibration 'percentile', not {self.calibration!r}")
        embedding_fields = sorted({"quantize_embeddings", "embedding_bits", "embedding_block_size"}
                                  & self.model_fields_set)
        if embedding_fields and self.method != "dynamic":
            raise ValueError(f"{embedding_fields} apply to method 'dynamic', not {self.method!r}")
        if "embedding_block_size" in self.model_fields_set and self.embedding_bits != 4:
            raise ValueError("embedding_block_size applies to embedding_bits 4")
        if self.embedding_bits == 4 and not self.quantize_embeddings:
            raise ValueError("embedding_bits 4 needs quantize_embeddings: true")
        if self.embedding_block_size & (self.embedding_block_size - 1):
            raise ValueError(f"embedding_block_size {self.embedding_block_size} is not a power of two")
        if self.method == "accuracy-aware" and self.max_accuracy_drop is None:
            raise ValueError("method 'accuracy-aware' needs max_accuracy_drop (points of dev accuracy)")
        return self


# ONNX Runtime's dynamic mode quantizes every op in its IntegerOpsRegistry, the embedding lookups included
# (Gather, and EmbedLayerNormalization -> QEmbedLayerNormalization; uint8, one scale per table).
EMBEDDING_OPS = ("Gather", "EmbedLayerNormalization")


def dynamic_int8(cfg: QuantizeConfig, parent: Artifact, ctx: Context, out: Path) -> dict:
    """INT8 weights, activations quantized on the fly: no calibration data needed."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    source, four_bit = parent.file("model"), cfg.embedding_bits == 4
    if four_bit:
        source = embeddings_4bit(source, out / "embeddings-4bit.onnx", cfg.embedding_block_size, cfg.name)
    ops = [op for op in IntegerOpsRegistry if cfg.quantize_embeddings and not four_bit or op not in EMBEDDING_OPS]
    quantize_dynamic(
        source, out / "model.onnx", per_channel=cfg.per_channel, weight_type=QuantType.QInt8,
        op_types_to_quantize=ops,
        # The transformer optimizer leaves some weights without type info; without this the quantizer stops with
        # "Unable to find data type for weight_name".
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    if four_bit:
        source.unlink()
    return {"per_channel": cfg.per_channel, "quantize_embeddings": cfg.quantize_embeddings,
            "embedding_bits": cfg.embedding_bits} | ({"embedding_block_size": cfg.embedding_block_size} if four_bit else {})


def embeddings_4bit(source: Path, target: Path, block_size: int, step: str) -> Path:
    """Every Gather over an initializer table -> GatherBlockQuantized: 4-bit symmetric, one FP32 scale per
    `block_size` values of a row. Why: after vocabulary pruning the INT8 word table is still a third of an INT8
    MiniLM; 4 bits halve it and leave room for more vocabulary. ONNX Runtime's weight-only quantizer does the work;
    the fused EmbedLayerNormalization keeps its tables as inputs it cannot rewrite, hence the plain-Gather export."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(source)
    if any(n.op_type == "EmbedLayerNormalization" for n in model.graph.node):
        raise CompressError(f"{step}: embedding_bits 4 needs plain embedding Gathers, but {source} has a fused "
                            "EmbedLayerNormalization: export it with fuse_embeddings: false")
    gather = {"op_types_to_quantize": ("Gather",), "quant_axes": (("Gather", 1),)}
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, bits=4, **gather)
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True, algo_config=config,
                                     **gather)
    with np.errstate(divide="ignore", invalid="ignore"):  # ORT divides by all-zero rows' zero scales, then masks them
        quantizer.process()
    if not any(n.op_type == "GatherBlockQuantized" for n in quantizer.model.model.graph.node):
        raise StageFailed(f"{step}: embedding_bits 4 found no Gather over an embedding table in {source}")
    quantizer.model.save_model_to_file(str(target))
    return target


def calibration_examples(examples: list[Example], n: int, seed: int) -> list[Example]:
    """A seeded random sample: train files are often sorted by label or source."""
    order = np.random.RandomState(seed).permutation(len(examples))[:n]
    return [examples[i] for i in order]


def calibration_reader(tokenizer, examples: list[Example], max_length: int, input_names: list[str]):
    """ORT's CalibrationDataReader, one example per feed padded to `max_length`: the histogram calibrators
    (entropy, percentile) stack every feed's activations, so all must have one shape."""
    from onnxruntime.quantization import CalibrationDataReader

    feeds = [{k: v for k, v in encode(tokenizer, [e], max_length, pad_to_max=True).items() if k in input_names}
             for e in examples]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rewind()

        def get_next(self) -> dict | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(feeds)

        def __len__(self) -> int:
            return len(feeds)

    return Reader()


def static_source(cfg: QuantizeConfig, parent: Artifact, work: Path) -> Path:
    """The FP32 model to quantize: the plain export or the fused one, pre-processed when asked."""
    from onnxruntime.quantization import quant_pre_process

    role = "raw" if cfg.start_from == "raw" else "model"
    if role not in parent.files:
        raise CompressError(f"{cfg.name}.start_from: {parent.name!r} has no plain export (model.raw.onnx); "
                            "use start_from: fused or quantize straight after an export step")
    if not cfg.preprocess:
        return parent.file(role)
    work.mkdir(parents=True, exist_ok=True)
    prepared = work / "preprocessed.onnx"
    # auto_merge: the export's dynamic batch/sequence axes leave symbolic dims the inference must merge.
    quant_pre_process(parent.file(role), prepared, auto_merge=True)
    return prepared


def static_reader(cfg: QuantizeConfig, parent: Artifact, source: Path, ctx: Context):
    """Calibration data: `calibration_samples` seeded-random train examples, tokenized like every other stage."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    names = [i.name for i in ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).get_inputs()]
    examples = calibration_examples(ctx.data.train, cfg.calibration_samples, ctx.recipe.seed)
    return calibration_reader(AutoTokenizer.from_pretrained(parent.path), examples, ctx.recipe.data.max_length, names)


def quantize_qdq(cfg: QuantizeConfig, source: Path, target: Path, cache: Path, reader=None,
                 fp32_nodes: list[str] = ()) -> None:
    """Static QDQ INT8 of `source`. The first call calibrates with `reader` and stores the ranges in `cache`;
    later calls (other FP32 node sets) reuse them and skip calibration."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    extra = {"ActivationSymmetric": cfg.symmetric_activations, "WeightSymmetric": True,
             "DefaultTensorType": 1}  # 1 = FLOAT: the fused model has weights without type info, see dynamic_int8
    if cfg.calibration == "percentile":
        extra["CalibPercentile"] = cfg.percentile
    if cfg.calibration == "entropy" and not cache.exists():
        entropy_ranges(source, reader, cfg.op_types, cache)
    quantize_static(
        source, target, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=cfg.op_types,
        per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
        activation_type={"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[cfg.activation_type],
        weight_type=QuantType.QInt8, nodes_to_exclude=list(fp32_nodes),
        calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[cfg.calibration],
        calibration_cache_path=cache, extra_options=extra,
    )


def entropy_ranges(source: Path, reader, op_types: list[str], cache: Path) -> None:
    """KL-divergence (entropy) ranges from ORT's own calibrator, written where quantize_static reads its cache.

    Why not let quantize_static calibrate: it builds the entropy calibrator with 128 histogram bins and 128
    quantized bins and offers no option to change them, and with equal counts the only candidate threshold is the
    full range, so "entropy" came out byte-identical to MinMax. 2048 bins for 128 quantized ones, as TensorRT's
    entropy calibrator uses, gives the search something to choose from."""
    import tempfile

    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    with tempfile.TemporaryDirectory(prefix="entropy.") as scratch:
        calibrator = create_calibrator(source, op_types, augmented_model_path=str(Path(scratch) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.Entropy,
                                       extra_options={"num_bins": 2048, "num_quantized_bins": 128})
        calibrator.collect_data(reader)
        save_tensors_data(calibrator.compute_data(), cache)
    reader.rewind()


def static_settings(cfg: QuantizeConfig) -> dict:
    """The settings a static model was made with, for its metrics."""
    return cfg.model_dump(include=(STATIC_FIELDS | {"per_channel"})
                          - (set() if cfg.calibration == "percentile" else {"percentile"}))


def quantized_nodes(path: Path) -> int:
    """How many nodes take a dequantized input: the operators that really run on INT8 data."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dq = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return sum(1 for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and dq & set(n.input))


def static_int8(cfg: QuantizeConfig, parent: Artifact, ctx: Context, out: Path) -> dict:
    """Weights and activations INT8 with ranges fixed ahead of time: no run-time range computation."""
    work = out / "work"
    source = static_source(cfg, parent, work)
    work.mkdir(exist_ok=True)
    quantize_qdq(cfg, source, out / "model.onnx", work / "calibration.json", static_reader(cfg, parent, source, ctx))
    shutil.rmtree(work, ignore_errors=True)
    return {**static_settings(cfg), "quantized_nodes": quantized_nodes(out / "model.onnx")}


def accuracy_aware_int8(cfg: QuantizeConfig, parent: Artifact, ctx: Context, out: Path) -> dict:
    from compress.accuracy_aware import search  # its own file: the search loop is a page by itself

    return search(cfg, parent, ctx, out)


def optimum_dynamic_int8(cfg: QuantizeConfig, parent: Artifact, ctx: Context, out: Path) -> dict:
    """Optimum's ORTQuantizer with its avx512_vnni dynamic preset, as a user would run it. It is given the plain
    export: on ORT's fused graph it stops with "Unable to find data type for weight_name" and, unlike
    quantize_dynamic, offers no DefaultTensorType option to get past it."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    file_name = parent.files.get("raw", parent.files["model"])
    work = out / "work"
    ORTQuantizer.from_pretrained(parent.path, file_name=file_name).quantize(
        save_dir=work, quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False,
                                                                             per_channel=cfg.per_channel))
    [written] = work.glob("*.onnx")  # its name depends on the input's (model.raw.onnx -> model.onnx)
    written.rename(out / "model.onnx")
    shutil.rmtree(work)
    return {"per_channel": cfg.per_channel, "quantized_file": file_name,
            "reference": "optimum ORTQuantizer avx512_vnni dynamic"}


METHODS: dict[str, Callable[[QuantizeConfig, Artifact, Context, Path], dict]] = {
    "dynamic": dynamic_int8, "static": static_int8, "accuracy-aware": accuracy_aware_int8,
    "optimum-dynamic": optimum_dynamic_int8,
}


def parity_failures(cfg: QuantizeConfig, parity: dict) -> list[str]:
    """Where INT8 falls outside the recipe's tolerance vs FP32 (empty: within it)."""
    failures = []
    if parity["prediction_agreement"] < cfg.parity_min_agreement:
        failures.append(f"INT8 agrees with FP32 on {parity['prediction_agreement']:.3f} of dev predictions "
                        f"< parity_min_agreement {cfg.parity_min_agreement}")
    if cfg.parity_max_logit_diff is not None and parity["max_abs_logit_diff"] > cfg.parity_max_logit_diff:
        failures.append(f"INT8 logits differ from FP32 by {parity['max_abs_logit_diff']:.3g} "
                        f"> parity_max_logit_diff {cfg.parity_max_logit_diff}")
    return failures


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
    ctx.log.info("%s: %s INT8 agrees with FP32 on %.1f%% of %d dev predictions (max |logit diff| %.3g)", cfg.name,
                 cfg.method, 100 * parity["prediction_agreement"], parity["examples"], parity["max_abs_logit_diff"])
    failures = parity_failures(cfg, parity)
    if failures and cfg.method != "accuracy-aware":  # a model outside tolerance is a failed stage, not a result
        raise StageFailed(f"{cfg.name}: " + "; ".join(failures))
    for failure in failures:  # accuracy-aware always keeps the closest model it found; its metrics say what missed
        ctx.log.warning("%s: %s", cfg.name, failure)
    return StageResult("onnx", {"model": "model.onnx"},
                       {"method": cfg.method, "precision": "int8", "parity_vs_fp32": parity, **details})
