"""Drawing a compiled pipeline: Mermaid (for Markdown) and Graphviz DOT.

Drawn from the IR after type inference, so edges show what the compiler knows:
modality and element type, dashed for stream edges, loops as clusters.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block, OpResult, Operation, SSAValue

from omnigraph.dialect.ops import InputOp, LoopOp, OutputOp, PipelineOp, PortedOp, YieldOp
from omnigraph.dialect.types import _EdgeType


@dataclass
class _Graph:
    nodes: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (label, shape)
    clusters: dict[str, list[str]] = field(default_factory=dict)  # loop id -> member ids
    edges: list[tuple[str, str, str, bool]] = field(default_factory=list)  # src, dst, label, stream


def _node_id(value: SSAValue, block_owner: dict[int, str]) -> str:
    owner = value.owner
    if isinstance(owner, Block):
        return block_owner[id(owner)]
    if isinstance(owner, InputOp):
        return f"in_{owner.port_name.data}"
    return owner.sym_name.data


def _edge_label(value: SSAValue, port: str) -> str:
    """`port: modality`, led by the producer's port when it says more: a route's case
    (`understand → x`), a stage's named output (`feedback → in0`)."""
    t = value.type
    typed = f"{t.mod}{' ' + t.elem if t.elem else ''}" if isinstance(t, _EdgeType) else ""
    owner = value.owner
    out = ""
    if isinstance(owner, PortedOp) and isinstance(value, OpResult):
        names = owner.output_names
        out = names[value.index] if value.index < len(names) else ""
        if owner.name == "omni.route":
            out = f"case {out}"
    lead = f"{out} → " if out and out != port else ""
    return f"{lead}{port}: {typed}" if typed else f"{lead}{port}"


def _collect(module: ModuleOp) -> tuple[str, _Graph]:
    pipeline = next(op for op in module.ops if isinstance(op, PipelineOp))
    g = _Graph()
    block_owner: dict[int, str] = {}

    def walk(block: Block, cluster: str | None) -> None:
        for op in block.ops:
            if isinstance(op, InputOp):
                g.nodes[f"in_{op.port_name.data}"] = (f"{op.port_name.data}: {op.value.type.mod}", "input")
            elif isinstance(op, OutputOp):
                nid = f"out_{op.port_name.data}"
                g.nodes[nid] = (f"{op.port_name.data}: {op.value.type.mod}", "output")
                g.edges.append((_node_id(op.value, block_owner), nid, "", op.value.type.is_stream))
            elif isinstance(op, PortedOp):
                kind = op.properties["kind"].data if op.name == "omni.stage" else "route"
                g.nodes[op.label] = (f"{op.label}\\n{kind}", "route" if kind == "route" else "stage")
                if cluster:
                    g.clusters[cluster].append(op.label)
                _wire(op, op.input_names)
            elif isinstance(op, LoopOp):
                block_owner[id(op.body.block)] = op.label
                g.nodes[op.label] = (f"{op.label}\\nloop ≤{op.iterations}", "loop")
                g.clusters[op.label] = []
                _wire(op, op.carry_names)
                walk(op.body.block, op.label)
            elif isinstance(op, YieldOp) and cluster:
                for v, port in zip(op.values, ["until", *["next" for _ in op.values[1:]]]):
                    g.edges.append((_node_id(v, block_owner), cluster, port, False))

    def _wire(op: Operation, ports: list[str]) -> None:
        for value, port in zip(op.operands, ports):
            src = _node_id(value, block_owner)
            if src == getattr(op, "label", None):
                continue
            g.edges.append((src, op.label, _edge_label(value, port), value.type.is_stream))

    walk(pipeline.block, None)
    return pipeline.sym_name.data, g


def to_mermaid(module: ModuleOp) -> str:
    name, g = _collect(module)
    shapes = {"input": ('(["', '"])'), "output": ('(["', '"])'), "stage": ('["', '"]'),
              "route": ('{"', '"}'), "loop": ('[["', '"]]')}
    lines = ["flowchart LR", f"  %% pipeline {name}"]
    members = {m for ms in g.clusters.values() for m in ms}
    for nid, (label, shape) in g.nodes.items():
        if nid not in members and nid not in g.clusters:
            open_, close = shapes[shape]
            lines.append(f"  {nid}{open_}{label.replace(chr(92) + 'n', '<br/>')}{close}")
    for loop, ms in g.clusters.items():
        lines.append(f'  subgraph {loop}["{g.nodes[loop][0].replace(chr(92) + "n", " ")}"]')
        for m in ms:
            open_, close = shapes[g.nodes[m][1]]
            lines.append(f"    {m}{open_}{g.nodes[m][0].replace(chr(92) + 'n', '<br/>')}{close}")
        lines.append("  end")
    for src, dst, label, stream in g.edges:
        arrow = "-.->" if stream else "-->"
        lines.append(f"  {src} {arrow}{'|' + label + '|' if label else ''} {dst}")
    return "\n".join(lines) + "\n"


def to_dot(module: ModuleOp) -> str:
    name, g = _collect(module)
    shapes = {"input": "ellipse", "output": "ellipse", "stage": "box", "route": "diamond", "loop": "box3d"}
    lines = [f'digraph "{name}" {{', "  rankdir=LR;", '  node [fontname="Helvetica"];']
    members = {m for ms in g.clusters.values() for m in ms}
    for nid, (label, shape) in g.nodes.items():
        if nid not in members and nid not in g.clusters:
            lines.append(f'  "{nid}" [label="{label}", shape={shapes[shape]}];')
    for loop, ms in g.clusters.items():
        lines.append(f'  subgraph "cluster_{loop}" {{')
        lines.append(f'    label="{g.nodes[loop][0].replace(chr(92) + "n", " ")}"; style=rounded; labeljust=l; labelloc=t;')
        lines.append(f'    "{loop}" [label="{loop}", shape=point];')
        for m in ms:
            lines.append(f'    "{m}" [label="{g.nodes[m][0]}", shape={shapes[g.nodes[m][1]]}];')
        lines.append("  }")
    for src, dst, label, stream in g.edges:
        style = ", style=dashed" if stream else ""
        # Edges into a loop's anchor take external labels, which Graphviz keeps off the lines.
        key = "xlabel" if dst in g.clusters else "label"
        lines.append(f'  "{src}" -> "{dst}" [{key}="{label}"{style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"
