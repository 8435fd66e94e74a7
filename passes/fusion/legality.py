"""Whether two groups may become one kernel. Legality only; fusion_score says whether it pays.

A merge is legal when
  - the groups share a buffer (one reads what the other writes, or both read one input);
  - their kinds combine into one template (pointwise + pointwise, anything elementwise
    around a reduction, an elementwise epilogue after a matmul; never two matmuls);
  - it makes no cycle: no path leaves one group and comes back into the other;
  - it does not raise the peak of live buffers over the whole graph's schedule;
  - it stays under the caps (compute ops, kernel inputs);
  - the kernel emitter can express the result (kernel_emitter.CannotEmit otherwise).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from omnigraph.passes.fusion.state import FusionState, nbytes

MAX_GROUP_OPS = 48
MAX_INPUTS = 16
Emittable = Callable[[FusionState, int], "str | None"]  # the group's kernel, or why there is none


@dataclass(frozen=True)
class Verdict:
    ok: bool
    why: str = ""
    kind: str = ""


_KINDS: dict[tuple[str, str], str] = {
    ("pointwise", "pointwise"): "pointwise",
    ("pointwise", "reduction"): "reduction",
    ("reduction", "pointwise"): "reduction",
    ("reduction", "reduction"): "reduction",
    ("matmul", "pointwise"): "matmul",  # an epilogue: the pointwise group reads the matmul
    ("pointwise", "matmul"): "matmul",  # a pointwise group whose result the epilogue reads
}


def merged_kind(producer: str, consumer: str) -> str | None:
    return _KINDS.get((producer, consumer))


def shares_buffer(state: FusionState, a: int, b: int) -> bool:
    na, nb = set(state.groups[a].nodes), set(state.groups[b].nodes)
    reads_a = {s for n in na for s in state.sources(n)}
    reads_b = {s for n in nb for s in state.sources(n)}
    return bool(reads_a & nb or reads_b & na or reads_a & reads_b)


def makes_cycle(state: FusionState, a: int, b: int) -> bool:
    """True when some path from one group to the other passes through a third unit."""
    succ = state.successors()
    for src, dst in ((a, b), (b, a)):
        queue = deque(v for v in succ.get(src, ()) if v != dst)
        seen = set(queue)
        while queue:
            u = queue.popleft()
            if u == dst:
                return True
            for v in succ.get(u, ()):
                if v not in seen:
                    seen.add(v)
                    queue.append(v)
    return False


def peak_bytes(state: FusionState) -> int:
    """The most bytes of intermediate buffers alive at once in the schedule's order.

    A unit's outputs are allocated when it runs and freed after their last reader;
    graph inputs and weights are always there and are not counted.
    """
    if "peak" not in state.memo:
        state.memo["peak"] = _peak(state)
    return state.memo["peak"]  # type: ignore[return-value]


def _peak(state: FusionState) -> int:
    order = state.schedule()
    at = {u: i for i, u in enumerate(order)}
    last: dict[object, int] = {}
    sizes: dict[object, int] = {}
    for u in order:
        for d in state.unit_inputs(u):
            last[d] = max(last.get(d, -1), at[u])
        if state.escapes(u):  # read after the window: live to its end
            last[u] = len(order)
    for u in order:
        if isinstance(u, int):
            sizes[u] = sum(nbytes(n) for n in state.outside_readers(u))
        elif getattr(u, "op", "") == "call_function":
            sizes[u] = nbytes(u)  # type: ignore[arg-type]
    live, peak = 0, 0
    frees: dict[int, int] = {}
    for i, u in enumerate(order):
        live += sizes.get(u, 0)
        peak = max(peak, live)
        end = last.get(u, i)
        frees[end] = frees.get(end, 0) + sizes.get(u, 0)
        live -= frees.pop(i, 0)
    return peak


def check(state: FusionState, a: int, b: int, emittable: Emittable) -> Verdict:
    """May groups a (the producer, or the earlier of two siblings) and b merge?"""
    ga, gb = state.groups[a], state.groups[b]
    kind = merged_kind(ga.kind, gb.kind)
    if kind is None:
        return Verdict(False, f"{ga.kind} + {gb.kind} is no template")
    if ga.kind == "matmul" and gb.kind == "matmul":
        return Verdict(False, "two matmuls")
    if not shares_buffer(state, a, b):
        return Verdict(False, "no shared buffer")
    if len(ga.nodes) + len(gb.nodes) > MAX_GROUP_OPS:
        return Verdict(False, f"more than {MAX_GROUP_OPS} ops")
    if makes_cycle(state, a, b):
        return Verdict(False, "cycle")
    merged = state.merged(a, b)
    merged.groups[a].kind = kind
    reads = {s for n in merged.groups[a].nodes for s in merged.sources(n) if s not in merged.groups[a].nodes}
    if len(reads) > MAX_INPUTS:
        return Verdict(False, f"more than {MAX_INPUTS} inputs")
    if peak_bytes(merged) > peak_bytes(state):
        return Verdict(False, "raises peak memory")
    why = emittable(merged, a)
    if why is not None:
        return Verdict(False, why)
    return Verdict(True, kind=kind)
