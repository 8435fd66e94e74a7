"""Plan switches inside a simulation: a plan family changing replicas while requests flow.

At `at_s` each named stage takes on the replicas (their devices) of the plan switched to,
as the runtime's replan.switch does: a replica already on those devices stays; new ones
load for `load_s` before they serve; the others are retired: they finish what they run
and take nothing new (the runtime migrates their running requests instead, which costs
less: the simulator's estimate of a switch is on the safe side).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omnigraph.passes.sim.state import Replica


@dataclass(frozen=True)
class PlanSwitch:
    at_s: float
    replicas: dict[str, tuple[tuple[str, ...], ...]]  # stage -> per replica, its devices (() = its own)
    load_s: float = 0.0  # a new replica's load time
    name: str = ""  # the variant switched to (reports)
    extra: dict[str, Any] = field(default_factory=dict)


def apply_switch(sim: Any, sw: PlanSwitch) -> None:
    """Switch `sim`'s stages to `sw`'s replicas (see the module docstring)."""
    for name, wanted in sw.replicas.items():
        stage = sim.stages.get(name)
        if stage is None:
            continue
        live = [r for r in stage.replicas if not r.retired]
        keep: list[Replica] = []
        for devices in wanted:
            found = next((r for r in live if r.devices == tuple(devices) and r not in keep), None)
            if found is not None:
                keep.append(found)
                continue
            rep = Replica(len(stage.replicas), tuple(devices), ready_at=sim.now + sw.load_s)
            stage.replicas.append(rep)
            keep.append(rep)
            sim._at(rep.ready_at, "ready", stage)
        for rep in live:
            if rep not in keep:
                rep.retired = True
        sim.dirty[stage] = None
