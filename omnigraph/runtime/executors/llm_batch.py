"""KV caches of requests that decode together, and choosing the next token.

Each request owns its KV cache (per layer: keys and values [1, heads, len, dim]).
To decode several requests in one forward pass their caches are left-padded to a
common length and stacked; the attention mask hides the padding and position ids
carry each request's own position, so every row computes what it would alone.
The stacked cache is kept across steps while the same requests decode, and is
split back into per-request caches only when one joins or leaves.

The model is reached through `LlmCalls` (llm_calls.py): its own forward, or its fused
prefill and decode-step graphs; the batching here is the same for both.
"""
from __future__ import annotations

from typing import Any

import torch

from omnigraph.runtime.executors.llm_calls import Forward, LlmCalls

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, heads, len, dim]


def prefill(calls: LlmCalls, want_hidden: bool, prompts: list[torch.Tensor]) -> tuple[Forward, list[KV]]:
    """Prefill several prompts in one forward pass, all token ids [len] or all embeddings
    [len, hidden], left-padded to a common length (the mask hides the padding, position
    ids start at each prompt's first position); returns each prompt's own KV cache."""
    pad = [max(len(p) for p in prompts) - len(p) for p in prompts]
    stacked = torch.stack([_left_pad(p, n, dim=0) for p, n in zip(prompts, pad)])
    width = stacked.shape[1]
    mask = (torch.arange(width, device=stacked.device)[None]
            >= torch.tensor(pad, device=stacked.device)[:, None]).long()
    fwd, cache = calls.prefill(stacked, mask, (mask.cumsum(1) - 1).clamp(min=0), want_hidden)
    return fwd, _split(calls.layers(cache), pad)


class DecodeBatch:
    """A left-padded, stacked KV cache for a fixed list of requests (rows in order)."""

    def __init__(self, calls: LlmCalls, caches: list[KV]) -> None:
        self.calls = calls
        lengths = [kv[0][0].shape[2] for kv in caches]
        width = max(lengths)
        self.pad = [width - n for n in lengths]
        layers = [
            tuple(torch.cat([_left_pad(kv[i][j], p) for kv, p in zip(caches, self.pad)]) for j in (0, 1))
            for i in range(len(caches[0]))
        ]
        self.cache: Any = calls.cache(layers)
        device = caches[0][0][0].device
        self.mask = torch.ones(len(caches), width, dtype=torch.long, device=device)
        for row, p in enumerate(self.pad):
            self.mask[row, :p] = 0
        self.positions = torch.tensor(lengths, device=device)

    def step(self, tokens: list[int], want_hidden: bool) -> Forward:
        """Feed one token per request and grow every cache by one position."""
        ids = torch.tensor(tokens, device=self.mask.device)[:, None]
        mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)
        fwd, self.cache = self.calls.decode(self.cache, ids, mask, self.positions[:, None], want_hidden)
        self.mask = mask
        self.positions = self.positions + 1
        return fwd

    def split(self) -> list[KV]:
        """Each row's own cache again, padding dropped. These are views into the stack:
        clone a cache that must outlive it (or the whole stack stays alive)."""
        return _split(self.calls.layers(self.cache), self.pad)


def _split(layers: KV, pad: list[int]) -> list[KV]:
    """Each row's cache as views into the stacked one, its left padding dropped."""
    return [[(k[row:row + 1, :, p:], v[row:row + 1, :, p:]) for k, v in layers] for row, p in enumerate(pad)]


def _left_pad(x: torch.Tensor, n: int, dim: int = 2) -> torch.Tensor:
    if n == 0:
        return x
    shape = list(x.shape)
    shape[dim] = n
    return torch.cat([x.new_zeros(shape), x], dim=dim)


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
