"""Fusing a captured stage: group each entry's ops into kernels, greedily, to a fixed point.

Per entry: lower to the ATen ops fusion knows (fx_lower), start with one group per compute
op, then repeatedly merge the legal pair of groups (legality) that saves the most bytes
(score) until no legal merge saves any. Candidate pairs share a buffer: producer and
consumer, or two readers of one input. A deep graph is fused window by window (overlapping;
state.py says why that is exact for cycles), which keeps the pass linear in the graph's
length. Each final group becomes one Triton kernel (emitter.py); a group the emitter cannot
express stays as its eager ops, and a matmul with nothing fused into it stays with the vendor
library. `fuse_stage(capture)` is the unit's entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omnigraph.passes.fusion import legality as fusion_legality, score as fusion_score
from omnigraph.passes.fusion.capture import StageCapture
from omnigraph.passes.fusion.classify import is_compute
from omnigraph.passes.fusion.emitter import CannotEmit, emit
from omnigraph.passes.fusion.fx_lower import lower
from omnigraph.passes.fusion.state import FusionState

if TYPE_CHECKING:
    import torch
    from torch import fx


@dataclass
class FusedGraph:
    """One entry's graph after fusion: the lowered program, its groups and their kernels."""

    program: torch.export.ExportedProgram
    kernels: list[Any]  # codegen.kernel_emitter.Kernel, in schedule order
    eager_groups: list[list[fx.Node]]  # groups left as eager ops
    compute_ops: int  # compute ops in the graph
    merges: int


@dataclass
class StageFusion:
    stage: str
    kind: str
    entries: dict[str, FusedGraph] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def _emittable(state: FusionState, gid: int) -> str | None:
    group = state.groups[gid]
    try:
        emit("probe", group.kind, group.nodes, render=False)
    except CannotEmit as exc:
        return str(exc)
    return None


WINDOW = 768  # graph positions fused at a time (a Llama layer's prefill lowers to about 170)
OVERLAP = 256  # how far a window reaches back into the last, so that no boundary blocks a fusion


def _candidates(state: FusionState) -> list[tuple[int, int]]:
    """Pairs of groups that share a buffer: (producer, consumer) or two readers of one input."""
    pairs: set[tuple[int, int]] = set()
    readers: dict[fx.Node, set[int]] = {}
    scoped = state.scoped_groups()
    inside = set(scoped)
    for gid in scoped:
        for node in state.groups[gid].nodes:
            for src in state.sources(node):
                other = state.group_of.get(src)
                if other in inside and other != gid:
                    pairs.add((other, gid))
                elif other is None:
                    readers.setdefault(src, set()).add(gid)
    for gids in readers.values():
        ordered = sorted(gids, key=lambda g: state.order[state.groups[g].nodes[0]])
        for i, a in enumerate(ordered):
            for b in ordered[i + 1:]:
                pairs.add((a, b))
    return sorted(pairs)


def fuse_graph(graph: fx.Graph, window: int = WINDOW, overlap: int = OVERLAP) -> tuple[FusionState, int]:
    """Greedy merging to a fixed point, window by window along the graph (each window
    `window` positions, starting `overlap` back into the last where no group straddles);
    returns the final state, over the whole graph, and how many merges it made."""
    state = FusionState.of(graph)
    gains: dict[tuple[tuple[str, ...], tuple[str, ...]], int] = {}  # a score depends only on the two groups
    size, lo, merges = len(state.order), 0, 0
    while True:
        hi = min(size, lo + window)
        state, made = _fuse_window(state.windowed((lo, hi) if (lo, hi) != (0, size) else None), gains)
        merges += made
        if hi >= size:
            return state.windowed(None), merges
        lo = _cut(state, max(lo + 1, hi - overlap), hi)


def _cut(state: FusionState, start: int, end: int) -> int:
    """The first position from `start` (at most `end`) that no group straddles."""
    covered = [0] * (end - start + 2)  # +1 where a group spans across a position
    for group in state.groups.values():
        first, last = state.order[group.nodes[0]], state.order[group.nodes[-1]]
        if first < end and last >= start:
            covered[max(first + 1, start) - start] += 1
            covered[min(last, end) - start + 1] -= 1
    depth = 0
    for offset, step in enumerate(covered[:-1]):
        depth += step
        if depth == 0:
            return start + offset
    return end


def _fuse_window(state: FusionState, gains: dict) -> tuple[FusionState, int]:
    # A refusal stands while neither group changes: a cycle through third groups stays one
    # whatever they merge with, and a merge elsewhere rarely lowers the peak it would raise
    # (missing such a merge is safe; making an illegal one is not possible).
    rejected: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
    merges = 0
    while True:
        scored = []
        for a, b in _candidates(state):
            key = (tuple(n.name for n in state.groups[a].nodes), tuple(n.name for n in state.groups[b].nodes))
            if key not in gains:
                gains[key] = fusion_score.bytes_saved(state, a, b)
            if gains[key] > 0 and key not in rejected:
                scored.append((-gains[key], state.order[state.groups[b].nodes[0]], a, b, key))
        scored.sort()
        for _, _, a, b, key in scored:
            if key in rejected:
                continue
            verdict = fusion_legality.check(state, a, b, _emittable)
            if verdict.ok:
                state = state.merged(a, b)
                state.groups[a].kind = verdict.kind
                merges += 1
                break
            rejected.add(key)
        else:
            return state, merges


def fuse_program(program: torch.export.ExportedProgram) -> FusedGraph:
    """Lower, fuse and emit one captured entry."""
    lowered = lower(program)
    state, merges = fuse_graph(lowered.graph)
    kernels, eager = [], []
    for unit in state.schedule():
        if not isinstance(unit, int):
            continue
        group = state.groups[unit]
        try:
            kernels.append(emit(f"k{len(kernels)}", group.kind, group.nodes))
        except CannotEmit:
            eager.append(group.nodes)
    compute = sum(1 for n in lowered.graph.nodes if is_compute(state.classes[n]))
    return FusedGraph(lowered, kernels, eager, compute, merges)


def fuse_stage(capture: StageCapture) -> StageFusion:
    """Every captured entry of a stage, fused (an entry fusion cannot handle keeps a note)."""
    fusion = StageFusion(capture.stage, capture.kind, notes=dict(capture.notes))
    for name, program in capture.programs.items():
        try:
            fusion.entries[name] = fuse_program(program)
        except Exception as exc:  # lowering a graph fusion cannot handle: the entry runs unfused
            fusion.notes[name] = f"not fused: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return fusion


def fusion_summary(fusion: StageFusion) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, fused in fusion.entries.items():
        in_kernels = sum(len(k.nodes) for k in fused.kernels)
        out[name] = {"kernels": len(fused.kernels), "fused_ops": in_kernels, "compute_ops": fused.compute_ops}
    for name, why in fusion.notes.items():
        out.setdefault(name, {"note": why})
    return out
