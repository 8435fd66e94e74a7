"""The paged KV pool of `ar_llm`: blocks taken as requests grow and given back when they end,
waiting and preemption when the pool is full (never more memory than the plan's budget),
and prefix caching of shared prompt starts. Texts are checked against transformers' generate
for each prompt alone (tiny random Llama, through the runtime)."""
from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import omnigraph  # noqa: E402
from omnigraph.runtime.executors.kv_pool import KvPool, Seq  # noqa: E402
from omnigraph.runtime.engine import RequestFailed  # noqa: E402
from omnigraph.runtime.plan import RuntimePlan  # noqa: E402

from test_ar_llm import CONFIG, executor, reference, tiny_plan  # noqa: E402

# the tiny Llama in fp32: 2 layers x (keys + values) x 2 kv heads x 16 wide x 4 bytes
TOKEN_BYTES = 2 * 2 * 2 * 16 * 4


def with_pool(plan: RuntimePlan, blocks: int, block_tokens: int = 4) -> RuntimePlan:
    """The plan with the LLM's KV budget set to `blocks` blocks of `block_tokens` tokens."""
    plan = plan.model_copy(deep=True)
    res = plan.nodes[0].resources
    res.kv_block_tokens = block_tokens
    res.kv_bytes = blocks * block_tokens * TOKEN_BYTES
    return plan


def test_blocks_follow_the_tokens_and_come_back() -> None:
    pool = KvPool(2, 4, 5, torch.float32, "cpu", TOKEN_BYTES)
    a, b = Seq(), Seq()
    assert pool.grow(a, 9) and len(a.blocks) == 3  # 9 positions: 3 blocks of 4
    a.length = 9
    assert pool.grow(a, 3) and len(a.blocks) == 3  # room left in the last block
    assert not pool.grow(b, 12) and b.blocks == []  # 3 more blocks do not fit: nothing taken
    assert pool.grow(b, 8) and pool.available == 0
    pool.release(a)
    assert pool.available == 3 and pool.stats.peak_blocks == 5
    assert pool.slots(b, 0, 5)[4] == b.blocks[1] * 4  # position 4 is the second block's first slot


def test_shared_prefix_reuses_full_blocks_and_the_idle_ones_are_evicted_last_used_first() -> None:
    pool = KvPool(2, 4, 4, torch.float32, "cpu", TOKEN_BYTES)
    prompt = list(range(10))
    first = Seq()
    assert pool.grow(first, 10)
    first.length, first.tokens = 10, list(prompt)
    pool.publish(first)  # two full blocks named
    pool.release(first)
    assert pool.available == 4  # cached blocks count as available

    again = Seq()
    assert pool.share_prefix(again, prompt + [99]) == 8  # both full blocks reused
    assert again.blocks == first.blocks[:2] if first.blocks else len(again.blocks) == 2
    other = Seq()
    assert pool.share_prefix(other, [7] * 10) == 0  # a different start shares nothing
    assert pool.stats.prefix_hits == 8

    pool.release(again)
    hog = Seq()
    assert pool.grow(hog, 16)  # needs every block: the cached ones are taken back
    assert pool.share_prefix(Seq(), prompt) == 0  # and no longer answer


def test_prompt_is_never_entirely_shared() -> None:
    """The prefill must compute at least the last position (it yields the first token)."""
    pool = KvPool(1, 4, 4, torch.float32, "cpu", TOKEN_BYTES)
    seq = Seq()
    pool.grow(seq, 8)
    seq.length, seq.tokens = 8, list(range(8))
    pool.publish(seq)
    pool.release(seq)
    assert pool.share_prefix(Seq(), list(range(8))) == 4


def test_four_times_the_pool_in_flight_all_complete_with_the_same_text(tmp_path: Path) -> None:
    """A pool of 8 blocks (32 token slots); six requests that need ~150 slots in all arrive at
    once. New ones wait, running ones that cannot grow are preempted and recomputed; every
    request ends with the text it has alone, and the pool never holds more than its blocks."""
    plan = with_pool(tiny_plan(tmp_path, "max_new_tokens: 18, max_batch: 6"), blocks=8)
    gen = torch.Generator().manual_seed(3)
    # ids from 3 up: generate (the reference) treats id 0 as padding and masks it
    ps = [torch.randint(3, 256, (n,), generator=gen) for n in (12, 9, 14, 11, 7, 13)]
    with omnigraph.load(plan) as pipe:
        ex = executor(pipe)
        handles = [pipe.submit({"prompt": p}) for p in ps]
        outs = [h.result(timeout=120) for h in handles]
        stats = ex.stats()
        eos = ex.eos
    wanted = [len(p) + len(o["ids"]) for p, o in zip(ps, outs)]
    assert sum(wanted) >= 4 * 32 * 0.9, wanted  # the load really is ~4x the pool
    for prompt, out in zip(ps, outs):
        assert out["ids"].tolist() == reference(prompt, 18, eos)
    assert stats["kv_blocks"] == 8
    assert stats["kv_peak_bytes"] <= stats["kv_pool_bytes"] == 8 * 4 * TOKEN_BYTES
    assert stats["preemptions"] > 0  # running requests were preempted, not failed
    assert stats["kv_blocks_in_use"] == 0


def test_a_request_larger_than_the_whole_pool_fails_alone(tmp_path: Path) -> None:
    plan = with_pool(tiny_plan(tmp_path, "max_new_tokens: 4, max_batch: 4"), blocks=2)
    with omnigraph.load(plan) as pipe:
        big = pipe.submit({"prompt": torch.arange(20)})
        small = pipe.submit({"prompt": torch.arange(3)})
        with pytest.raises(RequestFailed, match="KV cache.*the pool holds 8"):
            big.result(timeout=60)
        assert small.result(timeout=60)["ids"].numel() <= 4


def test_prefix_caching_reuses_a_shared_system_prompt(tmp_path: Path) -> None:
    plan = with_pool(tiny_plan(tmp_path, "max_new_tokens: 6, max_batch: 2"), blocks=64)
    gen = torch.Generator().manual_seed(5)
    system = torch.randint(3, 256, (40,), generator=gen)
    asks = [torch.cat([system, torch.randint(3, 256, (n,), generator=gen)]) for n in (5, 3, 8)]
    with omnigraph.load(plan) as pipe:
        ex = executor(pipe)
        outs = [pipe.submit({"prompt": p}).result(timeout=60) for p in asks]  # one after another
        stats = ex.stats()
        eos = ex.eos
    assert stats["prefix_hit_tokens"] == 2 * 40  # the second and third reuse 10 blocks of 4
    assert stats["prefix_query_tokens"] == sum(map(len, asks))
    for prompt, out in zip(asks, outs):
        assert out["ids"].tolist() == reference(prompt, 6, eos)


def test_an_unplanned_pool_is_bounded_by_the_batch(tmp_path: Path) -> None:
    """Without a plan's budget the pool never exceeds max_batch full-length sequences."""
    plan = tiny_plan(tmp_path, "max_new_tokens: 2, max_batch: 3")
    assert plan.nodes[0].resources.kv_bytes is None
    with omnigraph.load(plan) as pipe:
        stats = executor(pipe).stats()
    positions = CONFIG.get("max_position_embeddings", 2048)
    assert stats["kv_blocks"] * stats["kv_block_tokens"] <= 3 * positions + stats["kv_block_tokens"]
