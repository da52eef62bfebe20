"""Back ends by name: each accepts some artifact kinds and either opens or says why it cannot."""
from __future__ import annotations

from typing import Callable

from compress.artifact import Artifact
from runtimes.base import Runtime, Unavailable


def _torch(device: str, precision: str = "fp32") -> Callable[[Artifact, int], Runtime]:
    def open_(artifact: Artifact, threads: int) -> Runtime:
        from runtimes.torch_runtime import TorchRuntime

        return TorchRuntime.open(artifact.path, device, precision, threads)

    return open_


def _ort(provider: str) -> Callable[[Artifact, int], Runtime]:
    def open_(artifact: Artifact, threads: int) -> Runtime:
        from runtimes.ort_runtime import OrtRuntime

        return OrtRuntime(artifact.file("model"), provider, threads, artifact.metrics.get("precision", "fp32"))

    return open_


def _tensorrt(artifact: Artifact, threads: int) -> Runtime:
    from runtimes.tensorrt_runtime import TensorRTRuntime

    return TensorRTRuntime(artifact.file("model"), artifact.metrics.get("precision", "fp32"))


# name -> (artifact kinds it runs, opener)
BACKENDS: dict[str, tuple[tuple[str, ...], Callable[[Artifact, int], Runtime]]] = {
    "torch-cpu": (("hf-checkpoint",), _torch("cpu")),
    "torch-cuda": (("hf-checkpoint",), _torch("cuda")),
    "torch-cuda-fp16": (("hf-checkpoint",), _torch("cuda", "fp16")),
    "ort-cpu": (("onnx",), _ort("cpu")),
    "ort-cuda": (("onnx",), _ort("cuda")),
    "ort-trt": (("onnx",), _ort("trt")),
    "tensorrt": (("tensorrt-engine",), _tensorrt),
}


def open_runtime(backend: str, artifact: Artifact, threads: int) -> Runtime:
    """Open `artifact` on `backend`, or raise Unavailable with the reason."""
    if backend not in BACKENDS:
        raise Unavailable(f"unknown back end {backend!r}; known: {sorted(BACKENDS)}")
    kinds, opener = BACKENDS[backend]
    if artifact.kind not in kinds:
        raise Unavailable(f"{backend} does not run {artifact.kind} artifacts")
    return opener(artifact, threads)


__all__ = ["BACKENDS", "Runtime", "Unavailable", "open_runtime"]
