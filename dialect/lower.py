"""Lowering: a resolved PipelineSpec → an `omni` module, plus where each op came from.

Ops are emitted in dependency order (declaration order breaks ties), so the block
is in SSA order. Edge types carry only the modality here; `infer-types` refines
them. A stage output read by any `stream` edge becomes an `!omni.stream`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Attribute, Block, Operation, SSAValue

from omnigraph.dialect.attrs import ParallelAttr
from omnigraph.dialect.ops import InputOp, LoopOp, OutputOp, PipelineOp, RouteOp, StageOp, YieldOp
from omnigraph.dialect.types import StreamType, TensorType
from omnigraph.dialect.values import to_attr
from omnigraph.spec import stage_edges, stage_output_ports
from omnigraph.frontend.source import DocPath
from omnigraph.kinds import SAME_AS_INPUT
from omnigraph.spec import LoopSpec, PipelineSpec, StageSpec, TypeSpec


@dataclass
class Origins:
    """Spec paths of ops and of their operands, to locate verifier errors."""

    ops: dict[int, DocPath] = field(default_factory=dict)
    operands: dict[tuple[int, int], DocPath] = field(default_factory=dict)

    def note(self, op: Operation, path: DocPath, operand_paths: list[DocPath] = ()) -> None:
        self.ops[id(op)] = path
        for i, p in enumerate(operand_paths):
            self.operands[(id(op), i)] = p

    def path(self, op: Operation, operand: int | None = None) -> DocPath | None:
        if operand is not None and (id(op), operand) in self.operands:
            return self.operands[(id(op), operand)]
        return self.ops.get(id(op))


def lower(spec: PipelineSpec, target: str | None = None) -> tuple[ModuleOp, Origins]:
    return _Lowering(spec).run(target)


def _type_of(t: TypeSpec) -> Attribute:
    return TensorType(t.modality, t.dtype or "?", t.shape)


class _Lowering:
    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self.origins = Origins()
        self.streamed = {
            e.source for s in self._all_stages() for _, _, e in stage_edges(s) if e.stream
        }

    def _all_stages(self) -> list[StageSpec]:
        return [*self.spec.stages.values(), *(s for l in self.spec.loops.values() for s in l.stages.values())]

    def run(self, target: str | None) -> tuple[ModuleOp, Origins]:
        spec = self.spec
        pipeline = PipelineOp(spec.pipeline, target)
        self.origins.note(pipeline, ("pipeline",))
        block = pipeline.block
        values: dict[str, SSAValue] = {}
        for name, t in spec.inputs.items():
            op = InputOp(name, _type_of(t))
            op.value.name_hint = name
            block.add_op(op)
            self.origins.note(op, ("inputs", name))
            values[name] = op.value
        nodes: dict[str, StageSpec | LoopSpec] = {**spec.stages, **spec.loops}
        for name in _dependency_order(nodes):
            node = nodes[name]
            if isinstance(node, LoopSpec):
                self.emit_loop(name, node, block, values)
            else:
                self.emit_stage(name, node, block, values, ("stages", name))
        for name, out in spec.outputs.items():
            op = OutputOp(name, values[out.source], out.modality)
            block.add_op(op)
            self.origins.note(op, ("outputs", name), [("outputs", name, "from")])
        return ModuleOp([pipeline]), self.origins

    def emit_stage(self, name: str, stage: StageSpec, block: Block, values: dict[str, SSAValue],
                   path: DocPath) -> None:
        inputs, paths = [], []
        for port, i, edge in stage_edges(stage):
            inputs.append((port, values[edge.source]))
            many = isinstance(stage.inputs[port], list)
            paths.append((*path, "inputs", port, *((i,) if many else ())))
        params = to_attr(stage.params) if stage.params else None
        if stage.kind == "route":
            data = dict(inputs)["data"]
            key = dict(inputs)["key"]
            op: Operation = RouteOp.build_route(name, data, key, stage.params["cases"], params)
            paths = [paths[[p for p, _ in inputs].index("data")], paths[[p for p, _ in inputs].index("key")]]
        else:
            declared = stage.outputs or {}
            outputs = []
            for port in stage_output_ports(stage):
                assert port.modality != SAME_AS_INPUT
                t = declared[port.name] if port.name in declared else TypeSpec(modality=port.modality)
                cls = StreamType if f"{name}.{port.name}" in self.streamed else TensorType
                outputs.append((port.name, cls(t.modality, t.dtype or "?", t.shape)))
            parallel = ParallelAttr(**stage.parallel.model_dump()) if stage.parallel else None
            op = StageOp.build_stage(name, stage.kind, inputs, outputs, model=stage.model, params=params,
                                     parallel=parallel)
        block.add_op(op)
        self.origins.note(op, path, paths)
        for port, result in zip(op.output_names, op.results):
            result.name_hint = f"{name}_{port}"
            values[f"{name}.{port}"] = result

    def emit_loop(self, name: str, loop: LoopSpec, block: Block, values: dict[str, SSAValue]) -> None:
        base = ("loops", name)
        inits = [(c, values[e.source]) for c, e in loop.carry.items()]
        op = LoopOp.build_loop(name, loop.max_iters, inits)
        block.add_op(op)
        self.origins.note(op, base, [(*base, "carry", c) for c in loop.carry])
        body = op.body.block
        scope = dict(values)
        scope.update(zip(loop.carry, body.args))
        for stage_name in _dependency_order(loop.stages):
            self.emit_stage(stage_name, loop.stages[stage_name], body, scope, (*base, "stages", stage_name))
        yielded = [scope[loop.until.source], *(scope[loop.next[c].source] for c in loop.carry)]
        term = YieldOp(yielded)
        body.add_op(term)
        self.origins.note(term, base, [(*base, "until"), *((*base, "next", c) for c in loop.carry)])
        for carry, result in zip(loop.carry, op.results):
            result.name_hint = f"{name}_{carry}"
            values[f"{name}.{carry}"] = result


def _dependency_order(nodes: dict[str, StageSpec | LoopSpec]) -> list[str]:
    graph = nx.DiGraph()
    order = {n: i for i, n in enumerate(nodes)}
    graph.add_nodes_from(nodes)
    for name, node in nodes.items():
        stages = node.stages.values() if isinstance(node, LoopSpec) else [node]
        sources = [e.source for s in stages for _, _, e in stage_edges(s)]
        if isinstance(node, LoopSpec):
            sources += [e.source for e in node.carry.values()]
            sources += [node.until.source, *(out.source for out in node.next.values())]
        for source in sources:
            producer = source.partition(".")[0]
            if "." in source and producer in nodes and producer != name:
                graph.add_edge(producer, name)
    return list(nx.lexicographical_topological_sort(graph, key=order.__getitem__))
