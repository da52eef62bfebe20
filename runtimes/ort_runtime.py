"""ONNX Runtime with the CPU, CUDA or TensorRT execution provider."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from runtimes.base import Unavailable

if TYPE_CHECKING:
    from compress.core.artifact import Artifact

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
Provider = str | tuple[str, dict[str, str]]  # a name, or (name, options) as InferenceSession takes them
# Load-time fusions CPU sessions go without. SkipLayerNormFusion folds residual Add + LayerNormalization into
# the SkipLayerNormalization contrib op, whose CPU kernel (ONNX Runtime 1.32) ran 5x slower than the ops it
# replaces (see export.onnx.fuse). Every CPU row of a report, the reference included, runs with this setting.
CPU_DISABLED_FUSIONS = ["SkipLayerNormFusion"]


@contextmanager
def denormals_flushed() -> Iterator[None]:
    """Flush denormal floats to zero on this thread while the block runs, then turn flushing off again.

    Softmax over padded key positions (their scores sit thousands below the row's maximum) drives ONNX Runtime's
    CPU kernels through denormal intermediates, which x86 computes in microcode: at batch 1, sequence 128, a short
    text padded to full length took 13.5 ms on optimum-int8 and 8.4 ms with flushing, as fast as a text that fills
    all 128 positions (ORT 1.32, 1 thread, AVX-512 VNNI). The values flushed are below 1.2e-38 (probabilities of
    masked keys). ORT's session.set_denormal_as_zero reaches only its pool threads; with one intra-op thread the
    caller's thread does all the work, so it is set here too, with torch (numpy has no switch)."""
    import torch

    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def provider_missing(provider: str) -> str | None:
    """Why ONNX Runtime cannot use `provider` here, or None when it can."""
    import onnxruntime as ort

    wanted = PROVIDERS[provider]
    if wanted not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no {wanted} (install onnxruntime-gpu on a CUDA machine)"
    return None


def trt_cache(artifact: Artifact) -> Path:
    """The TensorRT EP's caches, beside the artifact (the run's cache/ort-trt), not in it: a committed artifact
    does not change. Building engines takes minutes, and every benchmark row is a fresh process."""
    return artifact.path.parent / "cache" / "ort-trt"


def session_plan(artifact: Artifact, provider: str) -> tuple[Path, list[Provider]]:
    """The file ONNX Runtime loads for `artifact` on `provider`, and the providers it tries, in order.

    TensorRT gets the plain export when there is one: the fused model.onnx holds ONNX Runtime contrib ops
    (Attention, EmbedLayerNormalization) that TensorRT cannot parse. CUDA then CPU stand behind it for any node it
    does not take. Engines are cached per artifact hash: ONNX Runtime keys an engine by the model's file name and
    graph, not its weights, and every artifact's plain export is model.raw.onnx. Kernel timings hold across
    artifacts, so they share one cache."""
    if provider != "trt":
        return artifact.file("model"), [PROVIDERS[provider]]
    model = artifact.file("raw") if "raw" in artifact.files else artifact.file("model")
    options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(trt_cache(artifact) / artifact.hash),
               "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(trt_cache(artifact))}
    return model, [(PROVIDERS["trt"], options), PROVIDERS["cuda"], PROVIDERS["cpu"]]


class OrtRuntime:
    def __init__(self, model_path: Path, provider: str = "cpu", threads: int | None = None, precision: str = "fp32",
                 providers: list[Provider] | None = None, profile: Path | None = None):
        """`profile`: a file prefix; the session then records every node's time (ONNX Runtime's profiler), which
        `session.end_profiling()` writes to a JSON trace. It costs time, so a timed session never has it."""
        import onnxruntime as ort

        reason = provider_missing(provider)
        if reason:
            raise Unavailable(reason)
        wanted = PROVIDERS[provider]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if profile:
            options.enable_profiling = True
            options.profile_file_prefix = str(profile)
        fusions = {}
        if provider == "cpu":
            options.add_session_config_entry("session.set_denormal_as_zero", "1")
            fusions = {"disabled_optimizers": CPU_DISABLED_FUSIONS}
        self.session = ort.InferenceSession(str(model_path), options, providers=providers or [wanted], **fusions)
        if self.session.get_providers()[0] != wanted:
            raise Unavailable(f"{wanted} failed to initialise; ONNX Runtime fell back to {self.session.get_providers()}")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.name = f"ort-{provider}"
        self.device = provider
        self.precision = precision

    @classmethod
    def open(cls, artifact: Artifact, provider: str, threads: int | None = None,
             profile: Path | None = None) -> OrtRuntime:
        """`artifact` on `provider` as session_plan says; the TensorRT EP's cache folders are made first."""
        model, providers = session_plan(artifact, provider)
        if provider == "trt":
            (trt_cache(artifact) / artifact.hash).mkdir(parents=True, exist_ok=True)
        return cls(model, provider, threads, artifact.metrics.get("precision", "fp32"), providers, profile)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: inputs[k] for k in self.input_names}
        if self.device != "cpu":
            return self.session.run(None, feed)[0]
        with denormals_flushed():
            return self.session.run(None, feed)[0]
