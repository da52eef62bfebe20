"""What the numbers were measured on: CPU, ISA flags, GPU, execution providers, library versions."""
from __future__ import annotations

import os
import platform
from functools import lru_cache
from importlib import metadata

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
LIBRARIES = ("torch", "transformers", "onnxruntime", "onnxruntime-gpu", "onnx", "optimum", "optimum-onnx",
             "torch-pruning", "neural-compressor", "accelerate", "tensorrt", "numpy")


@lru_cache(maxsize=1)
def describe() -> dict:
    import cpuinfo
    import psutil
    import torch

    info = cpuinfo.get_cpu_info()
    flags = set(info.get("flags", []))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except ImportError:
        providers = []
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": info.get("brand_raw", platform.processor()),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "isa": {f: f in flags for f in ISA_FLAGS},
        "gpu": gpu,
        "onnxruntime_providers": providers,
        "python": platform.python_version(),
        "os": platform.platform(),
        "versions": versions,
    }


def fingerprint() -> str:
    """Figures are reused only on the same hardware and software."""
    d = describe()
    return f"{d['cpu']}|{d['logical_cores']}|{d['gpu']}|{sorted(d['versions'].items())}"
