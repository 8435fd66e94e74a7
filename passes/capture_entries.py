"""The entry points capture-stages exports, per stage kind: the module as the runtime calls it.

Encoders, projectors, MoE blocks, decoders and denoisers take the wrappers and example
inputs a bundle exports them with (codegen/stage_export.py's rule for the kind). An LLM
has two, in its executor's calling convention: its prefill (embeddings, padding mask and
positions → last-position logits and hidden state, and the KV cache) and its decode step,
with the KV cache as explicit tensors so that the step is a pure function.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.export import Dim

from omnigraph.runtime.executors.llm_calls import cache_kwarg, output_cache

AUTO = Dim.AUTO


@dataclass
class Entry:
    """One entry point: the module as the runtime calls it, example inputs, dynamic dims."""

    name: str
    module: nn.Module
    args: tuple[Any, ...]
    dynamic: tuple[Any, ...]


def _flat_cache(cache: Any) -> list[torch.Tensor]:
    flat: list[torch.Tensor] = []
    for layer in cache.layers:
        flat += [layer.keys, layer.values]
    return flat


class _Prefill(nn.Module):
    """A causal LM's prefill as the ar_llm executor calls it (runtime/executors/llm_calls.py):
    left-padded embeddings, padding mask and positions → last-position logits and hidden
    state, then keys and values per layer. Embeddings, not ids, so that prompts with
    context embeddings run it too."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, output_hidden_states=True)
        return (out.logits[:, -1], out.hidden_states[-1][:, -1], *_flat_cache(output_cache(out)))


class _DecodeStep(nn.Module):
    """A causal LM's decode step with its KV cache as tensors: logits, hidden state and the
    grown cache, in the prefill's order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                kv: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(kv[2 * i], kv[2 * i + 1]) for i in range(len(kv) // 2)])
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **{cache_kwarg(self.model): cache},
                         use_cache=True, logits_to_keep=1, output_hidden_states=True)
        return (out.logits[:, -1], out.hidden_states[-1][:, -1], *_flat_cache(output_cache(out)))


def _llm_entries(ex: Any, plan: Any) -> list[Entry]:
    model = ex.model
    config = model.config
    vocab = int(config.vocab_size)
    layers = int(config.num_hidden_layers)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    batch, prompt, past = 2, 7, 5
    dtype = next(model.parameters()).dtype
    embeds = torch.randn(batch, prompt, int(config.hidden_size)).to(dtype)
    mask = torch.ones(batch, prompt, dtype=torch.long)
    positions = torch.arange(prompt).repeat(batch, 1)
    kv = [torch.randn(batch, kv_heads, past, head_dim).to(dtype) for _ in range(2 * layers)]
    step = (torch.randint(0, vocab, (batch, 1)), torch.ones(batch, past + 1, dtype=torch.long),
            torch.full((batch, 1), past))
    seq = {0: AUTO, 1: AUTO}
    return [
        Entry("prefill", _Prefill(model), (embeds, mask, positions), (seq, seq, seq)),
        Entry("decode_step", _DecodeStep(model), (*step, kv),
              ({0: AUTO}, seq, {0: AUTO}, [{0: AUTO, 2: AUTO}] * len(kv))),
    ]


def _exported_entries(name: str) -> Callable[[Any, Any], list[Entry]]:
    """The entry a bundle exports (codegen/stage_export.py's rule for the kind)."""

    def entries(ex: Any, plan: Any) -> list[Entry]:
        from omnigraph.codegen.stage_export import RULES

        rule = RULES[ex.node.kind]
        examples = rule.examples(ex, plan)
        return [Entry(name, rule.wrap(ex).eval(), examples.args[0], examples.dynamic)]

    return entries


ENTRIES: dict[str, Callable[[Any, Any], list[Entry]]] = {
    "encoder": _exported_entries("forward"),
    "projector": _exported_entries("forward"),
    "moe": _exported_entries("forward"),
    "decoder": _exported_entries("decode"),
    "diffusion": _exported_entries("denoise_step"),
    "ar_llm": _llm_entries,
}
