"""A decode step of a Llama-style causal LM straight through its weights, without the module calls.

On a CPU at batch 1 a decode step of a small model is as much Python as arithmetic: transformers'
forward makes ~4,000 tensor and module calls a step (hooks, decorators, mask building, a
cache object per layer), each a few microseconds, next to ~120 matmuls that stream the
weights. This step does the same arithmetic with the model's own tensors and few calls: one
merged q/k/v and one gate/up matmul a layer (fused_linears.py), RoPE on queries and keys
together, the new keys written into the paged pool and read back with the cached ones in one
gather (paged_cache.PagedStep.attended), SDPA as transformers calls it for one query.

It runs only where it is known to be the same computation: the model types below, with
full attention everywhere, SDPA, and their q/k/v and gate/up merged (so not a tensor-parallel
shard, whose layers are left unmerged); anything else keeps the module's forward. Even then
its first step is checked against the module's forward (both write the same slots); if the
logits differ it is switched off for good, with a warning, and the module's forward is kept.
Prefills, embeddings as input and steps that want hidden states always take the module's forward.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from omnigraph.runtime.executors.fused_linears import FusedProjection
from omnigraph.runtime.executors.paged_cache import PagedStep

log = logging.getLogger(__name__)

MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})  # one decoder layer, as written here
CHECK_TOLERANCE = 0.005  # of the largest logit: the same arithmetic, up to rounding; a wrong one is far off


Linear = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class _Layer:
    """One decoder layer's tensors and callables; linears are their modules' bound `forward`s
    (no hooks run at inference, and nn.Module.__call__ costs a few microseconds a call)."""

    norm_in: tuple[torch.Tensor, float]
    qkv: Linear
    qkv_ends: tuple[int, int]  # where the queries and the keys end in its output
    q_heads: int
    kv_heads: int
    head_dim: int
    scaling: float
    qk_norms: tuple[tuple[torch.Tensor, float], tuple[torch.Tensor, float]] | None  # Qwen3
    o_proj: Linear
    norm_post: tuple[torch.Tensor, float]
    gate_up: Linear
    gate_end: int
    act: Callable[[torch.Tensor], torch.Tensor]
    down_proj: Linear


def _norm(module: Any) -> tuple[torch.Tensor, float] | None:
    weight, eps = getattr(module, "weight", None), getattr(module, "variance_epsilon", None)
    return (weight, float(eps)) if isinstance(weight, torch.Tensor) and eps is not None else None


def _rms(x: torch.Tensor, norm: tuple[torch.Tensor, float]) -> torch.Tensor:
    """transformers' RMSNorm (in f32, weight applied at the input's dtype) in four calls."""
    weight, eps = norm
    return weight * F.rms_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """transformers' `x * cos + rotate_half(x) * sin`, with rotate_half's negation moved onto
    the first half of sin (`signed_sin`, made once a step): the same products, fewer calls."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * signed_sin


