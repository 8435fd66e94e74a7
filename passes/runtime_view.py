"""The runtime's view of the IR's stages: a `StageNode` (the plan schema the runtime owns) per
stage op. The plan emitter (codegen) builds the RuntimePlan from these; capture-stages uses
them to load each stage as the runtime would. Instances come from `#omni.place` when the
planner placed the stage, else one instance on the target's first device.
"""
from __future__ import annotations

from typing import Any

from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation, SSAValue

from omnigraph.dialect.checks import describe_value, params_of
from omnigraph.dialect.ops import StageOp
from omnigraph.dialect.types import _EdgeType
from omnigraph.kinds import KINDS
from omnigraph.runtime.plan import Batching, Binding, Instance, PortType, StageNode, StageResources

DEFAULT_DEVICE = "node0:cpu0"


def port_type(value: SSAValue, *, stream: bool | None = None) -> PortType:
    t = value.type
    assert isinstance(t, _EdgeType)
    return PortType(modality=t.mod, dtype=t.elem, shape=list(t.dims) if t.dims is not None else None,
                    stream=t.is_stream if stream is None else stream)


def bindings(op: Operation, ports: list[str]) -> list[Binding]:
    return [Binding(port=p, source=describe_value(v), modality=v.type.mod, stream=v.type.is_stream)
            for p, v in zip(ports, op.operands)]


def stage_node(op: StageOp, first_device: str = DEFAULT_DEVICE, output_sources: frozenset[str] = frozenset()) -> StageNode:
    """The stage as the runtime runs it. A port a pipeline output reads streams to the caller
    when the kind can stream it (`output_sources`: the values pipeline outputs read)."""
    params = params_of(op)
    kind = KINDS[op.kind.data]
    outputs = {}
    for port, value in zip(op.output_names, op.results):
        to_caller = f"{op.label}.{port}" in output_sources and port in kind.traits.streams
        outputs[port] = port_type(value, stream=value.type.is_stream or to_caller)
    batching = Batching(max_batch=kind.max_batch(params))
    if op.plan is not None:  # the planner's batch, within the user's max_batch
        batching.max_batch = op.plan.batch
    return StageNode(name=op.label, kind=kind.name, model=op.model.data if op.model else None,
                     params=params, inputs=bindings(op, op.input_names), outputs=outputs,
                     instances=instances(op, first_device), batching=batching, resources=resources(op),
                     settings_of=_decode_half(op) if params.get("phase") == "prefill" else None)


def _decode_half(op: StageOp) -> str | None:
    """The stage a prefill half hands its KV to (split-prefill-decode)."""
    return next((use.operation.label for r in op.results for use in r.uses
                 if isinstance(use.operation, StageOp)), None)


def resources(op: StageOp) -> StageResources:
    """What the planner gave each instance: its dtype (plan-parallel) and memory (plan-memory).
    An unplanned stage gets none: it runs at its params' dtype with an unbounded KV pool."""
    dtype = (op.plan.dtype or None) if op.plan is not None else None
    swap = bool(op.plan.swap) if op.plan is not None else False
    if op.mem is None:
        return StageResources(dtype=dtype, swap=swap)
    mem = op.mem
    kv = mem.get("kv") if KINDS[op.kind.data].traits.kv_cache else None
    return StageResources(dtype=dtype, weights_bytes=mem.get("weights"), kv_bytes=kv, arena_bytes=mem.get("arena"),
                          swap=swap)


def instances(op: StageOp, first_device: str) -> list[Instance]:
    """One per replica; `#omni.place` lists the replicas' devices back to back. Without a
    placement, a stage that asks for `parallel: {tp, ep}` gets one instance with a rank slot
    per rank on the first device's node (on a CPU a device is just a slot)."""
    par = op.parallel
    tp = par.get("tp") if par is not None else 1
    ep = par.get("ep") if par is not None else 1
    pp = par.get("pp") if par is not None else 1
    cores = op.cores.as_list() if op.cores is not None else None
    if op.place is None:
        return [Instance(devices=_rank_slots(first_device, max(tp, ep) * pp), tp=tp, ep=ep, pp=pp)]
    devices = [d.data for d in op.place.devices.data]
    replicas = par.get("replicas") if par is not None else 1
    if replicas <= 0 or len(devices) % replicas:  # hand-written IR: one instance on them all
        return [Instance(devices=devices, tp=tp, ep=ep, pp=pp, cores=cores)]
    g = len(devices) // replicas
    return [Instance(devices=devices[i * g:(i + 1) * g], tp=tp, ep=ep, pp=pp, cores=cores) for i in range(replicas)]


def _rank_slots(first: str, ranks: int) -> list[str]:
    """`ranks` device names on the node of `first`: node0:cpu0, node0:cpu1, ..."""
    if ranks == 1:
        return [first]
    node, _, device = first.rpartition(":")
    stem = device.rstrip("0123456789") or "dev"
    return [f"{node}:{stem}{i}" if node else f"{stem}{i}" for i in range(ranks)]


def stage_nodes(module: ModuleOp) -> dict[str, StageNode]:
    """Every stage of the module (loop bodies included) by name."""
    return {op.label: stage_node(op) for op in module.walk() if isinstance(op, StageOp)}


__all__: list[Any] = ["DEFAULT_DEVICE", "bindings", "instances", "port_type", "stage_node", "stage_nodes"]
