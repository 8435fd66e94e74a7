"""Per stage: every parallel config that fits, on every device type of the target, scored
for the request mix. The local half of the planner; plan_milp.py does the global half.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from omnigraph.passes.planner.config_space import enumerate_configs
from omnigraph.passes.planner.cost_rules import fits, stage_cost, stage_work, usable_bytes
from omnigraph.passes.planner.arch_profile import profile_stage
from omnigraph.passes.planner.cost_types import ArchProfile, ParallelConfig, RequestShape, StageCost, StageWork
from omnigraph.passes.planner.offload import with_offload
from omnigraph.passes.planner.work_rules import chunked, stream_chunks
from omnigraph.passes.planner.plan_problem import DevicePool, Option
from omnigraph.passes.planner.pins import DevicePin
from omnigraph.passes.planner.precision import at_dtype, planned_dtype
from omnigraph.passes.stage_graph import FlatStage
from omnigraph.errors import IRError
from omnigraph.kinds import KINDS
from omnigraph.target import Device, Target

GIB = 1 << 30


@dataclass(frozen=True)
class DeviceType:
    """All devices of one model in the target: how many, how big, how they link."""

    type: str
    device: Device  # a representative (devices of one type share their figures)
    count: int
    domain: int  # the largest NVLink domain among them: the biggest TP x EP group
    link_gb_s: float  # intra-node bandwidth for TP/EP collectives
    per_node: int = 0  # the most of them on one node
    inter_node_gb_s: float = 0.0  # between nodes

    @property
    def usable_bytes(self) -> int:
        return usable_bytes(self.device)

    def cost(self, kind: str, profile: ArchProfile, work: StageWork, cfg: ParallelConfig) -> StageCost:
        """`stage_cost` on this type: collectives inside a node; a pipeline too long for one
        node hands its hidden states over the link between nodes (place-devices puts each
        stage's group inside one node and spreads the stages)."""
        across = cfg.devices > max(1, self.per_node)
        return stage_cost(kind, profile, work, cfg, self.device, self.link_gb_s, False,
                          self.inter_node_gb_s if across else 0.0, across)

    def pool(self) -> DevicePool:
        return DevicePool(self.type, self.count, self.usable_bytes)


def device_types(target: Target) -> list[DeviceType]:
    found: dict[str, DeviceType] = {}
    for node in target.nodes:
        by_type: dict[str, list[Device]] = {}
        for d in node.devices:
            by_type.setdefault(d.type, []).append(d)
        domains = node.nvlink_domains or [[d.name for d in node.devices]]
        for t, devs in by_type.items():
            names = {d.name for d in devs}
            domain = max(len(names & set(dom)) for dom in domains) or 1
            prev = found.get(t)
            found[t] = DeviceType(t, devs[0], (prev.count if prev else 0) + len(devs),
                                  max(domain, prev.domain if prev else 0),
                                  node.intra_node_gb_s if prev is None else min(prev.link_gb_s, node.intra_node_gb_s),
                                  max(len(devs), prev.per_node if prev else 0), target.inter_node_gb_s)
    return list(found.values())


def stage_works(stages: list[FlatStage], mix: list[RequestShape]) -> dict[str, list[StageWork]]:
    """Each stage's work for each request shape of the mix, flowing along the graph."""
    works: dict[str, list[StageWork]] = {}
    by_name = {st.name: st for st in stages}
    for st in stages:
        profile = profile_stage(st.kind, st.model, st.params)
        works[st.name] = []
        for i, shape in enumerate(mix):
            work = stage_work(st.kind, st.params, profile, shape,
                              [works[p][i] for p, _ in st.preds if p in works], st.feeds)
            # Fed by an AR stream, a batch stage runs once per chunk (an AR consumer instead
            # prefills as text arrives, which its own rule already counts).
            drivers = [p for p, stream in st.preds if stream and KINDS[by_name[p].kind].traits.autoregressive]
            if drivers and not KINDS[st.kind].traits.autoregressive:
                work = chunked(work, max(stream_chunks(by_name[p].params, works[p][i]) for p in drivers))
            works[st.name].append(work)
    return works


def mixed_cost(costs: list[StageCost], mix: list[RequestShape]) -> StageCost:
    """One cost for the mix: rates combine harmonically, times by weight, memory by the worst."""
    total = sum(s.weight for s in mix)
    w = [s.weight / total for s in mix]
    per_request = sum(wi / c.throughput for wi, c in zip(w, costs))
    worst = max(costs, key=lambda c: c.mem_per_device)
    return replace(
        worst,
        latency_s=sum(wi * c.latency_s for wi, c in zip(w, costs)),
        first_output_s=sum(wi * c.first_output_s for wi, c in zip(w, costs)),
        throughput=1.0 / per_request,
    )


def stage_options(st: FlatStage, works: list[StageWork], mix: list[RequestShape],
                  types: list[DeviceType], pin: DevicePin | None = None) -> tuple[list[Option], list[tuple[DeviceType, StageCost]]]:
    """(options that fit, the smallest config per device type that did not) for one stage; with
    `pin`, only configs whose replicas tile exactly the pinned devices (and their share of memory)."""
    profile = profile_stage(st.kind, st.model, st.params)
    options: list[Option] = []
    misfits: list[tuple[DeviceType, StageCost]] = []
    degrees = pinned_degrees(st)
    pinned = {k: v for k, v in degrees.items() if k != "replicas"}  # per config; replicas: the MILP
    replicas = degrees.get("replicas")
    share = float(st.params.get("memory_share") or 1.0)
    for dt in types:
        if pin is not None and dt.type != pin.type:
            continue
        dtype = planned_dtype(st.kind, st.model, st.params, dt.device)
        on_type = at_dtype(profile, dtype)
        for cfg in enumerate_configs(st.kind, on_type, [dt.domain], dt.count, dt.device,
                                     batches=_batches(st), pinned_pp=pinned.get("pp")):
            if any(getattr(cfg, k) != v for k, v in pinned.items()):
                continue
            if pin is not None and (len(pin.devices) % cfg.devices
                                    or (replicas and replicas * cfg.devices != len(pin.devices))):
                continue
            costs = [dt.cost(st.kind, on_type, wk, cfg) for wk in works]
            cost = mixed_cost(costs, mix)
            if fits(cost, dt.device) and cost.mem_per_device <= share * dt.usable_bytes:
                options.append(Option(cost, dt.type, dtype=dtype or ""))
                continue
            misfits.append((dt, cost))
            offloaded = with_offload(cost, on_type, works, dt.usable_bytes)
            if offloaded is not None:
                options.append(Option(offloaded, dt.type, dtype=dtype or ""))
    return options, misfits


def pinned_degrees(st: FlatStage) -> dict[str, int]:
    """The degrees a spec asked for (`parallel: {tp: 2, replicas: 3}`), which the planner keeps;
    1 is the default, so only a degree above it pins anything (dp is refused, by stage: copies of
    a stage are `replicas`; pp on a kind that cannot split its layers, by the dialect's checks)."""
    par = st.op.parallel
    if par is None or st.op.plan is not None:  # planned already: these are the planner's own
        return {}
    if par.get("dp") > 1:
        raise IRError(f"stage '{st.name}': parallel dp={par.get('dp')}: copies of a stage are `replicas` here",
                      hint=f"write parallel: {{replicas: {par.get('dp')}}}")
    return {k: par.get(k) for k in ("tp", "pp", "ep", "replicas") if par.get(k) > 1}


def _batches(st: FlatStage) -> tuple[int, ...]:
    """1, 2, 4, ... up to the stage's max_batch (its kind's default when unset)."""
    cap = KINDS[st.kind].max_batch(st.params)
    out, b = [], 1
    while b < cap:
        out.append(b)
        b *= 2
    return tuple(out + [cap])


def latency_at(st: FlatStage, works: list[StageWork], mix: list[RequestShape], dt: DeviceType,
               cfg: ParallelConfig) -> float:
    """Seconds one batch of `cfg.batch` requests of the mix spends in the stage."""
    profile = at_dtype(profile_stage(st.kind, st.model, st.params),
                       planned_dtype(st.kind, st.model, st.params, dt.device))
    costs = [dt.cost(st.kind, profile, wk, cfg) for wk in works]
    return mixed_cost(costs, mix).latency_s


def little_batch(rate: float, latency: Callable[[int], float], cap: int) -> int:
    """The batch a stage settles at when `rate` requests/s reach one copy: by Little's law
    the requests inside it are rate x time inside, and that time grows with the batch."""
    n = 1
    for _ in range(32):
        m = max(1, min(cap, math.ceil(rate * latency(n))))
        if m == n:
            break
        n = m
    return n
