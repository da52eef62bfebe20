"""TensorRT engines on an NVIDIA GPU, as a back end. The engine code itself is runtimes/tensorrt_engine.py."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from runtimes.base import Unavailable


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot run here, or None when it can."""
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt Python package is not installed (pip install tensorrt, on a machine with an NVIDIA GPU)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device visible (TensorRT needs an NVIDIA GPU)"
    return None


class TensorRTRuntime:
    def __init__(self, engine_path: Path, precision: str):
        reason = tensorrt_missing()
        if reason:
            raise Unavailable(reason)
        import torch

        from runtimes.tensorrt_engine import TrtEngine

        self.engine = TrtEngine(engine_path)
        self.name = "tensorrt"
        self.device = f"cuda:0 ({torch.cuda.get_device_name(0)})"
        self.precision = precision

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.engine.run(inputs)
