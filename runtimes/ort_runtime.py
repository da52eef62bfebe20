"""ONNX Runtime with the CPU, CUDA or TensorRT execution provider."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtimes.base import Unavailable

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


def provider_missing(provider: str) -> str | None:
    """Why ONNX Runtime cannot use `provider` here, or None when it can."""
    import onnxruntime as ort

    wanted = PROVIDERS[provider]
    if wanted not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no {wanted} (install onnxruntime-gpu on a CUDA machine)"
    return None


class OrtRuntime:
    def __init__(self, model_path: Path, provider: str = "cpu", threads: int | None = None, precision: str = "fp32"):
        import onnxruntime as ort

        reason = provider_missing(provider)
        if reason:
            raise Unavailable(reason)
        wanted = PROVIDERS[provider]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path), options, providers=[wanted])
        if self.session.get_providers()[0] != wanted:
            raise Unavailable(f"{wanted} failed to initialise; ONNX Runtime fell back to {self.session.get_providers()}")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.name = f"ort-{provider}"
        self.device = provider
        self.precision = precision

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, {k: inputs[k] for k in self.input_names})[0]
