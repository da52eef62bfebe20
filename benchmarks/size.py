"""Size on disk and parameter counts, read from files without loading the model."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from compress.artifact import Artifact


def model_bytes(artifact: Artifact) -> int:
    return artifact.file("model").stat().st_size


def _safetensors_parameters(path: Path) -> int:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return sum(int(np.prod(t["shape"])) for k, t in header.items() if k != "__metadata__")


def _onnx_parameters(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if len(t.dims) > 0 and np.prod(t.dims) > 1)


def parameter_count(artifact: Artifact) -> int | None:
    path = artifact.file("model")
    if path.suffix == ".safetensors":
        return _safetensors_parameters(path)
    if path.suffix == ".onnx":
        return _onnx_parameters(path)
    return None


def architecture_cost(folder: Path, sequence_length: int = 128) -> dict | None:
    """Encoder parameters and multiply-accumulates of one forward pass (batch 1) at `sequence_length`, from the
    folder's config.json alone, so a checkpoint and its ONNX export report the same architecture figures.

    torch's FlopCounterMode counts every matmul, the attention score/context products included (with eager
    attention, whose matmuls it sees); torch-pruning's `count_ops_and_params` counts module calls only and
    misses those. None when the folder has no config (nothing to count).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if not (folder / "config.json").is_file():
        return None
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()
    ids = torch.ones(1, sequence_length, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return {"encoder_parameters": sum(p.numel() for p in model.base_model.encoder.parameters()),
            f"macs_seq{sequence_length}": counter.get_total_flops() // 2}