def _layer(layer: nn.Module, config: Any) -> _Layer | None:
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    qkv, gate_up = getattr(attn, "fused_q_k_v", None), getattr(mlp, "fused_gate_up", None)
    norm_in = _norm(getattr(layer, "input_layernorm", None))
    norm_post = _norm(getattr(layer, "post_attention_layernorm", None))
    if not (isinstance(qkv, FusedProjection) and isinstance(gate_up, FusedProjection) and norm_in and norm_post):
        return None
    if getattr(attn, "sliding_window", None) or not all(hasattr(attn, a) for a in ("head_dim", "scaling", "o_proj")):
        return None
    dim = int(attn.head_dim)
    (q0, q1), (k0, k1), (v0, v1) = qkv.bounds
    if q1 % dim or (k1 - k0) != (v1 - v0) or (k1 - k0) % dim or (q1 // dim) % ((k1 - k0) // dim):
        return None
    qk_norms = None
    if hasattr(attn, "q_norm") or hasattr(attn, "k_norm"):
        q_norm, k_norm = _norm(getattr(attn, "q_norm", None)), _norm(getattr(attn, "k_norm", None))
        if q_norm is None or k_norm is None or config.model_type != "qwen3":
            return None
        qk_norms = (q_norm, k_norm)
    return _Layer(norm_in, qkv.linear.forward, (q1, k1), q1 // dim, (k1 - k0) // dim, dim, float(attn.scaling),
                  qk_norms, attn.o_proj.forward, norm_post, gate_up.linear.forward, gate_up.bounds[0][1],
                  mlp.act_fn, mlp.down_proj.forward)


class LeanDecode:
    """Decode steps (one new token a row, ids in, logits out) for a recognised model."""

    def __init__(self, model: nn.Module, layers: list[_Layer]) -> None:
        core: Any = model.model  # type: ignore[union-attr]
        self.embed, self.rotary, self.layers = core.embed_tokens, core.rotary_emb, layers
        self.norm = _norm(core.norm)
        self.head: Linear = model.lm_head.forward  # type: ignore[union-attr]
        self.name = type(model).__name__
        self.checked = False

    @classmethod
    def build(cls, model: nn.Module) -> LeanDecode | None:
        """The lean step for `model`, or None where it is not one this step computes exactly."""
        config: Any = getattr(model, "config", None)
        core: Any = getattr(model, "model", None)
        if config is None or core is None or getattr(config, "model_type", None) not in MODEL_TYPES:
            return None
        if getattr(config, "_attn_implementation", None) != "sdpa" or getattr(config, "pretraining_tp", 1) != 1:
            return None
        if any(t != "full_attention" for t in getattr(config, "layer_types", None) or []):
            return None
        if config.model_type == "mistral" and getattr(config, "sliding_window", None) is not None:
            return None
        if getattr(config, "partial_rotary_factor", 1.0) != 1.0:  # RoPE on all of each head here
            return None
        if not all(hasattr(core, a) for a in ("embed_tokens", "rotary_emb", "layers", "norm")) \
                or not hasattr(model, "lm_head") or _norm(core.norm) is None:
            return None
        if len(core.layers) != config.num_hidden_layers:
            return None
        layers = [_layer(layer, config) for layer in core.layers]
        if any(layer is None for layer in layers):
            return None
        return cls(model, layers)  # type: ignore[arg-type]

    def applies(self, inputs: torch.Tensor, step: PagedStep) -> bool:
        """A decode step of token ids over cached positions, the pool in the model's dtype."""
        return (inputs.dim() == 2 and inputs.shape[1] == 1 and step.width > 0
                and step.pool.dtype == self.embed.weight.dtype)

    def logits(self, ids: torch.Tensor, step: PagedStep) -> torch.Tensor:
        """[rows, vocab] for ids [rows, 1]; the new keys and values land in the pool."""
        rows = ids.shape[0]
        h = self.embed(ids)
        cos, sin = self.rotary(h, step.positions)
        half = sin.shape[-1] // 2
        cos, sin = cos.unsqueeze(1), torch.cat((-sin[..., :half], sin[..., half:]), dim=-1).unsqueeze(1)
        padded = not bool(step.mask.all())
        mask = step.mask.bool()[:, None, None, :] if padded else None  # what transformers builds for SDPA
        for index, layer in enumerate(self.layers):
            x = _rms(h, layer.norm_in)
            qkv = layer.qkv(x)
            q_end, k_end = layer.qkv_ends
            dim, heads, kv_heads = layer.head_dim, layer.q_heads, layer.kv_heads
            v = qkv[..., k_end:].view(rows, 1, kv_heads, dim).transpose(1, 2)
            if layer.qk_norms is None:  # RoPE on queries and keys at once
                qk = _rotate(qkv[..., :k_end].view(rows, 1, heads + kv_heads, dim).transpose(1, 2), cos, sin)
                q, k = qk[:, :heads], qk[:, heads:]
            else:
                q = _rms(qkv[..., :q_end].view(rows, 1, heads, dim), layer.qk_norms[0]).transpose(1, 2)
                k = _rms(qkv[..., q_end:k_end].view(rows, 1, kv_heads, dim), layer.qk_norms[1]).transpose(1, 2)
                q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            step.store(index, k, v)
            keys, values = step.attended(index)
            # One query a row: its heads grouped by the key head they read (transformers' pack_gqa).
            out = F.scaled_dot_product_attention(q.reshape(rows, kv_heads, heads // kv_heads, dim), keys, values,
                                                 attn_mask=mask, scale=layer.scaling)
            h = h + layer.o_proj(out.reshape(rows, 1, heads * dim))
            gate_up = layer.gate_up(_rms(h, layer.norm_post))
            split = layer.gate_end
            h = h + layer.down_proj(layer.act(gate_up[..., :split]) * gate_up[..., split:])
        assert self.norm is not None
        return self.head(_rms(h, self.norm))[:, -1]

    def check(self, lean: torch.Tensor | None, module: torch.Tensor, error: Exception | None = None) -> bool:
        """Whether the first lean step's logits are the module's (else it is not used again)."""
        self.checked = True
        if lean is None or lean.shape != module.shape:
            log.warning("the lean decode step does not fit %s (%s): not used", self.name, error or "shape")
            return False
        worst = float((lean.float() - module.float()).abs().max())
        if worst <= CHECK_TOLERANCE * float(module.float().abs().max()):
            return True
        log.warning("the lean decode step differs from %s's forward (by %.3g): not used", self.name, worst)
        return False
