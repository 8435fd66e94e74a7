"""IR → RuntimePlan (JSON): the runtime's view of a compiled pipeline.

Reads the typed, verified omni module. A planned stage gets one instance per replica on the
devices `#omni.place` lists and the batch plan-parallel chose; an unplanned one, one
instance on the target's first device.
"""
from __future__ import annotations

from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block

from omnigraph.dialect.checks import describe_value, params_of
from omnigraph.dialect.ops import InputOp, LoopOp, OutputOp, PipelineOp, RouteOp, StageOp, YieldOp
from omnigraph.passes.runtime_view import DEFAULT_DEVICE, bindings, port_type, stage_node
from omnigraph.runtime.plan import LoopNode, RouteNode, RuntimePlan, StageNode


class _Emitter:
    def __init__(self, devices: list[str], output_sources: set[str]) -> None:
        self.devices = devices
        self.output_sources = frozenset(output_sources)

    def stage(self, op: StageOp) -> StageNode:
        return stage_node(op, self.devices[0], self.output_sources)

    def route(self, op: RouteOp) -> RouteNode:
        params = params_of(op)
        return RouteNode(name=op.label, inputs=bindings(op, op.input_names), cases=op.output_names,
                         default=params.get("default"),
                         outputs={p: port_type(v) for p, v in zip(op.output_names, op.results)})

    def loop(self, op: LoopOp) -> LoopNode:
        body = self.block(op.body.block)
        term = op.body.block.last_op
        assert isinstance(term, YieldOp)
        keys = [describe_value(v) for v in term.values]
        return LoopNode(name=op.label, max_iters=op.iterations, carry=bindings(op, op.carry_names),
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
