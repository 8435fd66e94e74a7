"""`plan-cores`: split each CPU device's cores among the stage instances on it; `#omni.cores<[…]>`.

Stages that share a CPU fight over its cores: an LLM's decode and a voice running on the same
two cores each slow the other. Here every CPU device whose target says how many cores it has
gives each stage placed on it a contiguous range of them, in proportion to the device time the
stage needs per request (visits / rate, as plan-parallel predicted it), at least one core each.
A stage alone on a CPU gets all of them. With more stages than cores, each gets one core and
the ranges wrap (they share). The runtime runs the stage's intra-op threads on its share (torch
or onnxruntime) and pins a stage's own process to those cores.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from omnigraph.dialect.attrs import CoresAttr
from omnigraph.passes.compilation import Compilation, CompilerPass
from omnigraph.passes.place_devices import plan_of
from omnigraph.passes.stage_graph import FlatStage, stage_graph
from omnigraph.target import Target


def shares(needs: dict[str, float], cores: int) -> dict[str, int]:
    """Cores per stage, proportional to `needs` (largest remainders), at least one each."""
    if len(needs) >= cores:
        return {name: 1 for name in needs}
    total = sum(needs.values()) or 1.0
    exact = {n: max(1.0, cores * v / total) for n, v in needs.items()}
    out = {n: max(1, math.floor(x)) for n, x in exact.items()}
    while sum(out.values()) > cores:  # the at-least-one floors overshot: take from the largest
        out[max(out, key=lambda n: (out[n], -needs[n]))] -= 1
    for name in sorted(exact, key=lambda n: exact[n] - out[n], reverse=True):
        if sum(out.values()) >= cores:
            break
        out[name] += 1
    return out


def plan_cores(stages: list[FlatStage], target: Target) -> dict[str, list[int]]:
    """Core ids per stage that sits on a CPU device with a known core count."""
    cpus = {f"{n.name}:{d.name}": d.core_count() for n in target.nodes for d in n.devices if d.type == "cpu"}
    by_device: dict[str, list[FlatStage]] = {}
    for st in stages:
        for dev in dict.fromkeys(d.data for d in st.op.place.devices.data) if st.op.place else ():
            if cpus.get(dev):
                by_device.setdefault(dev, []).append(st)
    out: dict[str, list[int]] = {}
    for dev, here in by_device.items():
        count = cpus[dev] or 1
        needs = {}
        for st in here:
            plan = plan_of(st)
            needs[st.name] = plan.visits / plan.rate if plan.rate > 0 else 1.0
        given = shares(needs, count)
        start = 0
        for st in here:  # stage order: producers first, so neighbours get neighbouring cores
            n = given[st.name]
            out[st.name] = sorted({(start + i) % count for i in range(n)})
            start = (start + n) % count
    return out


@dataclass(frozen=True)
class PlanCoresPass(CompilerPass):
    name = "plan-cores"

    def run(self, comp: Compilation) -> None:
        stages = stage_graph(comp.module)
        by_name = {st.name: st for st in stages}
        for name, ids in plan_cores(stages, comp.need_target(self.name)).items():
            by_name[name].op.properties["cores"] = CoresAttr(ids)
