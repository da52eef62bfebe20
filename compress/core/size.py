"""Size on disk and parameter counts, read from files without loading the model."""
from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import numpy as np

from compress.core.artifact import Artifact
from compress.core.embeddings4 import META, PACKED

MACS_SEQUENCE_LENGTH = 128  # the report's architecture figures (macs_seq128) run one sequence of this length


def model_bytes(artifact: Artifact) -> int:
    return artifact.file("model").stat().st_size


def parameter_count(artifact: Artifact) -> int | None:
    path = artifact.file("model")
    if path.suffix not in (".safetensors", ".onnx"):
        return None
    return sum(elements for _, _, elements in _tensor_sizes(path) if elements > 1)  # not scales or zero points


def part_of(name: str) -> str:
    """Which part of the model a weight belongs to, by its name. Checkpoints name every tensor
    (`bert.embeddings.*`, `bert.encoder.*`, `bert.pooler.*`, `classifier.*`); the ONNX exporter keeps those names
    for embedding tables and the 2-D head layers (Gemm) but calls encoder MatMul weights `onnx::MatMul_N` or
    `Attention_N_qkv_weight`, so whatever is neither embeddings nor head is the encoder."""
    if "embeddings." in name:
        return "embeddings"
    if "pooler" in name or "classifier" in name:
        return "head"
    return "encoder"


FOUR_BIT_TYPES = {21, 22, 23}  # onnx.TensorProto UINT4, INT4, FLOAT4E2M1: two values per stored byte


def _tensor_sizes(path: Path) -> list[tuple[str, int, int]]:
    """(name, bytes, parameters) of every stored tensor."""
    if path.suffix == ".safetensors":
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        return [(k, t["data_offsets"][1] - t["data_offsets"][0], int(np.prod(t["shape"])))
                for k, t in header.items() if k != "__metadata__"]
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(path), load_external_data=False)
    sizes = []
    for t in model.graph.initializer:
        n = int(np.prod(t.dims))
        nbytes = (n + 1) // 2 if t.data_type in FOUR_BIT_TYPES else n * tensor_dtype_to_np_dtype(t.data_type).itemsize
        values = 0 if META in t.name else 2 * n if t.name.endswith(PACKED) else n  # embeddings4: 2 codes a byte
        sizes.append((t.name, nbytes, values))
    return sizes


def size_split(artifact: Artifact) -> dict[str, dict[str, int]] | None:
    """Bytes and parameters of embeddings vs encoder vs head (tensor data only: file headers are not counted)."""
    path = artifact.file("model")
    if path.suffix not in (".safetensors", ".onnx"):
        return None
    split = {p: {"bytes": 0, "parameters": 0} for p in ("embeddings", "encoder", "head")}
    for name, nbytes, elements in _tensor_sizes(path):
        part = split[part_of(name)]
        part["bytes"] += nbytes
        part["parameters"] += elements if elements > 1 else 0
    return split


def architecture_cost(folder: Path, sequence_length: int = MACS_SEQUENCE_LENGTH) -> dict | None:
    """Encoder parameters and multiply-accumulates of one forward pass (batch 1) at `sequence_length`, from the
    folder's config.json alone, so a checkpoint and its ONNX export report the same architecture figures.

    torch's FlopCounterMode counts every matmul, the attention score/context products included (with eager
    attention, whose matmuls it sees); torch-pruning's `count_ops_and_params` counts module calls only and
    misses those. None when the folder has no config (nothing to count).

    `gemm_shapes` lists the matrix multiplies of the model's linear layers in that pass, [M, K, N, calls] (M
    tokens, K inputs, N outputs), as its config defines them (pruned heads per layer; an ALBERT layer counted
    once per call): the shapes this machine's GEMM rate is measured at (benchmarks.efficiency).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoConfig

    from compress.core.models import build_model
    from compress.core.task import task_for

    if not (folder / "config.json").is_file():
        return None
    config = AutoConfig.from_pretrained(folder)  # the head its config names: a token head costs per position
    model = build_model(task_for(config).auto_class(), config, attn_implementation="eager").eval()
    ids = torch.ones(1, sequence_length, dtype=torch.long)
    calls: Counter[tuple[int, int, int]] = Counter()

    def record(layer: torch.nn.Linear, args: tuple, _output) -> None:
        calls[(args[0].numel() // layer.in_features, layer.in_features, layer.out_features)] += 1

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    for hook in hooks:
        hook.remove()
    return {"encoder_parameters": sum(p.numel() for p in model.base_model.encoder.parameters()),
            f"macs_seq{sequence_length}": counter.get_total_flops() // 2,
            "gemm_shapes": [[*shape, n] for shape, n in sorted(calls.items())]}
