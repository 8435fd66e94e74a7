"""How an LLM stage calls its model: the module's own forward, or its fused graphs.

Both give the executor one call: `forward(inputs, step, want_hidden)`, where `inputs` are the
new positions of a batch of rows (token ids [rows, n] or embeddings [rows, n, hidden],
left-padded) and `step` (paged_cache.PagedStep) says where each row's cached keys and values
are in the KV pool, where the new ones go, and the mask and positions. It returns the last
position's logits and hidden state; the new keys and values are in the pool afterwards.

`ModuleCalls` runs the transformers module with a cache over the pool (attention reads the
pool layer by layer). `FusedCalls` runs the entries capture-stages exported (prefill and
decode_step, runtime/entry_points.py) through their generated Triton kernels: they take and
return the cache as tensors, gathered from the pool and written back into it. A prefill on
top of cached positions (a shared prefix) has no fused graph and runs the module's forward.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from omnigraph.runtime.executors.lean_decode import LeanDecode
from omnigraph.runtime.executors.paged_cache import PagedStep


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
    def forward(self, inputs: torch.Tensor, step: PagedStep, want_hidden: bool) -> Forward: ...


class ModuleCalls:
    """The transformers module itself: logits only at the last position (prefill would
    otherwise project every prompt position onto the vocabulary). Decode steps of a model
    lean_decode.py recognises (after its projections were merged) go the lean way instead."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._cache_kwarg = cache_kwarg(model)
        self._lean: LeanDecode | None | bool = False  # False: not looked at yet

    def forward(self, inputs: torch.Tensor, step: PagedStep, want_hidden: bool) -> Forward:
        if self._lean is False:  # at the first forward: after the runtime merged and packed the linears
            self._lean = LeanDecode.build(self.model)
        lean = self._lean
        if isinstance(lean, LeanDecode) and not want_hidden and lean.applies(inputs, step):
            if lean.checked:
                return Forward(lean.logits(inputs, step), None)
            return self._first_lean(lean, inputs, step)
        return self._module(inputs, step, want_hidden)

    def _first_lean(self, lean: LeanDecode, inputs: torch.Tensor, step: PagedStep) -> Forward:
        """The lean step's first run, checked against the module's forward, whose result it
        returns (and whose keys and values overwrite the slots the lean step wrote)."""
        try:
            logits: torch.Tensor | None = lean.logits(inputs, step)
        except Exception as exc:  # a model it misread: the module's forward still runs
            logits, error = None, exc
        else:
            error = None
        out = self._module(inputs, step, False)
        if not lean.check(logits, out.logits, error):
            self._lean = None
        return out

    def _module(self, inputs: torch.Tensor, step: PagedStep, want_hidden: bool) -> Forward:
        name = "input_ids" if inputs.dim() == 2 else "inputs_embeds"
        out = self.model(**{name: inputs}, attention_mask=step.mask, position_ids=step.positions,
                         **{self._cache_kwarg: step.cache()}, use_cache=True, logits_to_keep=1,
                         output_hidden_states=want_hidden)
        hidden = out.hidden_states[-1][:, -1] if want_hidden else None
        return Forward(out.logits[:, -1], hidden)


class FusedCalls:
    """The stage's fused prefill and decode-step graphs (each called like its captured
    entry: prefill(embeds, mask, positions), decode(ids, mask, positions, kv); both return
    logits, hidden, then keys and values per layer). Token-id prompts are embedded here:
    the prefill entry takes embeddings, so prompts with context share it."""

    def __init__(self, prefill: nn.Module, decode: nn.Module, embed: nn.Module, module: ModuleCalls) -> None:
        self._prefill, self._decode, self.embed, self.module = prefill, decode, embed, module

    def forward(self, inputs: torch.Tensor, step: PagedStep, want_hidden: bool) -> Forward:
        if step.width == 0:  # a prefill from scratch
            embeds = self.embed(inputs) if inputs.dim() == 2 else inputs
            logits, hidden, *kv = self._prefill(embeds, step.mask, step.positions)
            for layer in range(len(kv) // 2):
                step.store(layer, kv[2 * layer], kv[2 * layer + 1])
        elif inputs.dim() == 2 and inputs.shape[1] == 1:  # a decode step: the cache as tensors
            past = [t.contiguous() for kv in step.gather() for t in kv]
            logits, hidden, *kv = self._decode(inputs, step.mask, step.positions, past)
            for layer in range(len(kv) // 2):  # the grown cache: its last position is new
                step.store(layer, kv[2 * layer][:, :, -1:], kv[2 * layer + 1][:, :, -1:])
        else:
            return self.module.forward(inputs, step, want_hidden)
        return Forward(logits, hidden if want_hidden else None)
