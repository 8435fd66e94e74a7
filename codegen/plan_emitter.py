"""IR → RuntimePlan (JSON): the runtime's view of a compiled pipeline.

Reads the typed, verified omni module. A planned stage gets one instance per replica on the
devices `#omni.place` lists and the batch plan-parallel chose; an unplanned one, one
instance on the target's first device.
"""
from __future__ import annotations

from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block, Operation, SSAValue

from omnigraph.dialect.checks import describe_value, params_of
from omnigraph.dialect.values import from_attr
from omnigraph.dialect.ops import InputOp, LoopOp, OutputOp, PipelineOp, RouteOp, StageOp, YieldOp
from omnigraph.dialect.types import _EdgeType
from omnigraph.kinds import KINDS
from omnigraph.runtime.executor import STREAMING_PORTS
from omnigraph.runtime.plan import (
    Batching, Binding, Instance, LoopNode, PortType, RouteNode, RuntimePlan, StageNode,
)

DEFAULT_DEVICE = "node0:cpu0"


def port_type(value: SSAValue, *, stream: bool | None = None) -> PortType:
    t = value.type
    assert isinstance(t, _EdgeType)
    return PortType(modality=t.mod, dtype=t.elem, shape=list(t.dims) if t.dims is not None else None,
                    stream=t.is_stream if stream is None else stream)


def _bindings(op: Operation, ports: list[str]) -> list[Binding]:
    return [Binding(port=p, source=describe_value(v), modality=v.type.mod, stream=v.type.is_stream)
            for p, v in zip(ports, op.operands)]


def _batching(kind: str, params: dict) -> Batching:
    field = KINDS[kind].params.model_fields.get("max_batch")
    default = field.default if field is not None else Batching().max_batch
    return Batching(max_batch=params.get("max_batch", default))


class _Emitter:
    def __init__(self, devices: list[str], output_sources: set[str]) -> None:
        self.devices = devices
        self.output_sources = output_sources

    def stage(self, op: StageOp) -> StageNode:
        params = params_of(op)
        kind = op.kind.data
        outputs = {}
        for port, value in zip(op.output_names, op.results):
            to_caller = f"{op.label}.{port}" in self.output_sources and port in STREAMING_PORTS.get(kind, ())
            outputs[port] = port_type(value, stream=value.type.is_stream or to_caller)
        batching = _batching(kind, params)
        if op.plan is not None:  # the planner's batch, within the user's max_batch
            batching.max_batch = int(from_attr(op.plan)["batch"])
        return StageNode(name=op.label, kind=kind, model=op.model.data if op.model else None,
                         params=params, inputs=_bindings(op, op.input_names), outputs=outputs,
                         instances=self.instances(op), batching=batching)

    def instances(self, op: StageOp) -> list[Instance]:
        """One per replica; `#omni.place` lists the replicas' devices back to back. Without
        a placement, a stage that asks for `parallel: {tp, ep}` gets one instance with a
        rank slot per rank on the first device's node (on a CPU a device is just a slot)."""
        par = op.parallel
        tp = par.get("tp") if par is not None else 1
        ep = par.get("ep") if par is not None else 1
        if op.place is None:
            return [Instance(devices=_rank_slots(self.devices[0], max(tp, ep)), tp=tp, ep=ep)]
        devices = [d.data for d in op.place.devices.data]
        replicas = par.get("replicas") if par is not None else 1
        if replicas <= 0 or len(devices) % replicas:
            return [Instance(devices=devices, tp=tp, ep=ep)]  # hand-written IR: one instance on them all
        g = len(devices) // replicas
        return [Instance(devices=devices[i * g:(i + 1) * g], tp=tp, ep=ep) for i in range(replicas)]

    def route(self, op: RouteOp) -> RouteNode:
        params = params_of(op)
        return RouteNode(name=op.label, inputs=_bindings(op, op.input_names), cases=op.output_names,
                         default=params.get("default"),
                         outputs={p: port_type(v) for p, v in zip(op.output_names, op.results)})

    def loop(self, op: LoopOp) -> LoopNode:
        body = self.block(op.body.block)
        term = op.body.block.last_op
        assert isinstance(term, YieldOp)
        keys = [describe_value(v) for v in term.values]
        return LoopNode(name=op.label, max_iters=op.iterations, carry=_bindings(op, op.carry_names),
                        body=body, until=keys[0], next=dict(zip(op.carry_names, keys[1:])),
                        outputs={c: port_type(v) for c, v in zip(op.carry_names, op.results)})

    def block(self, block: Block) -> list:
        nodes = []
        for op in block.ops:
            if isinstance(op, StageOp):
                nodes.append(self.stage(op))
            elif isinstance(op, RouteOp):
                nodes.append(self.route(op))
            elif isinstance(op, LoopOp):
                nodes.append(self.loop(op))
        return nodes


def _rank_slots(first: str, ranks: int) -> list[str]:
    """`ranks` device names on the node of `first`: node0:cpu0, node0:cpu1, ..."""
    if ranks == 1:
        return [first]
    node, _, device = first.rpartition(":")
    stem = device.rstrip("0123456789") or "dev"
    return [f"{node}:{stem}{i}" if node else f"{stem}{i}" for i in range(ranks)]


def emit_plan(module: ModuleOp, devices: list[str] | None = None) -> RuntimePlan:
    pipeline = next(op for op in module.ops if isinstance(op, PipelineOp))
    ops = list(pipeline.block.ops)
    outputs = {op.port_name.data: op.value for op in ops if isinstance(op, OutputOp)}
    sources = {name: describe_value(v) for name, v in outputs.items()}
    emitter = _Emitter(devices or [DEFAULT_DEVICE], set(sources.values()))
    nodes = emitter.block(pipeline.block)
    produced = {f"{n.name}.{p}": t for n in nodes for p, t in n.outputs.items()}
    return RuntimePlan(
        pipeline=pipeline.sym_name.data,
        target=pipeline.target.data if pipeline.target else None,
        inputs={op.port_name.data: port_type(op.value) for op in ops if isinstance(op, InputOp)},
        outputs=sources,
        # An output streams to the caller when the port it reads is streamed.
        output_types={name: produced.get(sources[name]) or port_type(v) for name, v in outputs.items()},
        nodes=nodes,
    )
