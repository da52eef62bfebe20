"""PyTorch eager, CPU or CUDA."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compress.core.models import logits_of
from runtimes.base import Unavailable


def cuda_missing() -> str | None:
    """Why PyTorch cannot use a GPU here, or None when it can."""
    return None if torch.cuda.is_available() else "no CUDA device visible to PyTorch"


class TorchRuntime:
    def __init__(self, model: torch.nn.Module, device: str = "cpu", precision: str = "fp32"):
        self.model = model.eval()
        self.device = device
        self.precision = precision
        self.name = f"torch-{device.split(':')[0]}" + ("-fp16" if precision == "fp16" else "")

    @classmethod
    def open(cls, folder: Path, device: str = "cpu", precision: str = "fp32", threads: int | None = None) -> TorchRuntime:
        from compress.core.models import load_classifier

        reason = cuda_missing() if device.startswith("cuda") else None
        if reason:
            raise Unavailable(reason)
        if threads:
            torch.set_num_threads(threads)
        model = load_classifier(folder)
        model = model.to(device, dtype=torch.float16 if precision == "fp16" else torch.float32)
        return cls(model, device, precision)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return logits_of(self.model, self.device)(inputs)
