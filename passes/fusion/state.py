"""The state fusion works on: a lowered stage graph, its nodes' classes, and the groups.

Every compute node starts in a group of its own; fuse_ops merges groups. Data edges
between groups see through view ops (a view is index arithmetic inside the kernel
that reads it), so a view between two groups is not a third party that would make
their merge look like a cycle. Buffer sizes use the example's sizes for dynamic dims.

A state may be narrowed to a window of the graph (`span`, positions [lo, hi) that no
group straddles): its units, edges, schedule and peak are then the window's. That is
exact for cycles, since a path between two nodes of the window only passes nodes
between them; for memory, what the window makes and later nodes read stays live to
its end. fuse_ops works window by window so that a deep graph fuses in linear time.
"""
from __future__ import annotations

import heapq
import operator
from dataclasses import dataclass, field

import torch
from torch import fx

from omnigraph.passes.fusion.classify import OpClass, classify, is_compute


@dataclass
class Group:
    id: int
    kind: str  # pointwise | reduction | matmul
    nodes: list[fx.Node]  # compute nodes, in graph order

    def __hash__(self) -> int:
        return self.id


def group_kind(cls: OpClass) -> str:
    return cls.value


def nbytes(node: fx.Node) -> int:
    """Bytes of a node's tensor value at the example's sizes (0 for non-tensors)."""
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return 0
    numel = 1
    for s in val.shape:
        numel *= _hint(s)
    return numel * val.element_size()


def _hint(s: object) -> int:
    if isinstance(s, torch.SymInt):
        hint = s.node.hint
        return int(hint) if hint is not None else 64
    return int(s)  # type: ignore[arg-type]


