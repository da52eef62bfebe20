"""qat: quantization-aware training, Hugging Face checkpoint -> QDQ INT8 ONNX.

For when post-training INT8 misses the budget: every encoder Linear (and the head) gets torch.ao
FakeQuantize modules — per-tensor uint8 on its input, per-channel symmetric int8 on its weight,
the same scheme as the static PTQ method — and the model is fine-tuned through them with the shared
loop in compress/train.py, so the weights learn to live on the INT8 grid. The legacy ONNX exporter
turns each FakeQuantize into a QuantizeLinear/DequantizeLinear pair carrying the learned ranges;
weight pairs are then folded into INT8 initializers so the file holds INT8 weights.

Why torch.ao and not a library's QAT: neural-compressor 3.10's `prepare_qat` maps nn.Linear only to
MXFP8/MXFP4, and torchao 0.18's QAT fakes its (LLM-oriented) schemes with plain arithmetic that the
ONNX exporter cannot write as QDQ; torch.ao FakeQuantize is what the exporter turns into QDQ.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from compress.core.artifact import Artifact
from compress.core.calibration import calibration_examples
from compress.core.models import load_classifier
from compress.core.parity import ParityChecked, compare_logits
from compress.core.stage import Context, StageResult, register
from compress.core.task import encode
from compress.core.train import TrainingConfig, train
from export.onnx import to_onnx
from runtimes.ort_runtime import OrtRuntime
from runtimes.torch_runtime import TorchRuntime


class QatConfig(TrainingConfig, ParityChecked):
    """`parity`: the exported QDQ model must predict as the fake-quantized PyTorch model it came from."""

    PARITY_DEFAULTS = {"min_agreement": 0.98}
    type: Literal["qat"] = "qat"
    epochs: int = Field(1, ge=1, le=100)
    learning_rate: float = Field(2e-5, gt=0, lt=1, description="Small: QAT starts from a fine-tuned model.")
    calibration_samples: int = Field(256, ge=1, description="Train examples that set the ranges before training.")
    opset: int = Field(17, ge=13, le=21, description="Per-channel QDQ needs opset 13 or later.")
    reduce_range: bool = Field(True, description="7-bit weights ([-64, 63]). x86 CPUs without VNNI multiply "
                               "uint8 x int8 pairs into a saturating int16 (VPMADDUBSW), so full-range weights "
                               "give other results in ONNX Runtime than in training; turn off for VNNI or GPU targets.")


class FakeQuantLinear(torch.nn.Module):
    """A Linear that sees its input and weight as INT8 would: rounding in the forward pass, straight-through
    gradients in the backward pass (torch.ao FakeQuantize)."""

    def __init__(self, linear: torch.nn.Linear, reduce_range: bool):
        from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

        super().__init__()
        self.linear = linear
        self.input_quant = FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                        dtype=torch.quint8, qscheme=torch.per_tensor_affine)
        low, high = (-64, 63) if reduce_range else (-128, 127)
        self.weight_quant = FakeQuantize(observer=MovingAveragePerChannelMinMaxObserver, quant_min=low, quant_max=high,
                                         dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(self.input_quant(x), self.weight_quant(self.linear.weight), self.linear.bias)


def add_fake_quant(model: torch.nn.Module, reduce_range: bool) -> int:
    """Swap every nn.Linear for a FakeQuantLinear in place; returns how many."""
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, torch.nn.Linear)]
    for parent, name, child in targets:
        setattr(parent, name, FakeQuantLinear(child, reduce_range))
    return len(targets)


def bake_weights(model: torch.nn.Module) -> None:
    """Store each weight as its fake-quantized value and widen its quantizer to (-128, 127) at the same scale:
    the exporter writes only that signed range, and values already on the 7-bit grid quantize to themselves."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FakeQuantLinear):
                m.linear.weight.copy_(m.weight_quant(m.linear.weight))
                m.weight_quant.activation_post_process.quant_min = -128
                m.weight_quant.activation_post_process.quant_max = 127


def fold_weight_quantizers(path: Path) -> int:
    """Replace QuantizeLinear(FP32 initializer) with its INT8 result: the exporter leaves weights in FP32 in
    front of a Q/DQ pair, which costs FP32 size on disk and a quantization at every run."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    # The exporter shares equal tensors through Identity nodes; follow them back to the initializer.
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in inits}

    def value(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[alias.get(name, name)])

    folded = 0
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or alias.get(node.input[0], node.input[0]) not in inits:
            continue
        w, scale, zero = value(node.input[0]), value(node.input[1]), value(node.input[2])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim:  # per channel: broadcast along `axis`
            shape = [1] * w.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        info = np.iinfo(zero.dtype)
        q = np.clip(np.round(w / scale) + zero.astype(np.int32), info.min, info.max).astype(zero.dtype)
        graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
        graph.node.remove(node)
        folded += 1
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(path))
    return folded


@register(QatConfig, accepts=("hf-checkpoint",), produces="onnx")
def qat(cfg: QatConfig, parent: Artifact, ctx: Context, out: Path) -> StageResult:
    from torch.ao.quantization import disable_observer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(parent.path)
    model = load_classifier(parent.path, ctx.data.labels, ctx.allow_pickle, ctx.task)
    wrapped = add_fake_quant(model, cfg.reduce_range)
    max_length = ctx.max_length
    model.eval()
    with torch.no_grad():  # observers see real data before the first step, so early ranges are sane
        for e in calibration_examples(ctx.data.train, cfg.calibration_samples, ctx.seed):
            model(**{k: torch.from_numpy(v) for k, v in encode(tokenizer, [e], max_length).items()})
    start = time.perf_counter()
    result = train(model, tokenizer, cfg, ctx, cfg.name)
    model.apply(disable_observer)  # freeze the learned ranges: export must not move them
    bake_weights(model)
    to_onnx(model, encode(tokenizer, ctx.data.dev[:2], max_length), out / "model.onnx", cfg.opset)
    folded = fold_weight_quantizers(out / "model.onnx")
    tokenizer.save_pretrained(out)
    model.config.architectures = [type(model).__name__]  # runtimes read the head (its task) off config.json
    model.config.save_pretrained(out)
    parity = compare_logits(TorchRuntime(model).run, OrtRuntime(out / "model.onnx").run, tokenizer,
                            ctx.data.dev[: cfg.parity.examples], max_length)
    ctx.log.info("%s: QDQ ONNX agrees with the fake-quantized model on %.1f%% of %d dev predictions", cfg.name,
                 100 * parity["prediction_agreement"], parity["examples"])
    cfg.parity.enforce(parity, cfg.name, "exported QDQ ONNX vs the fake-quantized PyTorch model")
    return StageResult("onnx", {"model": "model.onnx"}, {
        **result, "train_seconds": round(time.perf_counter() - start, 1), "method": "qat", "precision": "int8",
        "fake_quantized_linears": wrapped, "folded_weights": folded, "parity_vs_fake_quant": parity,
    })
