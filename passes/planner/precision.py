"""The dtype each stage computes and keeps its weights in: a planning decision.

A dtype the spec pins (`params.dtype`) is kept. Otherwise a stage whose kind computes in a
torch dtype (`Traits.precision`) gets the narrowest float the device computes fast and the
runtime can run: bf16 on H100/H200 and on CPUs with AVX512-BF16 or AMX, f16 where only that is
fast, f32 otherwise. fp8 is left to a pin: the runtime has no scaled-matmul kernels for it. A
stage whose model is a file run as it is (an ONNX graph) has no dtype to choose.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from omnigraph.kinds import KINDS
from omnigraph.passes.planner.cost_types import DTYPE_BYTES, ArchProfile
from omnigraph.target import Device

RUNNABLE = ("bf16", "f16", "f32")  # narrowest first: what the executors compute in
_AS_IS = ("onnx:",)  # models that run in the file's own precision


def planned_dtype(kind: str, model: str | None, params: Mapping[str, Any], device: Device) -> str | None:
    pinned = params.get("dtype")
    if pinned:
        return str(pinned)
    if not KINDS[kind].traits.precision or (model or "").startswith(_AS_IS):
        return None
    fast = device.fast_dtypes()
    return next((d for d in RUNNABLE if d in fast), "f32")


def at_dtype(profile: ArchProfile, dtype: str | None) -> ArchProfile:
    """The profile with weights, KV and activations sized for `dtype`."""
    return profile if dtype is None else replace(profile, dtype_bytes=DTYPE_BYTES[dtype])
