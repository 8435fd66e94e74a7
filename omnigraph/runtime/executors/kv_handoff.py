"""A request's KV cache handed from one `ar_llm` instance to another.

Two moves use it (Splitwise / DistServe, and Llumnix):

- prefill → decode: a `phase: prefill` instance computes a prompt's keys and values and the
  logits of its last position, and hands them on as the value of its `kv` port; the
  `phase: decode` instance reading it takes the KV into its own pool, chooses the first token
  from those logits (so sampling, seeds and stop rules live in one place) and decodes on;
- migration: a running request leaves one decode instance (its KV, the tokens it wrote, its
  text stream and sampler) and goes on in another (LocalBackend.migrate).

In one process the tensors move as they are; between Ray actors the hand-off is a value in
the object store like any other. Greedy tokens are those of the unsplit stage: the KV is
the same numbers, only its place changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KvHandoff:
    prompt: torch.Tensor  # token ids [n], or embeddings [n, hidden] when the prompt had context
    ids: list[int] | None  # the prompt's ids when it is only tokens (prefix caching, seeds)
    keys: list[torch.Tensor]  # per layer [positions, kv_heads, head_dim]
    values: list[torch.Tensor]
    logits: torch.Tensor | None  # [vocab] at the last position: the first token's (prefill)
    hidden: torch.Tensor | None  # [hidden] at the last position, when someone reads `hidden`
    model: str  # what computed it (class, layers, heads): a decode instance of another model refuses it

    @property
    def positions(self) -> int:
        return int(self.keys[0].shape[0]) if self.keys else 0

    @property
    def nbytes(self) -> int:
        """What crossing to another device or process costs in bytes."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


def model_fingerprint(model: torch.nn.Module) -> str:
    """Enough of a model's shape that KV computed by one cannot be read by another."""
    config = model.config.get_text_config()
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return (f"{type(model).__name__}:layers={config.num_hidden_layers}:kv_heads={heads}"
            f":hidden={config.hidden_size}:vocab={config.vocab_size}")
