"""Where a stage instance runs: the plan's device names as torch devices, and its CPU cores.

A plan names devices as its target does (`node0:gpu3`, `node1:cpu0`). A GPU's name ends with
its CUDA index on its node, so `node0:gpu3` runs on `cuda:3` (in a process of its own node);
anything else runs on the CPU.

`OMNIGRAPH_DEVICE_MAP` is the seam between the two: `cuda=cpu` keeps every decision of the
plan (the instance still asks for `cuda:3`, and reports it) but puts the tensors on the CPU,
for a dry run of a GPU plan on a machine without one, and for the tests of placement.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omnigraph.runtime.plan import Instance, StageNode

DEVICE_MAP_ENV = "OMNIGRAPH_DEVICE_MAP"


def is_gpu(plan_device: str) -> bool:
    name = plan_device.rpartition(":")[2].lower()
    return "gpu" in name or "cuda" in name


def torch_device(plan_device: str) -> str:
    """`node0:gpu3` → `cuda:3` (a GPU without an index: `cuda`); anything else → `cpu`."""
    if not is_gpu(plan_device):
        return "cpu"
    digits = "".join(c for c in plan_device.rpartition(":")[2] if c.isdigit())
    return f"cuda:{int(digits)}" if digits else "cuda"


def placed(device: str) -> str:
    """The device tensors go on for a planned `device`, after OMNIGRAPH_DEVICE_MAP."""
    mapping = dict(part.split("=", 1) for part in os.environ.get(DEVICE_MAP_ENV, "").split(",") if "=" in part)
    kind = device.partition(":")[0]
    return mapping.get(kind, device)


def pin_process(cores: list[int] | None) -> None:
    """Run this process (and the threads it starts from now on) on `cores` only, where the
    machine has them; a plan made for another machine's cores is left unpinned."""
    if not cores or not hasattr(os, "sched_setaffinity"):
        return
    have = os.sched_getaffinity(0)
    wanted = {c for c in cores if c in have}
    if wanted:
        os.sched_setaffinity(0, wanted)


def uses_torch(node: StageNode) -> bool:
    """Whether the stage computes with torch (and so on torch's intra-op threads): all but
    ONNX models (Piper voices, ONNX vocoders), which size their own sessions."""
    return node.kind != "tts" and not (node.model or "").startswith("onnx:")


def planned_contract(node: StageNode, instance: Instance) -> dict[str, Any]:
    """What the plan asks of one instance (`run --stats` shows it beside `plan --json`):
    its devices, the torch device they name, its dtype (torch stages), cores and KV budget."""
    planned = torch_device(instance.devices[0])
    return {"plan_devices": list(instance.devices), "device": planned, "runs_on": placed(planned),
            "dtype": compute_dtype(node), "cores": instance.cores, "kv_budget": node.resources.kv_bytes}


def compute_dtype(node: StageNode) -> str | None:
    """The dtype a torch stage computes in (the plan's, else its params', else f32); None for
    stages that run a file as it is (ONNX)."""
    return (node.resources.dtype or node.params.get("dtype") or "f32") if uses_torch(node) else None
