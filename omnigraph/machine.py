"""What this machine's CPU offers, read without importing torch (the compiler plans without it).

    cores()              the cores this process may run on (its affinity, else the CPU count)
    cpu_flags()          the instruction-set flags of /proc/cpuinfo (empty where there is none)
    default_dtypes(type) the dtypes a device of that type computes fast: known GPU models by
                         their datasheets, a CPU by its flags (bf16 needs AVX512-BF16 or AMX)
    cuda_devices()       this machine's CUDA GPUs (through torch, when it is installed)
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass

# Datasheet dtypes of the GPU models targets name (fp8 from Hopper on). Unknown GPUs get bf16,
# which every GPU of the last generations computes natively.
_GPU_DTYPES: dict[str, tuple[str, ...]] = {
    "h100": ("fp8", "bf16", "f16", "f32"),
    "h200": ("fp8", "bf16", "f16", "f32"),
    "b200": ("fp8", "bf16", "f16", "f32"),
    "l40s": ("fp8", "bf16", "f16", "f32"),
    "a100": ("bf16", "f16", "f32"),
}


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def default_dtypes(device_type: str) -> tuple[str, ...]:
    if device_type == "cpu":
        return ("bf16", "f32") if cpu_has_bf16() else ("f32",)
    return _GPU_DTYPES.get(device_type, ("bf16", "f16", "f32"))


@dataclass(frozen=True)
class Gpu:
    name: str
    type: str
    memory_gib: float
    peak_tflops: float  # dense bf16
    bandwidth_gb_s: float
    link_gb_s: float


# Datasheet figures (dense bf16 TFLOP/s, HBM GB/s, NVLink GB/s per direction) by model.
_DATASHEETS: dict[str, tuple[float, float, float]] = {
    "h100": (989, 3350, 450), "h200": (989, 4800, 450), "b200": (2250, 8000, 900),
    "a100": (312, 2039, 300), "l40s": (362, 864, 32),
}
_UNKNOWN_GPU = (100.0, 1000.0, 32.0)  # conservative: the planner under-promises


def cuda_devices() -> list[Gpu]:
    if importlib.util.find_spec("torch") is None:
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        kind = next((k for k in _DATASHEETS if k in props.name.lower()), "gpu")
        tflops, bandwidth, link = _DATASHEETS.get(kind, _UNKNOWN_GPU)
        out.append(Gpu(props.name, kind, props.total_memory / (1 << 30), tflops, bandwidth, link))
    return out
