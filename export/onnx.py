"""export: Hugging Face checkpoint -> ONNX with dynamic axes, parity-checked, transformer-fused.

The artifact holds `model.onnx` (what runtimes load: fused when `optimize`), the plain
export `model.raw.onnx` (what quantizers and TensorRT, which cannot parse ONNX Runtime's
contrib ops, start from), the tokenizer and config.json.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from compress.core.artifact import Artifact
from compress.core.models import load_classifier, load_tokenizer
from compress.core.parity import ParityChecked, compare_logits
from compress.core.section import Measured, Metrics, Ran, Section
from compress.core.stage import Context, StageResult, register
from compress.core.task import encode, model_task
from runtimes.ort_runtime import OrtRuntime
from runtimes.torch_runtime import TorchRuntime


class ExportConfig(ParityChecked):
    """`parity`: ONNX Runtime's logits must match PyTorch's on dev batches (`parity_tolerance` is the old name
    of parity.max_logit_diff)."""

    PARITY_DEFAULTS = {"max_logit_diff": 1e-3}
    type: Literal["export"] = "export"
    opset: int = Field(17, ge=14, le=21)
    optimize: bool = Field(True, description="Apply ONNX Runtime's transformer fusions (Attention, LayerNorm, Gelu; "
                           "residual adds stay apart from their LayerNorm, see fuse).")
    fuse_embeddings: bool = Field(True, description="Fuse the embedding lookups and their LayerNorm into ONNX "
                                  "Runtime's EmbedLayerNormalization; off, they stay plain Gathers and a LayerNorm.")


def to_onnx(model: torch.nn.Module, sample: dict, path: Path, opset: int) -> None:
    """Legacy TorchScript exporter: the dynamo exporter (torch's default) does not keep both dynamic axes here.
    The logits' dynamic axes are the task's (Task.output_axes: a token head's sequence axis too, or the graph
    would only take the sample's length), the task read off the model's class.
    Traced with eager attention: transformers 5's SDPA path builds its mask from Range/And/GreaterOrEqual and
    guards softmax with IsNaN, which ONNX Runtime's fusions do not match (no Attention, no EmbedLayerNormalization
    on a tiny BERT); its eager path, like 4.57's, fuses fully."""
    model.set_attn_implementation("eager")
    names = list(sample)
    wrapped = _LogitsOnly(model, names)
    tensors = tuple(torch.from_numpy(sample[n]) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": model_task(model).output_axes}
    with torch.no_grad():
        torch.onnx.export(wrapped, tensors, str(path), input_names=names, output_names=["logits"],
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    pin_head_counts(path)


def pin_head_counts(path: Path) -> int:
    """Write each layer's head count into the shape of the Reshapes that split Q, K and V into heads, where the
    trace left -1; returns how many it wrote.

    transformers 5 splits heads with view(batch, sequence, -1, head_size), where 4.x wrote the attention module's
    head count. ONNX Runtime's Attention fusion reads the count there, else takes the one `num_heads` it was given,
    so a model whose layers keep different counts (pruned heads) lost every Attention fusion, and the
    EmbedLayerNormalization that goes with it. The count is the projection's width (from shape inference) over
    the head size; graphs that already hold it are left as they are."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    widths = {v.name: v.type.tensor_type.shape.dim[-1].dim_value
              for v in onnx.shape_inference.infer_shapes(model).graph.value_info if v.type.tensor_type.shape.dim}
    producers = {out: node for node in graph.node for out in node.output}

    def constant(name: str) -> list[int] | None:
        node = producers.get(name)
        if node is None or node.op_type != "Constant":
            return None
        return numpy_helper.to_array(node.attribute[0].t).reshape(-1).tolist()

    pinned = 0
    for node in graph.node:
        concat = producers.get(node.input[1]) if node.op_type == "Reshape" else None
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
            continue
        heads, size, width = constant(concat.input[2]), constant(concat.input[3]), widths.get(node.input[0], 0)
        if heads == [-1] and size and size[0] > 0 and width and width % size[0] == 0:
            name = f"{concat.name}/heads"
            graph.initializer.append(numpy_helper.from_array(np.array([width // size[0]], dtype=np.int64), name))
            concat.input[2] = name
            pinned += 1
    if pinned:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        kept = [n for n in graph.node if n.op_type != "Constant" or any(o in used for o in n.output)]
        del graph.node[:]
        graph.node.extend(kept)
        onnx.save(model, str(path))
    return pinned


class _LogitsOnly(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors))).logits


def fuse(raw: Path, fused: Path, config, fuse_embeddings: bool = True) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer; returns fused-operator counts (zeros say a fusion did not apply).

    SkipLayerNormalization is left out: on ONNX Runtime 1.32's CPU provider that contrib kernel took 0.23 ms
    on a (1, 128, 384) input where Add + Add + LayerNormalization took 0.044 ms (1 thread, 2-core Xeon), about
    half of a 4-layer INT8 student's time. CPU sessions keep it unfused too (ort_runtime.CPU_DISABLED_FUSIONS);
    CUDA sessions fuse it at load time, where the kernel is fast."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    uniform = not getattr(config, "pruned_heads", None)
    options = FusionOptions("bert")
    options.enable_embed_layer_norm = fuse_embeddings
    options.enable_skip_layer_norm = False
    opt = optimize_model(str(raw), model_type="bert", num_heads=config.num_attention_heads if uniform else 0,
                         hidden_size=config.hidden_size if uniform else 0, optimization_options=options)
    share_identical_initializers(opt.model)
    opt.save_model_to_file(str(fused))
    return {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}


def share_identical_initializers(model) -> int:
    """Point every node at one copy of each distinct initializer and drop the rest; returns how many were dropped.

    Why: the Attention fusion packs Q, K and V into a new weight per layer, so an ALBERT whose six layers share
    one set of weights comes out with six identical packed copies (32.7 MB fused against 23.9 MB unfused for the
    E=128 student). Sharing them back keeps ALBERT's size advantage in the file a runtime loads."""
    from onnx import numpy_helper

    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        key = (tensor.data_type, tuple(tensor.dims), array.tobytes())
        rename[tensor.name] = first.setdefault(key, tensor.name)
    dropped = {old for old, new in rename.items() if old != new}
    if not dropped:
        return 0
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in dropped:
                node.input[i] = rename[name]
    kept = [t for t in model.graph.initializer if t.name not in dropped]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return len(dropped)


def fusions_missing(fused: dict[str, int], config, fuse_embeddings: bool = True) -> dict[str, int]:
    """Fusions a BERT of this depth gets when unpruned (DEPENDENCY-FACTS: 1 EmbedLayerNormalization, per layer
    1 Attention, 1 BiasGelu, 2 LayerNormalization) minus those applied: e.g. pruned heads that stop the
    Attention fusion show up here. Only judged for BERT, the layout the optimizer's "bert" type targets."""
    if config.model_type != "bert":
        return {}
    n = config.num_hidden_layers
    expected = {"EmbedLayerNormalization": int(fuse_embeddings), "Attention": n, "LayerNormalization": 2 * n}
    if config.hidden_act == "gelu":
        expected["BiasGelu"] = n
    return {op: want - fused.get(op, 0) for op, want in expected.items() if fused.get(op, 0) < want}


class ExportMetrics(Metrics):
    fused_operators: dict[str, int] = {}
    fusions_missing: dict[str, int] = {}


def export_section(steps: list[Ran], measured: Measured) -> list[Section]:
    """Exports where ONNX Runtime applied fewer fusions than an unpruned BERT of the same depth gets."""
    lines = [f"{s.name}: missing {s.metrics.fusions_missing} (applied: {s.metrics.fused_operators})"
             for s in steps if s.metrics.fusions_missing]
    return [Section(title="ONNX Runtime fusions not applied", lines=lines)] if lines else []


@register(ExportConfig, accepts=("hf-checkpoint",), produces="onnx", metrics=ExportMetrics, section=export_section)
def export_onnx(cfg: ExportConfig, parent: Artifact, ctx: Context, out: Path) -> StageResult:
    model = load_classifier(parent.path, allow_pickle=ctx.allow_pickle).eval()  # the head its config names
    tokenizer = load_tokenizer(parent.path)
    max_length = ctx.max_length
    raw, final = out / "model.raw.onnx", out / "model.onnx"
    to_onnx(model, encode(tokenizer, ctx.data.dev[:2], max_length), raw, cfg.opset)
    fused_ops = fuse(raw, final, model.config, cfg.fuse_embeddings) if cfg.optimize else {}
    if not cfg.optimize:
        os.link(raw, final)
    parity = compare_logits(TorchRuntime(model).run, OrtRuntime(final).run, tokenizer,
                            ctx.data.dev[: cfg.parity.examples], max_length)
    ctx.log.info("%s: parity max |diff| %.2e over %d dev examples; fused %s", cfg.name,
                 parity["max_abs_logit_diff"], parity["examples"], fused_ops)
    cfg.parity.enforce(parity, cfg.name, "ONNX Runtime vs PyTorch")
    tokenizer.save_pretrained(out)
    model.config.save_pretrained(out)
    lost = fusions_missing(fused_ops, model.config, cfg.fuse_embeddings) if cfg.optimize else {}
    if lost:
        ctx.log.warning("%s: fusions not applied (count missing): %s", cfg.name, lost)
    return StageResult("onnx", {"model": "model.onnx", "raw": "model.raw.onnx"},
                       {"parity": parity, "fused_operators": fused_ops, "fusions_missing": lost, "precision": "fp32",
                        "opset": cfg.opset})
