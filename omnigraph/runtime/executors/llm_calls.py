"""How an LLM stage calls its model: the module's own forward, or its fused graphs.

Both give the executor the same two calls: `prefill` (a left-padded batch of prompts:
token ids or embeddings, with its mask and positions) and `decode` (one token per row
on a running KV cache), each returning the last position's logits and hidden state and
the grown cache. The cache is opaque to the caller; `cache` builds one from per-layer
(keys, values) and `layers` takes it apart again.

`ModuleCalls` runs the transformers module with a DynamicCache. `FusedCalls` runs the
entries capture-stages exported (prefill and decode_step, runtime/entry_points.py)
through their generated Triton kernels, the cache being the flat list of per-layer
keys and values those entries take and return.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from transformers import DynamicCache

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [batch, heads, len, dim]


@dataclass
class Forward:
    logits: torch.Tensor  # [batch, vocab], at the last position
    hidden: torch.Tensor | None  # [batch, hidden], last layer at the last position


def cache_kwarg(model: nn.Module) -> str:
    """The forward's name for the KV cache: `cache` since transformers 5.24 renamed it
    (the old name warns, and goes in 5.40), `past_key_values` before."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out: Any) -> Any:
    """The grown KV cache of a forward's output, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class LlmCalls(Protocol):
    def prefill(self, inputs: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                want_hidden: bool) -> tuple[Forward, Any]: ...

    def decode(self, cache: Any, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
               want_hidden: bool) -> tuple[Forward, Any]: ...

    def cache(self, layers: Layers) -> Any: ...

    def layers(self, cache: Any) -> Layers: ...


class ModuleCalls:
    """The transformers module itself: logits only at the last position (prefill would
    otherwise project every prompt position onto the vocabulary)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._cache_kwarg = cache_kwarg(model)

    def _run(self, want_hidden: bool, **inputs: Any) -> tuple[Forward, DynamicCache]:
        out = self.model(**inputs, use_cache=True, logits_to_keep=1, output_hidden_states=want_hidden)
        hidden = out.hidden_states[-1][:, -1] if want_hidden else None
        return Forward(out.logits[:, -1], hidden), output_cache(out)

    def prefill(self, inputs: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                want_hidden: bool) -> tuple[Forward, DynamicCache]:
        name = "input_ids" if inputs.dim() == 2 else "inputs_embeds"
        return self._run(want_hidden, **{name: inputs}, attention_mask=mask, position_ids=positions)

    def decode(self, cache: DynamicCache, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
               want_hidden: bool) -> tuple[Forward, DynamicCache]:
        return self._run(want_hidden, input_ids=ids, attention_mask=mask, position_ids=positions,
                         **{self._cache_kwarg: cache})

    def cache(self, layers: Layers) -> DynamicCache:
        return DynamicCache(ddp_cache_data=layers)

    def layers(self, cache: DynamicCache) -> Layers:
        return [(layer.keys, layer.values) for layer in cache.layers]


class FusedCalls:
    """The stage's fused prefill and decode-step graphs (each called like its captured
    entry: prefill(embeds, mask, positions), decode(ids, mask, positions, kv); both return
    logits, hidden, then keys and values per layer). Token-id prompts are embedded here:
    the prefill entry takes embeddings, so prompts with context share it."""

    def __init__(self, prefill: nn.Module, decode: nn.Module, embed: nn.Module) -> None:
        self._prefill, self._decode, self.embed = prefill, decode, embed

    @staticmethod
    def _split(out: tuple[torch.Tensor, ...], want_hidden: bool) -> tuple[Forward, list[torch.Tensor]]:
        logits, hidden, *kv = out
        return Forward(logits, hidden if want_hidden else None), kv

    def prefill(self, inputs: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                want_hidden: bool) -> tuple[Forward, list[torch.Tensor]]:
        embeds = self.embed(inputs) if inputs.dim() == 2 else inputs
        return self._split(self._prefill(embeds, mask, positions), want_hidden)

    def decode(self, cache: list[torch.Tensor], ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
               want_hidden: bool) -> tuple[Forward, list[torch.Tensor]]:
        return self._split(self._decode(ids, mask, positions, cache), want_hidden)

    def cache(self, layers: Layers) -> list[torch.Tensor]:
        return [t for kv in layers for t in kv]

    def layers(self, cache: list[torch.Tensor]) -> Layers:
        return [(cache[i], cache[i + 1]) for i in range(0, len(cache), 2)]
