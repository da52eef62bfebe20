"""The INT8 methods of the quantize stage: each is a config class (a variant of the `quantize` step, chosen by its
`method`) whose `apply` writes `out/model.onnx` and returns what it did. The stage around them
(compress/stages/quantize.py) copies the tokenizer and config and checks parity against FP32, once for all.

- `dynamic`: INT8 weights, activations quantized at run time (no calibration).
- `static`: ONNX Runtime static INT8 in QDQ format, activation ranges calibrated on train examples.
- `optimum-dynamic`: Optimum's ORTQuantizer with its avx512_vnni preset: the reference a user would otherwise
  reach for, measured on the same model.
- `accuracy-aware` (compress/stages/quantize_accuracy_aware.py): static, then FP32 fallback of the most
  sensitive nodes until a dev-accuracy budget holds.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from compress.core.artifact import Artifact
from compress.core.calibration import calibration_examples, calibration_reader, onnx_input_names
from compress.core.embeddings4 import pack_embeddings
from compress.core.errors import CompressError, StageFailed, StepUnavailable
from compress.core.parity import OLD_NAMES, ParityChecked
from compress.core.stage import Context


class QuantizeBase(ParityChecked):
    """What every method shares. `parity`: INT8 predictions must mostly agree with FP32's on dev."""

    PARITY_DEFAULTS = {"min_agreement": 0.9}
    type: Literal["quantize"] = "quantize"
    method: str
    per_channel: bool = Field(True, description="One scale per output channel of each weight.")

    @model_validator(mode="before")
    @classmethod
    def _no_keys_of_other_methods(cls, data: Any) -> Any:
        """A key of another method is an error that says so, not a no-op (nor a bare "extra input")."""
        if isinstance(data, dict):
            own = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias} | set(OLD_NAMES)
            stray = sorted(k for k in data if k not in own and k in _method_fields())
            if stray:
                raise ValueError(f"{stray} do not apply to method {data.get('method', 'dynamic')!r}")
        return data

    def apply(self, parent: Artifact, ctx: Context, out: Path) -> dict:
        """Write out/model.onnx from the parent's ONNX; return the details for the artifact's metrics."""
        raise NotImplementedError

    def judge_parity(self, parity: dict, ctx: Context) -> None:
        """A model outside tolerance is a failed stage, not a result."""
        self.parity.enforce(parity, self.name, "INT8 vs FP32")


def _method_fields() -> set[str]:
    """Every field some method has."""
    fields, todo = set(), [QuantizeBase]
    while todo:
        cls = todo.pop()
        fields |= set(cls.model_fields)
        todo += cls.__subclasses__()
    return fields


# ONNX Runtime's dynamic mode quantizes every op in its IntegerOpsRegistry, the embedding lookups included
# (Gather, and EmbedLayerNormalization -> QEmbedLayerNormalization; uint8, one scale per table).
EMBEDDING_OPS = ("Gather", "EmbedLayerNormalization")


class DynamicConfig(QuantizeBase):
    """INT8 weights, activations quantized on the fly: no calibration data needed."""

    method: Literal["dynamic"] = "dynamic"
    quantize_embeddings: bool = Field(True, description="INT8 embedding lookups (Gather / EmbedLayerNormalization).")
    embedding_bits: Literal[8, 4] = Field(8, description="4: the INT8 embedding tables stored in 4 bits, one scale "
                                          "per block of a row, which ONNX Runtime expands back to INT8 when it loads "
                                          "the model: a smaller file, the same run (compress/core/embeddings4.py).")
    embedding_block_size: int = Field(32, ge=16, description="Values per 4-bit scale along the hidden size; a power "
                                      "of two. Smaller blocks: closer to the FP32 table, more scale bytes.")

    @model_validator(mode="after")
    def _embedding_settings(self) -> DynamicConfig:
        if "embedding_block_size" in self.model_fields_set and self.embedding_bits != 4:
            raise ValueError("embedding_block_size applies to embedding_bits 4")
        if self.embedding_bits == 4 and not self.quantize_embeddings:
            raise ValueError("embedding_bits 4 needs quantize_embeddings: true")
        if self.embedding_block_size & (self.embedding_block_size - 1):
            raise ValueError(f"embedding_block_size {self.embedding_block_size} is not a power of two")
        return self

    def apply(self, parent: Artifact, ctx: Context, out: Path) -> dict:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.registry import IntegerOpsRegistry

        ops = [op for op in IntegerOpsRegistry if self.quantize_embeddings or op not in EMBEDDING_OPS]
        quantize_dynamic(
            parent.file("model"), out / "model.onnx", per_channel=self.per_channel, weight_type=QuantType.QInt8,
            op_types_to_quantize=ops,
            # The transformer optimizer leaves some weights without type info; without this the quantizer stops
            # with "Unable to find data type for weight_name".
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        if self.embedding_bits == 4:
            try:
                pack_embeddings(out / "model.onnx", self.embedding_block_size)
            except ValueError as e:
                raise StageFailed(f"{self.name}: embedding_bits 4: {e}") from e
        return ({"per_channel": self.per_channel, "quantize_embeddings": self.quantize_embeddings,
                 "embedding_bits": self.embedding_bits}
                | ({"embedding_block_size": self.embedding_block_size} if self.embedding_bits == 4 else {}))


class OptimumDynamicConfig(QuantizeBase):
    """Optimum's ORTQuantizer with its avx512_vnni dynamic preset, as a user would run it."""

    method: Literal["optimum-dynamic"] = "optimum-dynamic"

    def apply(self, parent: Artifact, ctx: Context, out: Path) -> dict:
        """It is given the plain export: on ORT's fused graph it stops with "Unable to find data type for
        weight_name" and, unlike quantize_dynamic, offers no DefaultTensorType option to get past it."""
        ORTQuantizer, AutoQuantizationConfig = optimum_quantizer()
        file_name = parent.files.get("raw", parent.files["model"])
        work = out / "work"
        ORTQuantizer.from_pretrained(parent.path, file_name=file_name).quantize(
            save_dir=work, quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False,
                                                                                 per_channel=self.per_channel))
        [written] = work.glob("*.onnx")  # its name depends on the input's (model.raw.onnx -> model.onnx)
        written.rename(out / "model.onnx")
        shutil.rmtree(work)
        return {"per_channel": self.per_channel, "quantized_file": file_name,
                "reference": "optimum ORTQuantizer avx512_vnni dynamic"}


