"""Targets: YAML cluster descriptions (nodes, devices, memory, FLOP/s, links).

`--target NAME` finds ``NAME.yaml`` among the shipped targets; `--target PATH`
reads a file. The planner reads these; compile records the name in the IR.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from omnigraph import machine
from omnigraph.errors import TargetError
from omnigraph.frontend.source import SourceMap
from omnigraph.frontend.text import read_spec_text
from omnigraph.frontend.yaml_frontend import parse_yaml


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


DType = Literal["fp8", "bf16", "f16", "f32"]


class Device(_Model):
    name: str  # a GPU's name ends with its CUDA index on its node (gpu3 -> cuda:3)
    type: str = "gpu"  # a device model name (h100, h200, l40s) or cpu
    memory_gib: float = Field(gt=0)
    peak_tflops: float = Field(gt=0)  # dense bf16 (fp32 on a CPU)
    mem_bandwidth_gb_s: float = Field(gt=0)  # HBM / DRAM, GB/s
    # The dtypes it computes fast; "auto": known GPUs by type, a CPU by what this machine's
    # instruction set has (bf16 with AVX512-BF16 or AMX).
    dtypes: list[DType] | Literal["auto"] = "auto"
    cores: int | Literal["auto"] | None = None  # a CPU's cores the stages share ("auto": this machine's)

    def fast_dtypes(self) -> tuple[str, ...]:
        return tuple(self.dtypes) if self.dtypes != "auto" else machine.default_dtypes(self.type)

    def core_count(self) -> int | None:
        return machine.cores() if self.cores == "auto" else self.cores


class Node(_Model):
    name: str
    devices: list[Device] = Field(min_length=1)
    intra_node_gb_s: float = Field(ge=0)  # per device, one direction (NVLink or PCIe)
    # Devices that talk at intra_node_gb_s; across domains, traffic goes over PCIe/host.
    nvlink_domains: list[list[str]] | None = None

    @model_validator(mode="after")
    def _domains_name_devices(self) -> Node:
        names = {d.name for d in self.devices}
        for domain in self.nvlink_domains or []:
            unknown = [d for d in domain if d not in names]
            if unknown:
                raise ValueError(f"nvlink_domains name unknown device(s) {', '.join(unknown)}")
        return self


class Target(_Model):
    target: str
    description: str | None = None
    nodes: list[Node] = Field(min_length=1)
    inter_node_gb_s: float = Field(ge=0)  # per node, one direction (e.g. 8 x 400 Gb/s NICs = 400)

    @property
    def devices(self) -> list[str]:
        return [f"{n.name}:{d.name}" for n in self.nodes for d in n.devices]


def shipped_targets() -> list[str]:
    files = resources.files("omnigraph.targets")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


LOCAL = "local"  # this machine: its GPUs when torch sees CUDA ones, else cpu-local


def local_target() -> Target:
    """This machine as a target: one node of its CUDA GPUs (figures from the model's
    datasheet where machine.py knows it), or the shipped cpu-local when it has none."""
    gpus = machine.cuda_devices()
    if not gpus:
        return load_target("cpu-local")
    devices = [Device(name=f"gpu{i}", type=g.type, memory_gib=g.memory_gib, peak_tflops=g.peak_tflops,
                      mem_bandwidth_gb_s=g.bandwidth_gb_s) for i, g in enumerate(gpus)]
    return Target(target=LOCAL, description=f"this machine: {len(gpus)} x {gpus[0].name}",
                  nodes=[Node(name="node0", devices=devices, intra_node_gb_s=gpus[0].link_gb_s)], inter_node_gb_s=0)


def load_target(name_or_path: str) -> Target:
    if name_or_path == LOCAL:
        return local_target()
    path = Path(name_or_path)
    if path.suffix.lower() in (".yaml", ".yml"):
        text, file = read_spec_text(path), str(path)
    else:
        entry = resources.files("omnigraph.targets").joinpath(f"{name_or_path}.yaml")
        if not entry.is_file():
            from omnigraph.frontend.messages import suggest

            raise TargetError(f"unknown target '{name_or_path}'",
                              hint=suggest(name_or_path, shipped_targets())
                              or "targets: " + ", ".join(shipped_targets()))
        text, file = entry.read_text("utf-8"), f"targets/{name_or_path}.yaml"
    raw, srcmap = parse_yaml(text, file)
    try:
        return Target.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        raise _target_error(srcmap, f"{'.'.join(map(str, loc))}: {err['msg']}", loc) from None


def _target_error(srcmap: SourceMap, message: str, loc: tuple) -> TargetError:
    spec_err = srcmap.error(message, loc)
    return TargetError(spec_err.message, spec_err.span, source=srcmap.text)
