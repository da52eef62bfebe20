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