@dataclass
class FusionState:
    graph: fx.Graph
    classes: dict[fx.Node, OpClass] = field(default_factory=dict)
    order: dict[fx.Node, int] = field(default_factory=dict)
    groups: dict[int, Group] = field(default_factory=dict)
    group_of: dict[fx.Node, int] = field(default_factory=dict)
    # Memos. A state is not changed once built (merging makes a new one); the sources of a
    # node depend only on the classes, so every state of one graph shares that table.
    read_through: dict[fx.Node, list[fx.Node]] = field(default_factory=dict)
    memo: dict[str, object] = field(default_factory=dict)
    span: tuple[int, int] | None = None  # the window [lo, hi) of graph positions; None: all

    def windowed(self, span: tuple[int, int] | None) -> FusionState:
        """The same groups, narrowed to the positions `span` (None: the whole graph)."""
        return FusionState(self.graph, self.classes, self.order, self.groups, self.group_of, self.read_through,
                           span=span)

    def in_span(self, node: fx.Node) -> bool:
        return self.span is None or self.span[0] <= self.order[node] < self.span[1]

    def scoped_groups(self) -> list[int]:
        """The groups inside the window (all of them without one)."""
        if self.span is None:
            return list(self.groups)
        lo, hi = self.span
        return [g for g, group in self.groups.items()
                if lo <= self.order[group.nodes[0]] and self.order[group.nodes[-1]] < hi]

    def escapes(self, unit: object) -> bool:
        """Whether a node after the window reads the unit's value (never without a window)."""
        if self.span is None:
            return False
        nodes = self.groups[unit].nodes if isinstance(unit, int) else [unit]
        return any(u.op == "output" or self.order[u] >= self.span[1] for n in nodes for u in n.users)

    @classmethod
    def of(cls, graph: fx.Graph) -> FusionState:
        state = cls(graph)
        for i, node in enumerate(graph.nodes):
            state.order[node] = i
            state.classes[node] = classify(node)
            if is_compute(state.classes[node]):
                producer = node.args[0] if node.target is operator.getitem else None
                if producer in state.group_of:  # a top-k's values and indices: with the top-k
                    gid = state.group_of[producer]
                    state.groups[gid].nodes.append(node)
                    state.group_of[node] = gid
                    continue
                gid = len(state.groups)
                state.groups[gid] = Group(gid, group_kind(state.classes[node]), [node])
                state.group_of[node] = gid
        return state

    # -- edges ---------------------------------------------------------------------
    def sources(self, node: fx.Node) -> list[fx.Node]:
        """The nodes `node` reads, looking through view ops."""
        known = self.read_through.get(node)
        if known is not None:
            return known
        out, stack, seen = [], list(node.all_input_nodes), set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if self.classes[n] is OpClass.VIEW:
                stack.extend(n.all_input_nodes)
            else:
                out.append(n)
        self.read_through[node] = out
        return out

    def unit(self, node: fx.Node) -> object:
        """A schedulable unit: a group id, or a node that stays as it is."""
        return self.group_of.get(node, node)

    def unit_inputs(self, unit: object) -> set[object]:
        """The units this one reads (inside the window: what comes before it is given)."""
        nodes = self.groups[unit].nodes if isinstance(unit, int) else [unit]
        deps: set[object] = set()
        for n in nodes:
            reads = self.sources(n) if isinstance(unit, int) else n.all_input_nodes
            deps |= {self.unit(s) for s in reads if self.in_span(s)}
        deps.discard(unit)
        return deps

    def units(self) -> list[object]:
        seen: dict[object, None] = {}
        nodes = self.graph.nodes if self.span is None else self._window_nodes()
        for node in nodes:
            if self.classes[node] is OpClass.VIEW and node not in self.group_of and not self._read_eagerly(node):
                continue  # a view only kernels read: it is their index arithmetic
            seen.setdefault(self.unit(node))
        return list(seen)

    def _window_nodes(self) -> list[fx.Node]:
        if "nodes" not in self.memo:
            lo, hi = self.span  # type: ignore[misc]
            self.memo["nodes"] = [n for n in self.graph.nodes if lo <= self.order[n] < hi]
        return self.memo["nodes"]  # type: ignore[return-value]

    def _read_eagerly(self, node: fx.Node) -> bool:
        return any(u not in self.group_of and (self.classes[u] is not OpClass.VIEW or self._read_eagerly(u))
                   for u in node.users)

    def successors(self) -> dict[object, set[object]]:
        if "succ" not in self.memo:
            self.memo["succ"] = self._successors()
        return self.memo["succ"]  # type: ignore[return-value]

    def _successors(self) -> dict[object, set[object]]:
        succ: dict[object, set[object]] = {u: set() for u in self.units()}
        for u in succ:
            for d in self.unit_inputs(u):
                succ.setdefault(d, set()).add(u)
        return succ

    def schedule(self) -> list[object]:
        """Units in an order that respects every edge, earliest original position first."""
        succ = self.successors()
        indeg = {u: 0 for u in succ}
        for u in succ:
            for v in succ[u]:
                indeg[v] += 1
        pos = {u: self._pos(u) for u in succ}
        ready = [(pos[u], i, u) for i, u in enumerate(succ) if indeg[u] == 0]
        heapq.heapify(ready)
        out, tick = [], len(succ)
        while ready:
            _, _, u = heapq.heappop(ready)
            out.append(u)
            for v in succ[u]:
                indeg[v] -= 1
                if indeg[v] == 0:
                    tick += 1
                    heapq.heappush(ready, (pos[v], tick, v))
        if len(out) != len(succ):
            raise ValueError("the fused graph has a cycle")
        return out

    def _pos(self, unit: object) -> int:
        if isinstance(unit, int):
            return min(self.order[n] for n in self.groups[unit].nodes)
        return self.order[unit]  # type: ignore[index]

    # -- merging ---------------------------------------------------------------------
    def merged(self, a: int, b: int) -> FusionState:
        """A copy with groups a and b as one (the kind is the caller's to set)."""
        state = FusionState(self.graph, self.classes, self.order, dict(self.groups), dict(self.group_of),
                            self.read_through, span=self.span)
        if "nodes" in self.memo:
            state.memo["nodes"] = self.memo["nodes"]
        ga, gb = self.groups[a], self.groups[b]
        nodes = sorted(ga.nodes + gb.nodes, key=self.order.__getitem__)
        state.groups[a] = Group(a, ga.kind, nodes)
        del state.groups[b]
        for n in gb.nodes:
            state.group_of[n] = a
        return state

    def outside_readers(self, gid: int) -> dict[fx.Node, bool]:
        """The group's nodes whose values something outside it reads."""
        members = set(self.groups[gid].nodes)
        out: dict[fx.Node, bool] = {}
        for n in members:
            for user in n.users:
                if user.op == "output" or self.reads_outside(user, members):
                    out[n] = True
        return out

    def reads_outside(self, user: fx.Node, members: set[fx.Node]) -> bool:
        """Whether `user` (of a member) reads it from outside the group: directly, or through a
        view that something outside reads."""
        if user in members:
            return False
        if self.classes[user] is OpClass.VIEW and user not in self.group_of:
            return any(self.reads_outside(u, members) or u.op == "output" for u in user.users) or not user.users
        return True
