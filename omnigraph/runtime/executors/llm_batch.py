"""One forward over rows of the paged KV pool, and choosing the next token.

Each request owns a block table in the stage's KV pool (kv_pool.py). A forward takes rows
that each add new positions after their cached ones: a prefill group (prompts, left-padded
to a common length; a group shares one cached-prefix length) or a decode step (one token a
row). paged_cache.PagedStep lays the rows out (left-padded cached positions, the mask that
hides the padding, each row's own position ids), so every row computes what it would alone;
the new keys and values land in the rows' blocks.

The model is reached through `LlmCalls` (llm_calls.py): its own forward, or its fused
prefill and decode-step graphs; the batching here is the same for both.
"""
from __future__ import annotations

import torch

from omnigraph.runtime.executors.kv_pool import KvPool, Seq
from omnigraph.runtime.executors.llm_calls import Forward, LlmCalls
from omnigraph.runtime.executors.paged_cache import PagedStep


def forward_rows(calls: LlmCalls, pool: KvPool, seqs: list[Seq], inputs: list[torch.Tensor],
                 want_hidden: bool) -> Forward:
    """One forward for rows `seqs`, each adding `inputs[r]` (token ids [n] or embeddings
    [n, hidden], all of one kind) after its cached positions. The rows' blocks must already
    hold room for them (KvPool.grow); their lengths grow by n."""
    width = max(len(x) for x in inputs)
    stacked = torch.stack([_left_pad(x, width - len(x)) for x in inputs])
    step = PagedStep(pool, seqs, [len(x) for x in inputs])
    fwd = calls.forward(stacked, step, want_hidden)
    for seq, x in zip(seqs, inputs):
        seq.length += len(x)
    return fwd


def _left_pad(x: torch.Tensor, n: int) -> torch.Tensor:
    if n == 0:
        return x
    return torch.cat([x.new_zeros((n, *x.shape[1:])), x])


def choose_token(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                 generator: torch.Generator | None) -> int:
    """Greedy at temperature 0, else a sample from the top-k / nucleus (top-p) filtered
    distribution, drawn with the request's own generator (reproducible per request)."""
    if temperature == 0:
        return int(torch.argmax(logits))
    logits = logits.float() / temperature
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the ones ranked above it already cover top_p (the first always stays).
        drop = torch.cumsum(probs, dim=-1) - probs >= top_p
        logits = logits.masked_fill(torch.empty_like(drop).scatter_(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
