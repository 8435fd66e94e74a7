"""What merging two groups saves: bytes of memory traffic, at the example's sizes.

A buffer one group writes and only the other reads is never written nor read again
(2x its size); one that others still read is written once but read once less (1x);
an input both groups read is read once instead of twice (1x). Fusion is memory-bound
arithmetic, so bytes are the score; a merge that saves nothing is not made.
"""
from __future__ import annotations

from omnigraph.passes.fusion.state import FusionState, nbytes


def bytes_saved(state: FusionState, a: int, b: int) -> int:
    na, nb = set(state.groups[a].nodes), set(state.groups[b].nodes)
    both = na | nb
    saved = 0
    for producer, consumer in ((na, nb), (nb, na)):
        for node in producer:
            if not any(node in state.sources(c) for c in consumer):
                continue
            readers = [u for u in node.users if u.op == "output" or state.reads_outside(u, both)]
            saved += nbytes(node) * (1 if readers else 2)
    shared = {s for n in na for s in state.sources(n)} & {s for n in nb for s in state.sources(n)}
    saved += sum(nbytes(s) for s in shared if s not in both)
    return saved
