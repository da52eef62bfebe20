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
        "cpu_hz": _clock(info),
        "isa": {f: f in flags for f in ISA_FLAGS},
        "gpu": gpu,
        "onnxruntime_providers": providers,
        "python": platform.python_version(),
        "os": platform.platform(),
        "versions": versions,
    }


def _clock(info: dict) -> dict | None:
    """The CPU clock py-cpuinfo reports and which of its figures it is: the advertised (base) clock where the
    brand string gives one, else the current one it read; None when it reports neither."""
    for key in ("hz_advertised", "hz_actual"):
        hz = (info.get(key) or [0])[0]
        if hz:
            return {"hz": hz, "source": f"py-cpuinfo {key}"}
    return None


# Multiply-accumulates per cycle per core, widest ISA first: two FMA units x the vector's FP32 lanes; a VNNI
# dot-product instruction does 4 INT8 MACs per FP32 lane. Nominal figures, as vendors quote them.
MACS_PER_CYCLE = {"fp32": (("avx512f", 32), ("avx2", 16)), "int8": (("avx512_vnni", 128), ("avx_vnni", 64))}


def nominal_peak(isa: dict[str, bool], clock: dict | None, threads: int, precision: str) -> dict | None:
    """The CPU's nominal peak in GMAC/s for a row: MACs per cycle per core of the widest ISA the flags show for its
    precision, x clock x threads. Why: achieved GMAC/s beside it shows how far the kernels are from the hardware.
    None (no figure rather than a guessed one) when the clock is unknown or no listed ISA serves the precision
    (int8 without VNNI, fp16)."""
    isa_name, per_cycle = next(((f, n) for f, n in MACS_PER_CYCLE.get(precision, ()) if isa.get(f)), ("", 0))
    if not clock or not per_cycle:
        return None
    ghz = clock["hz"] / 1e9
    return {"gmacs_per_s": round(per_cycle * ghz * threads, 1),
            "basis": f"{per_cycle} {precision} MAC/cycle/core ({isa_name}) x {ghz:.2f} GHz ({clock['source']}) "
                     f"x {threads} threads"}


def fingerprint() -> str:
    """Figures are reused only on the same hardware and software."""
    d = describe()
    return f"{d['cpu']}|{d['logical_cores']}|{d['gpu']}|{sorted(d['versions'].items())}"
