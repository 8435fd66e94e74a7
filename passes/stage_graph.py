"""The one flattened stage graph the planner and the simulator share.

A pipeline, IR module or RuntimePlan alike, is a list of nodes: stages, routes and bounded
loops. Flattened, it is its stages in dependency order, each with the stages it reads
(routes and loops looked through), the pipeline inputs it reads, the route cases on its way
(`gates`) and how often it runs per request: `iters` from the loops around it (max_iters
unless the caller expects fewer), and `visits` = iters x the chance it runs at all (its own
route cases taken, 1/len(cases) each as no better prior is known before traffic is seen, and
no more often than the stages it reads). The planner plans for
`visits`; the simulator draws each request's cases and runs what they leave.

Two small adapters read the two forms (`from_module`, `from_plan`); `flatten` is written
once.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block

from omnigraph.dialect.checks import describe_value, params_of
from omnigraph.dialect.ops import LoopOp, OutputOp, PipelineOp, RouteOp, StageOp
from omnigraph.errors import OmnigraphError
from omnigraph.runtime.plan import LoopNode, RouteNode, RuntimePlan, StageNode


class GraphError(OmnigraphError):
    """A question about a graph it cannot answer (a loop it does not have)."""


# -- the common form ------------------------------------------------------------------------
@dataclass
class GNode:
    """One node of either form: a stage, a route or a loop, its reads by source name
    (`stage.port`, an input, a carried value) with their stream flag and modality."""

    type: str  # "stage" | "route" | "loop"
    name: str
    reads: list[tuple[str, bool, str]] = field(default_factory=list)
    kind: str = ""
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    cases: list[str] = field(default_factory=list)  # routes
    body: list[GNode] = field(default_factory=list)  # loops
    carry: dict[str, str] = field(default_factory=dict)  # loops: carried name -> initial source
    max_iters: int = 1
    source: Any = None  # the StageOp or StageNode it stands for


@dataclass
class FlatStage:
    name: str
    kind: str
    model: str | None
    params: dict[str, Any]
    source: Any  # StageOp (from IR) or StageNode (from a plan)
    reads: list[tuple[str, bool]] = field(default_factory=list)  # (producer stage, stream edge)
    inputs: list[str] = field(default_factory=list)  # pipeline inputs it reads (through routes too)
    feeds: list[str] = field(default_factory=list)  # modalities of the inputs it reads directly
    gates: set[str] = field(default_factory=set)  # route cases on its way ("route.case")
    iters: float = 1.0  # expected runs per request (loop bodies)
    visits: float = 1.0  # iters x the chance its route cases are taken

    @property
    def op(self) -> StageOp:
        """The stage op (graphs made from IR)."""
        assert isinstance(self.source, StageOp), "a graph made from a plan has no ops"
        return self.source

    @property
    def node(self) -> StageNode:
        """The plan's stage node (graphs made from a plan)."""
        assert isinstance(self.source, StageNode), "a graph made from IR has no plan nodes"
        return self.source

    @property
    def preds(self) -> list[tuple[str, bool]]:
        return self.reads


@dataclass
class StageGraph:
    stages: dict[str, FlatStage]  # in dependency order
    outputs: list[str]  # stages whose values are pipeline outputs
    text_output: str | None  # the stage behind the (first) text output, when one stage is
    audio_output: str | None
    routes: dict[str, list[str]]  # route -> its cases

    def ordered(self) -> list[FlatStage]:
        return list(self.stages.values())

    def choose(self, rng: random.Random, weights: dict[str, dict[str, float]]) -> list[str]:
        """The stages one request runs: draw each route's case, skip what it rules out."""
        taken = set()
        for route, cases in self.routes.items():
            w = weights.get(route, {})
            taken.add(f"{route}.{rng.choices(cases, [w.get(c, 1.0) for c in cases])[0]}")
        doomed: set[str] = set()
        for name, st in self.stages.items():
            if any(g not in taken for g in st.gates) or any(p in doomed for p, _ in st.reads):
                doomed.add(name)
        needed: set[str] = set()
        readers: dict[str, list[str]] = {n: [] for n in self.stages}
        for name, st in self.stages.items():
            for p, _ in st.reads:
                readers[p].append(name)
        for name in reversed(self.stages):
            if name not in doomed and (name in self.outputs or any(r in needed for r in readers[name])):
                needed.add(name)
        return [n for n in self.stages if n in needed]


# -- adapters -------------------------------------------------------------------------------
def pipeline_of(module: ModuleOp) -> PipelineOp:
    return next(op for op in module.ops if isinstance(op, PipelineOp))


def from_module(module: ModuleOp) -> tuple[list[GNode], dict[str, tuple[str, str]]]:
    """The module's nodes, and its outputs as name -> (source, modality)."""
    block = pipeline_of(module).block
    outputs = {op.port_name.data: (describe_value(op.value), op.value.type.mod)
               for op in block.ops if isinstance(op, OutputOp)}
    return _ir_nodes(block), outputs


def _ir_reads(values: Any) -> list[tuple[str, bool, str]]:
    return [(describe_value(v), v.type.is_stream, v.type.mod) for v in values]


