"""`plan-memory`: lay out every device's memory; `#omni.mem<weights, kv, arena, offload>`.

Per device, for each stage instance on it: its weight shard; its activation arena (one
transformer block's intermediates packed by liveness — arena.py — as the cost rules sized
it when they checked the config fits); double-buffered inputs
from its producers; then the KV-cache pool, sized from whatever is left (split between the
AR stages on the device in proportion to what their planned batch needs, as vLLM gives the
rest of gpu_memory_utilization to its KV blocks). Stages the planner set to swap keep their
weights in host memory: the device holds one swap slot as large as the largest of them. When
a device is short, the cold share of
a MoE stage's routed experts moves to host memory (`offload`) before anything fails; if
that is not enough either, the error says what the device holds and what is missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field


from omnigraph.dialect.attrs import MemAttr
from omnigraph.errors import IRError
from omnigraph.passes.planner.arch_profile import profile_stage
from omnigraph.passes.place_devices import plan_of
from omnigraph.passes.compilation import Compilation, CompilerPass
from omnigraph.passes.stage_graph import FlatStage, stage_graph
from omnigraph.passes.planner.offload import MAX_OFFLOAD
from omnigraph.passes.planner.stage_options import GIB, device_types
from omnigraph.target import Target


@dataclass
class StageMemory:
    weights: int
    kv: int
    arena: int
    buffers: int
    offload: int = 0
    swap: bool = False  # its weights live in host memory, loaded into the device's swap slots
    share: float | None = None  # the spec's memory_share: at most this part of the device is its


@dataclass
class DeviceMemory:
    device: str
    usable: int
    stages: dict[str, StageMemory] = field(default_factory=dict)

    @property
    def used(self) -> int:
        """Bytes taken: the resident stages' weights, everyone's KV, arena and buffers, and one
        swap slot as large as the largest swapped stage's weights (the stage that runs)."""
        resident = sum(m.weights for m in self.stages.values() if not m.swap)
        swapped = max((m.weights for m in self.stages.values() if m.swap), default=0)
        return resident + swapped + sum(m.kv + m.arena + m.buffers for m in self.stages.values())


def _needs(st: FlatStage) -> StageMemory:
    p = plan_of(st)
    # The cost rules sized the activation arena (arena.py: one block's buffers packed by
    # liveness, over the tokens of its largest forward) when they checked the config fits.
    share = st.params.get("memory_share")
    return StageMemory(weights=p.weights_per_device, kv=p.kv_per_device, arena=p.activations,
                       buffers=2 * p.batch * p.in_bytes, offload=p.offload, swap=p.swap,
                       share=float(share) if share else None)


def plan_memory(stages: list[FlatStage], target: Target) -> dict[str, DeviceMemory]:
    usable = {t.type: t.usable_bytes for t in device_types(target)}
    kind_of = {f"{n.name}:{d.name}": d.type for n in target.nodes for d in n.devices}
    devices: dict[str, DeviceMemory] = {}
    for st in stages:
        if st.op.place is None:
            raise IRError(f"stage '{st.name}': plan-memory needs place-devices to run first")
        need = _needs(st)
        for dev in dict.fromkeys(d.data for d in st.op.place.devices.data):
            mem = devices.setdefault(dev, DeviceMemory(dev, usable[kind_of[dev]]))
            mem.stages[st.name] = StageMemory(need.weights, need.kv, need.arena, need.buffers, need.offload, need.swap,
                                              need.share)
    by_name = {st.name: st for st in stages}
    for mem in devices.values():
        _fit(mem, by_name)
    return devices


def _fit(mem: DeviceMemory, stages: dict[str, FlatStage]) -> None:
    """Offload cold experts if short, then hand what is left to the KV pools."""
    short = mem.used - mem.usable
    for name, sm in mem.stages.items():
        if short <= 0:
            break
        profile = profile_stage(stages[name].kind, stages[name].model, stages[name].params)
        if profile.expert_params and profile.params:
            experts_here = int(sm.weights * profile.expert_params / profile.params)
            moved = min(short, int(experts_here * MAX_OFFLOAD))
            sm.weights -= moved
            sm.offload += moved
            short -= moved
    if short > 0:
        held = ", ".join(f"'{n}' {(m.weights + m.kv + m.arena + m.buffers) / GIB:.1f} GiB"
                         for n, m in mem.stages.items())
        raise IRError(f"device {mem.device} is {short / GIB:.1f} GiB short: it holds {held} of "
                      f"{mem.usable / GIB:.1f} GiB usable",
                      hint="give plan-parallel a smaller max_batch, or a target with more devices")
    for n, m in mem.stages.items():  # a stage with a memory share: its part of the device, no more
        if m.share is None:
            continue
        cap = int(m.share * mem.usable)
        own = m.weights + m.kv + m.arena + m.buffers
        if own > cap:
            raise IRError(f"stage '{n}': memory_share {m.share:g} gives it {cap / GIB:.1f} GiB of {mem.device}; "
                          f"it needs {own / GIB:.1f} GiB", hint="raise its memory_share, or lower its max_batch")
        if m.kv > 0:
            m.kv += cap - own  # its KV pool takes the rest of its share, as vLLM's gpu_memory_utilization
    want = {n: m.kv for n, m in mem.stages.items() if m.kv > 0 and m.share is None}
    spare = mem.usable - mem.used
    if spare < 0:
        shared = ", ".join(f"'{n}' {m.share:g}" for n, m in mem.stages.items() if m.share is not None)
        raise IRError(f"device {mem.device}: the memory shares ({shared}) leave the other stages on it "
                      f"{spare / GIB:.1f} GiB", hint="lower the shares")
    total = sum(want.values())
    for n, kv in want.items():
        mem.stages[n].kv += int(spare * kv / total)


@dataclass(frozen=True)
class PlanMemoryPass(CompilerPass):
    name = "plan-memory"

    def run(self, comp: Compilation) -> None:
        stages = stage_graph(comp.module)
        devices = plan_memory(stages, comp.need_target(self.name))
        for st in stages:
            # Every device of a stage holds the same layout; the first speaks for all.
            first = st.op.place.devices.data[0].data
            sm = devices[first].stages[st.name]
            st.op.properties["mem"] = MemAttr(weights=sm.weights, kv=sm.kv, arena=sm.arena, buffers=sm.buffers,
                                              offload=sm.offload)
