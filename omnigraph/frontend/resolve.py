"""Raw document → validated, normalized PipelineSpec, with located errors.

Pydantic checks the document's shape; this module checks what the schema cannot:
names, kinds, parameters per kind, port wiring, references, cycles. Positional
stage inputs become named ports, so every frontend yields an identical spec.
Type compatibility across edges is the dialect verifier's job (see lowering).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import networkx as nx
from pydantic import ValidationError

from omnigraph.frontend.messages import brief_int, schema_error, suggest
from omnigraph.frontend.model_checks import ModelChecks
from omnigraph.frontend.source import DocPath, SourceMap
from omnigraph import model_ref
from omnigraph.kinds import KINDS, StageKind
from omnigraph.names import is_name, shown
from omnigraph.spec import EdgeSpec, LoopSpec, PipelineSpec, StageSpec, stage_edges, stage_output_ports

_RESERVED = {"pipeline", "loop", "return", "until", "next", "stream", "max", "true", "false", "null"}


def build_spec(raw: Any, srcmap: SourceMap) -> PipelineSpec:
    if not isinstance(raw, dict):
        raise srcmap.error(
            f"a spec is a mapping with 'pipeline', 'inputs', 'stages' and 'outputs'; "
            f"got {type(raw).__name__}", ())
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        raise schema_error(exc, raw, srcmap) from None
    _Resolver(spec, srcmap).run()
    return spec


def _walk(value: Any, loc: DocPath = ()) -> Iterator[tuple[DocPath, Any]]:
    """Every scalar inside nested dicts and lists, with its path."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, (*loc, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, (*loc, i))
    else:
        yield loc, value


# -- semantic resolution ---------------------------------------------------------------
# Params only the planner writes (split-prefill-decode): a spec setting them is refused.
PLANNER_PARAMS = frozenset({"phase", "prefill_hidden"})


@dataclass(frozen=True)
class Producer:
    """What a reference names: a pipeline input, a stage port, a loop result or carry."""

    kind: str  # "input" | "stage" | "loop" | "carry"
    node: str  # the graph node it comes from ("" for pipeline inputs)
    port: str