def _ir_nodes(block: Block) -> list[GNode]:
    nodes = []
    for op in block.ops:
        if isinstance(op, StageOp):
            nodes.append(GNode("stage", op.label, _ir_reads(op.operands), op.kind.data,
                               op.model.data if op.model else None, params_of(op), source=op))
        elif isinstance(op, RouteOp):
            nodes.append(GNode("route", op.label, _ir_reads(op.operands), cases=op.output_names))
        elif isinstance(op, LoopOp):
            nodes.append(GNode("loop", op.label, body=_ir_nodes(op.body.block), max_iters=op.iterations,
                               carry={c: describe_value(v) for c, v in zip(op.carry_names, op.inits)}))
    return nodes


def from_plan(plan: RuntimePlan) -> tuple[list[GNode], dict[str, tuple[str, str]]]:
    outputs = {name: (source, plan.output_types[name].modality) for name, source in plan.outputs.items()}
    return [_plan_node(n) for n in plan.nodes], outputs


def _plan_node(node: Any) -> GNode:
    reads = [(b.source, b.stream, b.modality) for b in getattr(node, "inputs", [])]
    if isinstance(node, StageNode):
        return GNode("stage", node.name, reads, node.kind, node.model, node.params, source=node)
    if isinstance(node, RouteNode):
        return GNode("route", node.name, reads, cases=list(node.cases))
    assert isinstance(node, LoopNode)
    return GNode("loop", node.name, body=[_plan_node(n) for n in node.body], max_iters=node.max_iters,
                 carry={b.port: b.source for b in node.carry})


# -- flattening -----------------------------------------------------------------------------
@dataclass
class _Deps:
    reads: list[tuple[str, bool]] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    gates: set[str] = field(default_factory=set)


def flatten(nodes: list[GNode], outputs: dict[str, tuple[str, str]],
            loop_iters: dict[str, float] | None = None) -> StageGraph:
    """Stage-to-stage edges through routes, loop bodies as stages run `iters` times."""
    by_name: dict[str, GNode] = {}
    for node in nodes:
        by_name[node.name] = node
        by_name.update({n.name: n for n in node.body})
    iters = loop_iters or {}
    for name in iters:
        if by_name.get(name) is None or by_name[name].type != "loop":
            raise GraphError(f"loop_iters names '{name}', which is not a loop of the pipeline")

    def resolve(source: str, carry: dict[str, str], stream: bool, into: _Deps) -> None:
        if source in carry:
            resolve(carry[source], {}, stream, into)
            return
        name, dot, port = source.partition(".")
        node = by_name.get(name)
        if not dot or node is None:
            if source not in into.inputs:
                into.inputs.append(source)
        elif node.type == "stage":
            if (name, stream) not in into.reads:
                into.reads.append((name, stream))
        elif node.type == "route":
            into.gates.add(f"{name}.{port}")
            for src, _, _ in node.reads:  # the data, and the key that decides
                resolve(src, carry, False, into)
        else:  # a loop's result: everything in its body
            for n in node.body:
                if n.type == "stage" and (n.name, False) not in into.reads:
                    into.reads.append((n.name, False))

    stages: dict[str, FlatStage] = {}
    routes: dict[str, list[str]] = {}
    for node in nodes:
        body = node.body if node.type == "loop" else [node]
        expected = 1.0
        if node.type == "loop":
            expected = float(iters.get(node.name, node.max_iters))
            if not 0 < expected <= node.max_iters:
                raise GraphError(f"loop '{node.name}': expected iterations {expected:g} must be "
                                 f"in (0, {node.max_iters}] (its max_iters)")
        for n in body:
            if n.type == "route":
                routes[n.name] = list(n.cases)
                continue
            deps = _Deps()
            for src, stream, _ in n.reads:
                resolve(src, node.carry, stream, deps)
            for src in node.carry.values():  # a loop starts once all its carries are in
                resolve(src, {}, False, deps)
            feeds = [mod for src, _, mod in n.reads if "." not in src and src not in node.carry]
            stages[n.name] = FlatStage(n.name, n.kind, n.model, n.params, n.source, deps.reads, deps.inputs,
                                       feeds, deps.gates, expected)
    chance: dict[str, float] = {}  # that a request runs it: its own cases', and its producers'
    for st in stages.values():
        own = 1.0
        for gate in st.gates:
            own /= max(1, len(routes.get(gate.partition(".")[0], [])))
        chance[st.name] = min([own, *(chance[p] for p, _ in st.reads if p in chance)])
        st.visits = st.iters * chance[st.name]

    out_stages: list[str] = []
    text = audio = None
    for source, modality in outputs.values():
        probe = _Deps()
        resolve(source, {}, False, probe)
        producers = [p for p, _ in probe.reads]
        out_stages += [p for p in producers if p not in out_stages]
        if len(producers) == 1:
            if modality == "text" and text is None:
                text = producers[0]
            elif modality == "audio" and audio is None:
                audio = producers[0]
    return StageGraph(stages, out_stages, text, audio, routes)


def stage_graph(module: ModuleOp) -> list[FlatStage]:
    """The module's stages, producers before consumers, for the planning passes."""
    return flatten(*from_module(module)).ordered()


def plan_graph(plan: RuntimePlan, loop_iters: dict[str, float] | None = None) -> StageGraph:
    """The plan flattened, for the simulator."""
    return flatten(*from_plan(plan), loop_iters)
