"""Activation arena: buffers with lifetimes packed into one block by greedy-by-size offsets.

Buffers whose lifetimes overlap may not overlap in memory. Taking the biggest first, each
buffer goes to the lowest offset that clears every already-placed buffer it is alive with
(the greedy-by-size heuristic of TFLite's and MNN's memory planners). The arena is the
highest end; the saving against giving every buffer its own memory is what liveness buys.
"""
from __future__ import annotations

from dataclasses import dataclass

from omnigraph.passes.planner.cost_types import ArchProfile

ALIGN = 256  # bytes: offsets stay aligned for vectorised kernels


@dataclass(frozen=True)
class Buffer:
    name: str
    size: int
    first: int  # step it is written
    last: int  # last step it is read


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def pack(buffers: list[Buffer]) -> tuple[dict[str, int], int]:
    """Offsets per buffer and the arena size."""
    placed: list[tuple[int, Buffer]] = []
    offsets: dict[str, int] = {}
    for buf in sorted(buffers, key=lambda b: (-b.size, b.first, b.name)):
        live = sorted(((off, b) for off, b in placed if b.first <= buf.last and buf.first <= b.last),
                      key=lambda ob: ob[0])
        offset = 0
        for off, b in live:  # first gap big enough, in address order
            if offset + buf.size <= off:
                break
            offset = max(offset, _align(off + b.size))
        placed.append((offset, buf))
        offsets[buf.name] = offset
    return offsets, max((off + b.size for off, b in placed), default=0)


def layer_buffers(profile: ArchProfile, tokens: int, dtype_bytes: int) -> list[Buffer]:
    """The intermediates of one transformer block's forward over `tokens` tokens, in order.

    Blocks run one after another and reuse the same memory, so one block is the arena. The
    MLP width comes from the parameters the profile counts per layer, less attention.
    """
    h = profile.hidden or 1
    q = profile.heads * profile.head_dim or h
    kv = profile.kv_heads * profile.head_dim or q
    per_layer = (profile.active_params - profile.embedding_params) / max(1, profile.layers)
    mlp_width = max(h, int((per_layer - h * (2 * q + 2 * kv)) / (3 * h)))
    t, b = tokens, dtype_bytes
    spec = [  # (name, elements, written at step, last read at step)
        ("residual", t * h, 0, 9),
        ("norm1", t * h, 1, 2),
        ("q", t * q, 2, 3),
        ("k", t * kv, 2, 3),
        ("v", t * kv, 2, 3),
        ("attn", t * q, 3, 4),
        ("attn_out", t * h, 4, 5),
        ("norm2", t * h, 5, 6),
        ("gate", t * mlp_width, 6, 7),
        ("up", t * mlp_width, 6, 7),
        ("act", t * mlp_width, 7, 8),
        ("mlp_out", t * h, 8, 9),
    ]
    return [Buffer(n, _align(e * b), f, last) for n, e, f, last in spec]


def arena_bytes(profile: ArchProfile, tokens: int) -> tuple[int, int]:
    """(arena size with liveness, size without) for one forward over `tokens` tokens."""
    if tokens <= 0 or profile.layers <= 0:
        return 0, 0
    buffers = layer_buffers(profile, tokens, profile.dtype_bytes)
    _, size = pack(buffers)
    return size, sum(b.size for b in buffers)
