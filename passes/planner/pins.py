"""Placement pins a spec gives a stage (`devices`, `memory_share`; kinds.Params), checked
against the target: the devices exist, are distinct and of one type."""
from __future__ import annotations

from dataclasses import dataclass

from omnigraph.errors import IRError
from omnigraph.passes.stage_graph import FlatStage
from omnigraph.target import Target


@dataclass(frozen=True)
class DevicePin:
    type: str
    devices: tuple[str, ...]


def device_pin(st: FlatStage, target: Target) -> DevicePin | None:
    """The devices `st` pins on `target` (None: the planner chooses)."""
    devices = st.params.get("devices")
    if not devices:
        return None
    kinds = {f"{n.name}:{d.name}": d.type for n in target.nodes for d in n.devices}
    where = f"stage '{st.name}'"
    for dev in devices:
        if dev not in kinds:
            raise IRError(f"{where}: devices: '{dev}' is not a device of {target.target}", where=where,
                          hint="its devices: " + ", ".join(kinds))
    if len(set(devices)) != len(devices):
        raise IRError(f"{where}: devices lists a device twice", where=where)
    types = sorted({kinds[d] for d in devices})
    if len(types) > 1:
        raise IRError(f"{where}: devices are of {len(types)} types ({', '.join(types)}); a stage runs on one",
                      where=where)
    return DevicePin(types[0], tuple(devices))


def pinned_counts(stages: list[FlatStage], target: Target) -> dict[str, int]:
    """Per device type, how many distinct devices the stages pin (they leave the planner's pools)."""
    taken: dict[str, set[str]] = {}
    for st in stages:
        pin = device_pin(st, target)
        if pin is not None:
            taken.setdefault(pin.type, set()).update(pin.devices)
    return {t: len(d) for t, d in taken.items()}
