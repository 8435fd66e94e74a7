"""`place-devices`: put every replica group on concrete devices; `#omni.place<[…]>`.

A replica of tp x pp x ep devices stays inside one NVLink domain of one node (its
collectives run at NVLink speed); a pipeline-parallel replica that no domain holds is placed
stage group by stage group, each group of tp x ep ranks inside one domain, the groups over
nodes (only the hidden state crosses between them). Groups go biggest first, each into the domain with the
least room that still holds it (best fit), which packs power-of-two groups into
power-of-two domains without holes. Ties go to the domain where the stage's producers sit,
so neighbouring stages share a node. A stage whose spec pins its devices gets exactly those (first). Stages that plan-parallel marked
`shared` are colocated:
one instance on each device of their type's shared pool, taken from what the groups left; a
pool that rides on a stage (`h100@llm`) puts one instance on the first device of each of that
stage's replicas instead, taking no devices of its own.

`#omni.place` lists the devices of all replicas back to back, in rank order:
replica i runs on devices[i*g:(i+1)*g], g = tp x pp x max(1, ep / tp).
"""
from __future__ import annotations

from dataclasses import dataclass


from omnigraph.dialect.attrs import ParallelAttr, PlaceAttr, PlanAttr
from omnigraph.errors import IRError
from omnigraph.passes.compilation import Compilation, CompilerPass
from omnigraph.passes.planner.pins import device_pin
from omnigraph.passes.planner.plan_problem import ride_host
from omnigraph.passes.stage_graph import FlatStage, stage_graph
from omnigraph.target import Target


@dataclass
class _Domain:
    node: str
    type: str
    free: list[str]  # device ids "node:device", in order


def domains(target: Target) -> list[_Domain]:
    out = []
    for node in target.nodes:
        groups = node.nvlink_domains or [[d.name for d in node.devices]]
        kinds = {d.name: d.type for d in node.devices}
        seen: set[str] = set()
        for group in groups:
            for t in dict.fromkeys(kinds[n] for n in group):
                names = [n for n in group if kinds[n] == t and n not in seen]
                seen.update(names)
                out.append(_Domain(node.name, t, [f"{node.name}:{n}" for n in names]))
        rest = [d for d in node.devices if d.name not in seen]  # devices outside every domain
        out += [_Domain(node.name, d.type, [f"{node.name}:{d.name}"]) for d in rest]
    return out


def plan_of(st: FlatStage) -> PlanAttr:
    attr = st.op.plan
    if attr is None or st.op.parallel is None:
        raise IRError(f"stage '{st.name}': place-devices needs plan-parallel to run first")
    return attr


def _pool(plan: PlanAttr) -> str:
    """A shared stage's pool: its type's first, or the one plan-parallel named (`h100#1`)."""
    return plan.get("pool") or plan.get("device_type")


def place(stages: list[FlatStage], target: Target) -> dict[str, list[str]]:
    """Device ids per stage, replicas back to back."""
    doms = domains(target)
    groups = []  # (size, order, stage, type)
    pools: dict[str, int] = {}
    plans = {st.name: plan_of(st) for st in stages}
    pins = {st.name: pin for st in stages if (pin := device_pin(st, target)) is not None}
    for order, st in enumerate(stages):
        p = plans[st.name]
        if st.name in pins:  # the spec chose its devices (several stages may share one)
            continue
        if p.shared:
            pools[_pool(p)] = st.op.parallel.get("replicas")
            continue
        for _ in range(st.op.parallel.get("replicas")):
            groups.append((p.devices_per_replica, order, st, p.device_type))
    placed: dict[str, list[str]] = {st.name: list(pins[st.name].devices) if st.name in pins else [] for st in stages}
    home: dict[str, set[str]] = {name: {d.split(":")[0] for d in pin.devices} for name, pin in pins.items()}
    pinned = {d for pin in pins.values() for d in pin.devices}
    for dom in doms:
        dom.free = [d for d in dom.free if d not in pinned]
    groups.sort(key=lambda g: (-g[0], g[1]))
    for size, _, st, dtype in groups:
        near = {n for pred, _ in st.preds for n in home.get(pred, ())}
        pp = st.op.parallel.get("pp")
        # A replica stays in one domain when one holds it; a pipeline-parallel one that no
        # domain holds goes stage group by stage group, each group (its TP ranks) in one domain.
        whole = any(d.type == dtype and len(d.free) >= size for d in doms)
        parts = [size] if whole or pp == 1 else [size // pp] * pp
        for part in parts:
            fit = [d for d in doms if d.type == dtype and len(d.free) >= part]
            if not fit:
                what = "a replica" if len(parts) == 1 else f"a pipeline stage's {part} ranks"
                raise IRError(f"stage '{st.name}': no NVLink domain of {target.target} has {part} free "
                              f"{dtype} devices left for {what}",
                              hint="lower its tp, or give the target larger NVLink domains")
            best = min(fit, key=lambda d: (len(d.free), d.node not in near))
            placed[st.name] += best.free[:part]
            del best.free[:part]
            home.setdefault(st.name, set()).add(best.node)
            near.add(best.node)
    for key, count in pools.items():  # each shared pool on devices of its own
        host = ride_host(key)
        if host is not None:
            _ride(key, host, stages, plans, placed)
            continue
        dtype = key.split("#")[0]
        free = [dev for d in doms if d.type == dtype for dev in d.free]
        if len(free) < count:
            raise IRError(f"the shared {dtype} pool needs {count} devices, {len(free)} are left on {target.target}")
        pool = free[:count]
        for st in stages:
            if plans[st.name].shared and _pool(plans[st.name]) == key:
                placed[st.name] = list(pool)
        for d in doms:
            d.free = [x for x in d.free if x not in pool]
    return placed


def _ride(key: str, host: str, stages: list[FlatStage], plans: dict[str, PlanAttr], placed: dict[str, list[str]]) -> None:
    """A riding pool's stages: one instance on the first device of each replica of its host
    (as many as the host has now: split-prefill-decode may have given some to a prefill half)."""
    by_name = {st.name: st for st in stages}
    if host not in by_name or not placed.get(host):
        raise IRError(f"the shared pool {key} rides on stage '{host}', which has no devices placed")
    size = plans[host].devices_per_replica
    firsts = placed[host][::size]
    for st in stages:
        if plans[st.name].shared and _pool(plans[st.name]) == key:
            placed[st.name] = list(firsts)
            par = st.op.parallel
            if par.get("replicas") != len(firsts):
                st.op.properties["parallel"] = ParallelAttr(tp=par.get("tp"), pp=par.get("pp"), dp=par.get("dp"),
                                                            ep=par.get("ep"), replicas=len(firsts))


@dataclass(frozen=True)
class PlaceDevicesPass(CompilerPass):
    name = "place-devices"

    def run(self, comp: Compilation) -> None:
        target = comp.need_target(self.name)
        stages = stage_graph(comp.module)
        for name, devices in place(stages, target).items():
            st = next(s for s in stages if s.name == name)
            st.op.properties["place"] = PlaceAttr(devices)
