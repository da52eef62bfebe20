"""Back ends by name: each accepts some artifact kinds and either opens or says why it cannot."""
from __future__ import annotations

from typing import Callable, NamedTuple

from compress.core.artifact import Artifact
from runtimes.base import Runtime, Unavailable


class Backend(NamedTuple):
    kinds: tuple[str, ...]  # artifact kinds it runs
    open: Callable[[Artifact, int], Runtime]
    # Why this machine cannot run it at all, checked before any model is loaded (None: it can), so a CPU-only
    # machine does not start a benchmark process per artifact only to learn there is no GPU.
    missing: Callable[[], str | None]


def _torch(device: str, precision: str = "fp32") -> Callable[[Artifact, int], Runtime]:
    def open_(artifact: Artifact, threads: int) -> Runtime:
        from runtimes.torch_runtime import TorchRuntime

        return TorchRuntime.open(artifact.path, device, precision, threads)

    return open_


def _ort(provider: str) -> Callable[[Artifact, int], Runtime]:
    def open_(artifact: Artifact, threads: int) -> Runtime:
        from runtimes.ort_runtime import OrtRuntime

        return OrtRuntime.open(artifact, provider, threads)

    return open_


def _tensorrt(artifact: Artifact, threads: int) -> Runtime:
    from runtimes.tensorrt_runtime import TensorRTRuntime

    return TensorRTRuntime(artifact.file("model"), artifact.metrics.get("precision", "fp32"))


def _nothing_missing() -> None:
    return None


def _cuda_missing() -> str | None:
    from runtimes.torch_runtime import cuda_missing

    return cuda_missing()


def _provider_missing(provider: str) -> Callable[[], str | None]:
    def missing() -> str | None:
        from runtimes.ort_runtime import provider_missing

        return provider_missing(provider)

    return missing


def _tensorrt_missing() -> str | None:
    from runtimes.tensorrt_runtime import tensorrt_missing

    return tensorrt_missing()


BACKENDS: dict[str, Backend] = {
    "torch-cpu": Backend(("hf-checkpoint",), _torch("cpu"), _nothing_missing),
    "torch-cuda": Backend(("hf-checkpoint",), _torch("cuda"), _cuda_missing),
    "torch-cuda-fp16": Backend(("hf-checkpoint",), _torch("cuda", "fp16"), _cuda_missing),
    "ort-cpu": Backend(("onnx",), _ort("cpu"), _provider_missing("cpu")),
    "ort-cuda": Backend(("onnx",), _ort("cuda"), _provider_missing("cuda")),
    "ort-trt": Backend(("onnx",), _ort("trt"), _provider_missing("trt")),
    "tensorrt": Backend(("tensorrt-engine",), _tensorrt, _tensorrt_missing),
}


def open_runtime(backend: str, artifact: Artifact, threads: int) -> Runtime:
    """Open `artifact` on `backend`, or raise Unavailable with the reason."""
    if backend not in BACKENDS:
        raise Unavailable(f"unknown back end {backend!r}; known: {sorted(BACKENDS)}")
    if artifact.kind not in BACKENDS[backend].kinds:
        raise Unavailable(f"{backend} does not run {artifact.kind} artifacts")
    return BACKENDS[backend].open(artifact, threads)


__all__ = ["BACKENDS", "Backend", "Runtime", "Unavailable", "open_runtime"]
