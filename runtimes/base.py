"""The one interface every inference back end implements."""
from __future__ import annotations

from typing import Protocol

import numpy as np


class Unavailable(Exception):
    """This back end cannot run here (missing package, no GPU, wrong artifact kind); the message says why."""


class Runtime(Protocol):
    name: str  # back-end name, e.g. "ort-cpu"
    device: str  # e.g. "cpu", "cuda:0 (NVIDIA H100)"
    precision: str  # e.g. "fp32", "int8", "fp16"

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Logits for a batch of int64 token arrays; returns only when the result is on the host."""
        ...