def optimum_quantizer():
    """Optimum's ORTQuantizer and AutoQuantizationConfig, or StepUnavailable saying why not. Optimum is an optional
    extra (`compress[reference]`): optimum-onnx 0.1 pins transformers < 4.58, so an environment on transformers 5
    cannot have it, and an Optimum built for another transformers can fail on import with any error."""
    try:
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig
    except ModuleNotFoundError as e:
        raise StepUnavailable(f"Optimum is not installed ({e}); pip install 'compress[reference]' (optimum-onnx 0.1 "
                              "needs transformers < 4.58)") from None
    except Exception as e:  # noqa: BLE001  (an incompatible install breaks in its own way)
        raise StepUnavailable(f"Optimum cannot be imported here ({type(e).__name__}: {e})") from None
    return ORTQuantizer, AutoQuantizationConfig


class StaticConfig(QuantizeBase):
    """Weights and activations INT8 with ranges fixed ahead of time: no run-time range computation."""

    method: Literal["static"] = "static"
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_samples: int = Field(256, ge=1, description="Seeded random train examples that set activation ranges.")
    percentile: float = Field(99.999, gt=90, lt=100, description="Kept share of |activation| values (percentile only).")
    activation_type: Literal["uint8", "int8"] = Field("uint8", description="uint8 is what x86 integer kernels want.")
    symmetric_activations: bool = False
    reduce_range: bool = Field(False, description="7-bit weights: avoids int16 overflow on x86 without VNNI.")
    op_types: list[str] = Field(["MatMul", "Gemm"], min_length=1, description="ONNX operator types to quantize.")
    start_from: Literal["raw", "fused"] = Field("raw", description="The plain export, or ORT's fused model.onnx.")
    preprocess: bool = Field(True, description="Run onnxruntime's quant_pre_process (shape inference, folding) first.")

    @field_validator("op_types")
    @classmethod
    def _known_op_types(cls, v: list[str]) -> list[str]:
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        unknown = sorted(set(v) - set(QDQRegistry) - set(QLinearOpsRegistry))
        if unknown:
            raise ValueError(f"ONNX Runtime cannot quantize op types {unknown}; it can: {sorted(QDQRegistry)}")
        return v

    @model_validator(mode="after")
    def _percentile_needs_percentile(self) -> StaticConfig:
        if "percentile" in self.model_fields_set and self.calibration != "percentile":
            raise ValueError(f"percentile applies to calibration 'percentile', not {self.calibration!r}")
        return self

    def settings(self) -> dict:
        """The settings a static model was made with, for its metrics (a subclass's own keys are its own)."""
        names = set(StaticConfig.model_fields) - set(QuantizeBase.model_fields) | {"per_channel"}
        if self.calibration != "percentile":
            names.discard("percentile")
        return self.model_dump(include=names)

    def apply(self, parent: Artifact, ctx: Context, out: Path) -> dict:
        work = out / "work"
        source = static_source(self, parent, work)
        work.mkdir(exist_ok=True)
        quantize_qdq(self, source, out / "model.onnx", work / "calibration.json", static_reader(self, parent, source, ctx))
        shutil.rmtree(work, ignore_errors=True)
        return {**self.settings(), "quantized_nodes": quantized_nodes(out / "model.onnx")}


def static_source(cfg: StaticConfig, parent: Artifact, work: Path) -> Path:
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


def static_reader(cfg: StaticConfig, parent: Artifact, source: Path, ctx: Context):
    """Calibration data: `calibration_samples` seeded-random train examples, tokenized like every other stage."""
    from transformers import AutoTokenizer

    examples = calibration_examples(ctx.data.train, cfg.calibration_samples, ctx.seed)
    return calibration_reader(AutoTokenizer.from_pretrained(parent.path), examples, ctx.max_length,
                              onnx_input_names(source))


def quantize_qdq(cfg: StaticConfig, source: Path, target: Path, cache: Path, reader=None,
                 fp32_nodes: list[str] = ()) -> None:
    """Static QDQ INT8 of `source`. The first call calibrates with `reader` and stores the ranges in `cache`;
    later calls (other FP32 node sets) reuse them and skip calibration."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    extra = {"ActivationSymmetric": cfg.symmetric_activations, "WeightSymmetric": True,
             "DefaultTensorType": 1}  # 1 = FLOAT: the fused model has weights without type info, see DynamicConfig
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
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    with tempfile.TemporaryDirectory(prefix="entropy.") as scratch:
        calibrator = create_calibrator(source, op_types, augmented_model_path=str(Path(scratch) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.Entropy,
                                       extra_options={"num_bins": 2048, "num_quantized_bins": 128})
        calibrator.collect_data(reader)
        save_tensors_data(calibrator.compute_data(), cache)
    reader.rewind()


def quantized_nodes(path: Path) -> int:
    """How many nodes take a dequantized input: the operators that really run on INT8 data."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dq = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return sum(1 for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and dq & set(n.input))
