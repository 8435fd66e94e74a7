"""Plan switches inside a simulation: a plan family changing replicas while requests flow.

At `at_s` each named stage takes on the replicas of the plan switched to, as the runtime's
replan.switch does: a replica already on those devices in the same config (`configs`: its
tp, pp, ep) stays, taking the new batch at once; new ones load for `load_s` before they
serve, and the others serve on until then, when they are retired: they finish what they run
and take nothing new (the runtime migrates their running requests instead, which costs less:
the simulator's estimate of a switch is on the safe side).

A variant can run a stage in another config than the plan the simulation started from:
`specs` gives, per such stage, the SimStage that times its replicas and bounds their batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omnigraph.passes.sim.sim_types import SimStage, SimulationError
from omnigraph.passes.sim.state import Replica


@dataclass(frozen=True)
class PlanSwitch:
    at_s: float
    replicas: dict[str, tuple[tuple[str, ...], ...]]  # stage -> per replica, its devices (() = its own)
    load_s: float = 0.0  # a new replica's load time
    name: str = ""  # the variant switched to (reports)
    extra: dict[str, Any] = field(default_factory=dict)
    specs: dict[str, SimStage] = field(default_factory=dict)  # stage -> its replicas' timing, where not its own
    configs: dict[str, Any] = field(default_factory=dict)  # stage -> its replicas' config, where not its own


def apply_switch(sim: Any, sw: PlanSwitch) -> None:
    """Switch `sim`'s stages to `sw`'s replicas (see the module docstring)."""
    for name, wanted in sw.replicas.items():
        stage = sim.stages.get(name)
        if stage is None:
            continue
        spec, config = sw.specs.get(name, stage.spec), sw.configs.get(name)
        if spec.mode != stage.spec.mode:
            raise SimulationError(f"a plan switch cannot make stage '{name}' {spec.mode} (it is {stage.spec.mode})")
        own = None if spec is stage.spec else spec
        live = [r for r in stage.replicas if sim.now < r.retire_at]  # a leaving one can be kept again
        keep: list[Replica] = []
        for devices in wanted:
            found = next((r for r in live if r.devices == tuple(devices) and r.config == config
                          and r not in keep), None)
            if found is None:
                found = Replica(len(stage.replicas), tuple(devices), ready_at=sim.now + sw.load_s,
                                spec=own, config=config)
                stage.replicas.append(found)
                sim._at(found.ready_at, "ready", stage)
            else:
                found.spec, found.retire_at = own, float("inf")
            keep.append(found)
        for rep in live:
            if rep not in keep:
                rep.retire_at = min(rep.retire_at, sim.now + sw.load_s)
        sim.dirty[stage] = None