class _Resolver(ModelChecks):
    def __init__(self, spec: PipelineSpec, srcmap: SourceMap) -> None:
        self.spec = spec
        self.srcmap = srcmap
        self.err = srcmap.error
        # Relative checkpoint folders are looked up beside the spec (then in the working directory).
        self.bases = [Path(srcmap.file).resolve().parent] if srcmap.file else []

    def run(self) -> None:
        spec = self.spec
        if not spec.stages and not spec.loops:
            raise self.err(f"pipeline '{spec.pipeline}' has no stages", ("pipeline",),
                           hint="add a `stages:` mapping (or stage lines in the DSL)")
        self.check_names()
        for name, stage in spec.stages.items():
            self.check_stage(stage, ("stages", name))
        for lname, loop in spec.loops.items():
            for name, stage in loop.stages.items():
                self.check_stage(stage, ("loops", lname, "stages", name))
        top = self.top_scope()
        self.check_graph(spec.stages, top, ("stages",), loops=spec.loops)
        for lname, loop in spec.loops.items():
            self.check_loop(lname, loop, top)
        for oname, out in spec.outputs.items():
            self.lookup(out.source, top, ("outputs", oname, "from"), f"output '{oname}'")

    # names ----------------------------------------------------------------------------
    def check_names(self) -> None:
        seen: dict[str, DocPath] = {}

        def claim(name: str, path: DocPath, what: str) -> None:
            if not is_name(name) or name in _RESERVED:
                raise self.err(f"'{shown(name)}' is not a valid {what} name", path, key=True,
                               hint="names are letters, digits and _, not starting with a digit, "
                                    "and not a DSL keyword")
            if name in seen:
                first = self.srcmap.locate(seen[name], key=True)
                raise self.err(f"duplicate name '{name}' ({what}); first defined at {first}", path,
                               key=True)
            seen[name] = path

        spec = self.spec
        for name in spec.inputs:
            claim(name, ("inputs", name), "input")
        for name in spec.stages:
            claim(name, ("stages", name), "stage")
        for lname, loop in spec.loops.items():
            claim(lname, ("loops", lname), "loop")
            for cname in loop.carry:
                claim(cname, ("loops", lname, "carry", cname), "carried value")
            for name in loop.stages:
                claim(name, ("loops", lname, "stages", name), "stage")
        for name in spec.outputs:
            if not is_name(name):
                raise self.err(f"'{shown(name)}' is not a valid output name", ("outputs", name), key=True,
                               hint="outputs are written as files named after them: letters, digits and _")

    # one stage ------------------------------------------------------------------------
    def check_stage(self, stage: StageSpec, path: DocPath) -> None:
        who = f"stage '{path[-1]}'"
        kind = KINDS.get(stage.kind)
        if kind is None:
            raise self.err(f"{who}: unknown stage kind '{stage.kind}'", (*path, "kind"),
                           hint=suggest(stage.kind, KINDS) or "kinds: " + ", ".join(KINDS))
        self.check_model(stage, kind, path)
        self.check_params(stage, kind, path)
        self.check_weights(stage, kind, path)
        if stage.outputs is not None and not kind.free_ports:
            raise self.err(f"{who}: 'outputs' can be declared only on custom stages; {kind.name} stages "
                           f"have fixed outputs", (*path, "outputs"), key=True)
        if kind.free_ports and not stage.outputs:
            raise self.err(f"{who}: a custom stage must declare its outputs, "
                           f"e.g. `outputs: {{y: embedding}}`", path, key=True)
        for port in stage.outputs or {}:
            if not is_name(port):
                raise self.err(f"{who}: '{shown(port)}' is not a valid port name", (*path, "outputs", port),
                               key=True)
        stage.inputs = self.normalize_inputs(stage, kind, (*path, "inputs"))

    def check_params(self, stage: StageSpec, kind: StageKind, path: DocPath) -> None:
        who = f"stage '{path[-1]}'"
        try:
            checked = kind.params.model_validate(stage.params, strict=False).model_dump()
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = tuple(err["loc"])
            ppath = (*path, "params", *loc)
            name = ".".join(str(p) for p in loc)
            if err["type"] == "extra_forbidden":
                known = [n for n in kind.params.model_fields]
                raise self.err(f"{who}: unknown parameter '{name}' for {kind.name} stages", ppath, key=True,
                               hint=suggest(str(loc[0]), known) or "parameters: " + ", ".join(known))
            if err["type"] == "missing":
                raise self.err(f"{who}: {kind.name} stage needs parameter '{name}'", (*path, "params"),
                               key=True)
            msg = "expected a name (letters, digits, _)" if err["type"] == "string_pattern_mismatch" \
                else err["msg"].removeprefix("Value error, ")
            raise self.err(f"{who} parameter '{name}': {msg}" if name else f"{who} parameters: {msg}", ppath)
        for apath, arch in model_ref.arch_refs(stage.params):
            found = model_ref.arch_problem(arch)
            if found is not None:
                raise self.err(f"{who} parameter '{'.'.join(apath)}': {found}", (*path, "params", *apath))
        for name in PLANNER_PARAMS & set(stage.params):
            raise self.err(f"{who}: '{name}' is the planner's choice, not a spec's (compile with --target and "
                           "--slo ttft=…,tpot=…: it splits prefill from decode where that pays)",
                           (*path, "params", name), key=True)
        # Later phases see the coerced values ("48" -> 48), in the order the spec wrote them.
        stage.params = {k: checked.get(k, v) for k, v in stage.params.items()}
        for loc, value in _walk(stage.params):
            name = ".".join(str(p) for p in loc)
            if isinstance(value, int) and not -2**63 <= value < 2**63:  # IR integers are i64
                raise self.err(f"{who} parameter '{name}': {brief_int(value)} does not fit in 64 bits",
                               (*path, "params", *loc))
            if isinstance(value, float) and not math.isfinite(value):
                raise self.err(f"{who} parameter '{name}': {value} is not a finite number",
                               (*path, "params", *loc))

    def normalize_inputs(self, stage: StageSpec, kind: StageKind, path: DocPath) -> dict[str, Any]:
        who = f"stage '{path[-2]}'"
        raw = stage.inputs
        named: dict[str, Any] = {}
        positional: list[tuple[int, EdgeSpec]] = []
        if isinstance(raw, list):
            positional = list(enumerate(raw))
        else:
            for key, value in raw.items():
                if key.startswith("$") and key[1:].isdigit():  # DSL: positional before named
                    positional.append((int(key[1:]), value))
                else:
                    named[key] = value
        slots = list(kind.inputs) if not kind.free_ports else []
        origin: dict[str, list[DocPath]] = {k: [(*path, k)] for k in named}
        raw_named = set(named)
        for index, edge in positional:
            ipath = (*path, index)
            if kind.free_ports:
                port_name = f"in{index}"
            else:
                while slots and slots[0].name in named and not slots[0].variadic:
                    slots.pop(0)
                if not slots:
                    raise self.err(f"{who}: too many inputs for a {kind.name} stage (ports: "
                                   f"{', '.join(p.name for p in kind.inputs)})", ipath)
                port = slots[0]
                port_name = port.name
                if not port.variadic:
                    slots.pop(0)
            if port_name in named:
                existing = named[port_name]
                named[port_name] = (existing if isinstance(existing, list) else [existing]) + [edge]
            else:
                named[port_name] = edge
            origin.setdefault(port_name, []).append(ipath)
        for port_name, value in named.items():
            port = kind.input_port(port_name)
            if port is None:
                known = [p.name for p in kind.inputs]
                raise self.err(f"{who}: {kind.name} has no input port '{port_name}'",
                               (*path, port_name), key=True,
                               hint=suggest(port_name, known) or "ports: " + ", ".join(known))
            if not is_name(port_name):
                raise self.err(f"{who}: '{shown(port_name)}' is not a valid port name", (*path, port_name),
                               key=True)
            if isinstance(value, list) and not port.variadic:
                if len(value) != 1:
                    raise self.err(f"{who} port '{port_name}': takes one input, got "
                                   f"{len(value)}", (*path, port_name))
                named[port_name] = value[0]
            if isinstance(value, list) and not value:
                raise self.err(f"{who} port '{port_name}': empty input list", (*path, port_name))
            if port.variadic and not kind.free_ports and not isinstance(value, list):
                # One edge into a variadic port is a list of one, whichever way it was written.
                named[port_name] = [value]
                span = self.srcmap.locate((*path, port_name))
                if span is not None and port_name in raw_named:
                    self.srcmap.add((*path, port_name, 0), span)
        for port in kind.inputs:
            if not port.optional and port.name not in named:
                raise self.err(f"{who}: required input port '{port.name}' is not wired", path, key=True,
                               hint=f"wire it: inputs: {{{port.name}: <input or stage.port>}}")
        # Locate normalized input paths at the source of each positional edge.
        for port_name, sources in origin.items():
            if sources != [(*path, port_name)]:
                many = isinstance(named[port_name], list)
                for i, src in enumerate(sources):
                    span = self.srcmap.locate(src)
                    if span is not None:
                        self.srcmap.add((*path, port_name, *((i,) if many else ())), span)
        order = [p.name for p in kind.inputs] if not kind.free_ports else list(named)
        return {p: named[p] for p in order if p in named}

    # references and the graph ---------------------------------------------------------
    def top_scope(self) -> dict[str, Any]:
        return {"inputs": set(self.spec.inputs), "stages": self.spec.stages, "loops": self.spec.loops,
                "carry": set(), "inner": {n: l for l, lp in self.spec.loops.items() for n in lp.stages}}

    def lookup(self, ref: str, scope: dict[str, Any], path: DocPath, user: str) -> Producer:
        """What `ref` names, as read by `user` (e.g. "stage 'talker' port 'text'")."""
        node, _, port = ref.partition(".")
        if not port:
            if node in scope["inputs"]:
                return Producer("input", "", node)
            if node in scope["carry"]:
                return Producer("carry", "", node)
            if node in scope["stages"] or node in scope["loops"]:
                raise self.err(f"{user}: '{node}' is a stage; name one of its outputs as `{node}.<port>`",
                               path, hint=self._ports_hint(node, scope))
            names = [*scope["inputs"], *scope["carry"], *scope["stages"]]
            raise self.err(f"{user}: unknown input '{node}'", path, hint=suggest(node, names))
        if node in scope["stages"]:
            ports = [p.name for p in stage_output_ports(scope["stages"][node])]
            if port not in ports:
                raise self.err(f"{user}: stage '{node}' has no output port '{port}'", path,
                               hint=suggest(port, ports) or "outputs: " + ", ".join(ports))
            return Producer("stage", node, port)
        if node == scope.get("self"):  # a loop's results exist only once it has finished
            raise self.err(f"{user}: inside loop '{node}', read its carried values "
                           f"({', '.join(self.spec.loops[node].carry)}), not its results", path)
        if node in scope["loops"]:
            carries = list(scope["loops"][node].carry)
            if port not in carries:
                raise self.err(f"{user}: loop '{node}' has no result '{port}'", path,
                               hint=suggest(port, carries) or "results: " + ", ".join(carries))
            return Producer("loop", node, port)
        if node in scope["inner"]:
            raise self.err(f"{user}: stage '{node}' is inside loop '{scope['inner'][node]}'; outside it, "
                           f"use the loop's results", path)
        if node in scope["inputs"] or node in scope["carry"]:
            raise self.err(f"{user}: '{node}' is an input, not a stage; refer to it as `{node}`", path)
        names = [*scope["stages"], *scope["loops"]]
        raise self.err(f"{user}: unknown stage '{node}'", path, hint=suggest(node, names))

    def _ports_hint(self, node: str, scope: dict[str, Any]) -> str:
        if node in scope["stages"]:
            return "outputs: " + ", ".join(p.name for p in stage_output_ports(scope["stages"][node]))
        return "results: " + ", ".join(scope["loops"][node].carry)

    def check_edge(self, edge: EdgeSpec, scope: dict[str, Any], path: DocPath, user: str) -> Producer:
        producer = self.lookup(edge.source, scope, path, user)
        if edge.stream and producer.kind not in ("stage",):
            raise self.err(f"{user}: only a stage output can be streamed; '{edge.source}' is a "
                           f"{'pipeline input' if producer.kind == 'input' else producer.kind + ' value'}",
                           path)
        return producer

    def check_graph(self, stages: dict[str, StageSpec], scope: dict[str, Any], base: DocPath,
                    loops: dict[str, LoopSpec] | None = None) -> None:
        graph = nx.DiGraph()
        graph.add_nodes_from([*stages, *(loops or {})])
        where: dict[tuple[str, str], tuple[DocPath, str]] = {}  # edge -> (its path, who reads it)
        for name, stage in stages.items():
            for port, i, edge in stage_edges(stage):
                raw_in = stage.inputs[port]
                epath = (*base, name, "inputs", port, *((i,) if isinstance(raw_in, list) else ()))
                user = f"stage '{name}' port '{port}'"
                producer = self.check_edge(edge, scope, epath, user)
                if producer.kind in ("stage", "loop") and producer.node in graph:
                    graph.add_edge(producer.node, name)
                    where.setdefault((producer.node, name), (epath, f"{user} reads '{edge.source}'"))
        for lname, loop in (loops or {}).items():
            for cname, edge in loop.carry.items():
                cpath, user = ("loops", lname, "carry", cname), f"loop '{lname}' carry '{cname}'"
                producer = self.check_edge(edge, scope, cpath, user)
                if producer.kind in ("stage", "loop"):
                    graph.add_edge(producer.node, lname)
                    where.setdefault((producer.node, lname), (cpath, f"{user} reads '{edge.source}'"))
            # Its stages, `until` and `next` may read outer values too: those run before the loop.
            reads = [(("loops", lname, "stages", sname, "inputs", port), f"stage '{sname}' port '{port}'",
                      edge.source) for sname, inner in loop.stages.items()
                     for port, _, edge in stage_edges(inner)]
            reads.append((("loops", lname, "until"), f"loop '{lname}' until", loop.until.source))
            reads += [(("loops", lname, "next", c), f"loop '{lname}' next '{c}'", out.source)
                      for c, out in loop.next.items()]
            for rpath, user, source in reads:
                node, _, port = source.partition(".")
                if port and node in graph and node != lname:
                    graph.add_edge(node, lname)
                    where.setdefault((node, lname), (rpath, f"{user} reads '{source}'"))
        if nx.is_directed_acyclic_graph(graph):  # linear; find_cycle only to explain one
            return
        cycle = nx.find_cycle(graph)
        names = [u for u, _ in cycle] + [cycle[0][0]]
        u, v = cycle[-1][0], cycle[-1][1]
        path, edge = where.get((u, v), ((*base, v), f"stage '{v}' reads '{u}'"))
        raise self.err(f"cycle between stages: {' -> '.join(names)} ({edge})", path,
                       hint="feedback needs a bounded `loop` (carry, until, next)")

    def check_loop(self, lname: str, loop: LoopSpec, top: dict[str, Any]) -> None:
        scope = {**top, "carry": set(loop.carry), "stages": {**top["stages"], **loop.stages},
                 "inner": {k: v for k, v in top["inner"].items() if v != lname},
                 "loops": {k: v for k, v in top["loops"].items() if k != lname}, "self": lname}
        self.check_graph(loop.stages, scope, ("loops", lname, "stages"))
        base = ("loops", lname)
        producer = self.check_edge(loop.until, scope, (*base, "until"), f"loop '{lname}' until")
        if producer.kind == "stage" and producer.node not in loop.stages:
            raise self.err(f"loop '{lname}': `until` must test a value computed inside the loop",
                           (*base, "until"))
        extra = [c for c in loop.next if c not in loop.carry]
        if extra:  # at the first name the loop does not carry
            raise self.err(f"loop '{lname}': `next` names '{extra[0]}', which the loop does not carry",
                           (*base, "next", extra[0]), key=True,
                           hint="carried: " + ", ".join(loop.carry))
        missing = [c for c in loop.carry if c not in loop.next]
        if missing:
            raise self.err(f"loop '{lname}': no `next` for {', '.join(missing)}", (*base, "next"), key=True)
        for cname, out in loop.next.items():
            self.lookup(out.source, scope, (*base, "next", cname), f"loop '{lname}' next '{cname}'")
