"""TensorRT engines from Python: build one from ONNX (one dynamic-shape profile, a timing cache) and run it.

Standalone on purpose: numpy and tensorrt only, nothing else of compress. The `tensorrt` stage, the `tensorrt`
back end and the edge bundle's on-device runner (which ships a copy of this file) all use this one copy.
Device memory goes through the CUDA runtime library via ctypes, which every TensorRT install brings, so no
pycuda/cuda-python is needed on the device.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------- CUDA runtime through ctypes


class Cuda:
    """The four CUDA runtime calls a TensorRT engine needs from Python."""

    H2D, D2H = 1, 2

    def __init__(self) -> None:
        candidates = [ctypes.util.find_library("cudart"), *sorted(glob.glob("/usr/local/cuda*/lib64/libcudart.so*")),
                      *sorted(glob.glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages", "nvidia", "*",
                                                     "lib", "libcudart.so*")))]
        for name in filter(None, candidates):
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            raise RuntimeError("CUDA runtime library (libcudart) not found")
        self.stream = ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(ctypes.byref(self.stream)), "cudaStreamCreate")

    @staticmethod
    def _check(code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"{what} failed with CUDA error {code}")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cudaMalloc")
        return ptr.value

    def copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:
        self._check(self.lib.cudaMemcpy(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes), kind),
                    "cudaMemcpy")

    def sync(self) -> None:
        self._check(self.lib.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")


# ---------------------------------------------------------------- TensorRT build and run


def build_engine(onnx_path: Path, engine_path: Path, shapes: dict[str, tuple[tuple, tuple, tuple]],
                 timing_cache: Path | None = None, strongly_typed: bool = True, fp16_flag: bool = False,
                 workspace_mib: int = 2048) -> list[str]:
    """Parse ONNX, add one optimization profile (min/opt/max per input), build, save; returns the build log.

    Strongly typed networks take their precision from the ONNX (FP16 weights, Q/DQ nodes) and are the only
    kind TensorRT 11 builds; `fp16_flag` is the TensorRT 10 alternative for an FP32 ONNX on the device.
    """
    import tensorrt as trt

    lines: list[str] = []

    class Log(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg):  # noqa: ANN001 (TensorRT's signature)
            if severity != trt.ILogger.Severity.VERBOSE:
                lines.append(f"[{severity.name}] {msg}")

    logger = Log()
    builder = trt.Builder(logger)
    typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # TensorRT 11: always strongly typed
    flags = 1 << int(typed) if strongly_typed and typed is not None else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if fp16_flag and not strongly_typed and hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        profile.set_shape(name, *shapes[name])
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed:\n" + "\n".join(lines[-20:]))
    engine_path.write_bytes(bytes(serialized))
    if timing_cache:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return lines


class TrtEngine:
    """A deserialized engine; `run` takes int64 id arrays and returns host logits after a stream sync.

    Device buffers are allocated once, for the profile's largest shapes, so timings hold no cudaMalloc.
    """

    def __init__(self, engine_path: Path) -> None:
        import tensorrt as trt

        self.cuda = Cuda()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # must outlive the engine
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load {engine_path} (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output = next(n for n in names if n not in self.inputs)
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.profile = {n: [tuple(s) for s in self.engine.get_tensor_profile_shape(n, 0)] for n in self.inputs}
        for name in self.inputs:
            self._set_shape(name, self.profile[name][2])
        self.buffers = {n: self.cuda.malloc(int(np.prod(tuple(self.context.get_tensor_shape(n)))) * self.dtypes[n].itemsize)
                        for n in names}
        for name, ptr in self.buffers.items():
            self.context.set_tensor_address(name, ptr)

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        """TensorRT answers a shape outside the profile with False (and a log line), not an exception; running on
        would read stale shapes, and the buffers only hold the profile's largest one."""
        if not self.context.set_input_shape(name, shape):
            low, _, high = self.profile[name]
            raise ValueError(f"input {name!r} of shape {tuple(shape)} is outside the engine's optimization profile "
                             f"{low}..{high}: rebuild the engine with a profile that covers it")

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        for name in self.inputs:
            host = np.ascontiguousarray(inputs[name], dtype=self.dtypes[name])
            self._set_shape(name, host.shape)
            self.cuda.copy(self.buffers[name], host.ctypes.data, host.nbytes, self.cuda.H2D)
        out = np.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.dtypes[self.output])
        if not self.context.execute_async_v3(self.cuda.stream.value):
            raise RuntimeError("TensorRT execution failed")
        self.cuda.sync()
        self.cuda.copy(out.ctypes.data, self.buffers[self.output], out.nbytes, self.cuda.D2H)
        return out.astype(np.float32)
