"""Greedy-by-size arena packing: live buffers never overlap; dead ones share memory."""
from __future__ import annotations

import random

import pytest

from omnigraph.passes.planner.arena import ALIGN, Buffer, arena_bytes, pack
from omnigraph.passes.planner.cost_types import ArchProfile


def overlaps(a: tuple[int, Buffer], b: tuple[int, Buffer]) -> bool:
    (oa, ba), (ob, bb) = a, b
    alive = ba.first <= bb.last and bb.first <= ba.last
    return alive and oa < ob + bb.size and ob < oa + ba.size


@pytest.mark.parametrize("seed", range(20))
def test_live_buffers_never_share_memory(seed: int) -> None:
    rng = random.Random(seed)
    buffers = []
    for i in range(rng.randint(1, 30)):
        first = rng.randint(0, 20)
        buffers.append(Buffer(f"b{i}", rng.randint(1, 64) * ALIGN, first, first + rng.randint(0, 6)))
    offsets, size = pack(buffers)
    placed = [(offsets[b.name], b) for b in buffers]
    for i, a in enumerate(placed):
        assert a[0] % ALIGN == 0 and a[0] + a[1].size <= size
        for b in placed[i + 1:]:
            assert not overlaps(a, b), (a, b)
    # Never worse than giving every buffer its own memory; never better than the busiest step.
    assert size <= sum(b.size for b in buffers)
    busiest = max(sum(b.size for b in buffers if b.first <= t <= b.last) for t in range(27))
    assert size >= busiest


def test_disjoint_lifetimes_reuse_one_slot() -> None:
    buffers = [Buffer("a", 4096, 0, 1), Buffer("b", 4096, 2, 3), Buffer("c", 4096, 4, 5)]
    offsets, size = pack(buffers)
    assert size == 4096 and set(offsets.values()) == {0}


def test_a_transformer_block_arena_is_smaller_than_its_buffers() -> None:
    llama_8b = ArchProfile(params=8_030_261_248, active_params=8_030_261_248, embedding_params=525_336_576,
                           layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128)
    packed, naive = arena_bytes(llama_8b, tokens=2048)
    assert 0 < packed < naive
    # The MLP intermediates (gate, up, act: 3 x tokens x 14336 x 2 bytes) dominate a Llama block.
    assert packed >= 2 * 2048 * 14336 * 2
    assert arena_bytes(llama_8b, tokens=0) == (0, 0)
