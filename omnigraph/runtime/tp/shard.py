"""Megatron-style tensor parallelism of a transformers model, in place.

Attention: q/k/v projections are column-parallel by heads (each rank keeps heads/tp query
heads and their KV heads), the output projection is row-parallel and all-reduced. So each
rank's KV cache holds only its own KV heads: the cache is sharded with no extra code.
With more ranks than KV heads (tp a multiple of them), each rank keeps the one KV head its
query heads read. MLP: gate/up (or fc1) column-parallel, down (or fc2) row-parallel and
all-reduced. Two all-reduces per layer, as in Megatron-LM. Embeddings, norms and the LM
head stay whole on every rank (cheap at the sizes this runtime shards; the vocabulary
could be split the same way).

Layers are found by their parts, whatever the architecture calls its blocks: an attention
is a module with q_proj, k_proj, v_proj and o_proj/out_proj linears (Llama, Qwen, Mistral,
SigLIP, Whisper, Qwen2-Audio); an MLP, gate_proj/up_proj/down_proj or fc1/fc2.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from omnigraph.runtime.tp.comm import RankComm

_OUT = ("o_proj", "out_proj")
_MLPS = (("gate_proj", "up_proj", "down_proj"), ("fc1", "fc2"))
_HEAD_ATTRS = ("num_heads", "num_attention_heads")  # read by forwards that reshape by heads


class ColumnParallelLinear(nn.Module):
    """y[..., rows] = x @ W[rows]^T (+ b[rows]): this rank's slice of the outputs."""

    def __init__(self, linear: nn.Linear, rows: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach()[rows].clone(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach()[rows].clone(),
                                                                  requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = all_reduce(x[..., cols] @ W[:, cols]^T) + b: the bias is added once, after the sum."""

    def __init__(self, linear: nn.Linear, cols: torch.Tensor, comm: RankComm) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach()[:, cols].clone(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.comm = comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.comm.all_reduce(nn.functional.linear(x, self.weight).contiguous())
        return y if self.bias is None else y + self.bias


def shard_transformer(model: nn.Module, comm: RankComm) -> int:
    """Shard every attention and MLP of `model` across `comm`'s ranks; returns how many
    layers it sharded (0: nothing here to shard, which the caller reports)."""
    done = 0
    for module in list(model.modules()):
        if _is_attention(module):
            _shard_attention(module, comm)
            done += 1
        for names in _MLPS:
            if all(isinstance(getattr(module, n, None), nn.Linear) for n in names):
                _shard_mlp(module, names, comm)
                done += 1
    return done


def _is_attention(module: nn.Module) -> bool:
    linears = ("q_proj", "k_proj", "v_proj")
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in linears) and any(
        isinstance(getattr(module, n, None), nn.Linear) for n in _OUT)


def _heads(module: nn.Module) -> tuple[int, int, int]:
    """(query heads, KV heads, head dim) of an attention module."""
    config: Any = getattr(module, "config", None)
    dim = getattr(module, "head_dim", None)
    heads = next((getattr(module, a) for a in _HEAD_ATTRS if isinstance(getattr(module, a, None), int)), None)
    if heads is None and config is not None:
        heads = getattr(config, "num_attention_heads", None)
    if dim is None and heads:
        dim = module.q_proj.out_features // heads
    if not heads or not dim or module.q_proj.out_features != heads * dim:
        raise ValueError(f"cannot tell the heads of {type(module).__name__} apart to shard them")
    kv = module.k_proj.out_features // dim
    return heads, kv, dim


def _shard_attention(module: nn.Module, comm: RankComm) -> None:
    heads, kv, dim = _heads(module)
    tp, rank = comm.world, comm.rank
    if heads % tp:
        raise ValueError(f"tp={tp} does not divide the {heads} attention heads of {type(module).__name__}")
    if kv % tp and tp % kv:
        raise ValueError(f"tp={tp} and the {kv} KV heads of {type(module).__name__} do not divide one another")
    local = heads // tp
    if kv % tp == 0:  # split the KV heads like the query heads
        kv_local, kv_first = kv // tp, rank * (kv // tp)
    else:  # more ranks than KV heads: each rank keeps the one its query heads share
        kv_local, kv_first = 1, rank * kv // tp
    q_rows = torch.arange(rank * local * dim, (rank + 1) * local * dim)
    kv_rows = torch.arange(kv_first * dim, (kv_first + kv_local) * dim)
    module.q_proj = ColumnParallelLinear(module.q_proj, q_rows)
    module.k_proj = ColumnParallelLinear(module.k_proj, kv_rows)
    module.v_proj = ColumnParallelLinear(module.v_proj, kv_rows)
    out = next(n for n in _OUT if isinstance(getattr(module, n, None), nn.Linear))
    setattr(module, out, RowParallelLinear(getattr(module, out), q_rows, comm))
    for attr in _HEAD_ATTRS:
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, local)
    if hasattr(module, "num_key_value_heads"):
        module.num_key_value_heads = kv_local
    if hasattr(module, "num_key_value_groups"):
        module.num_key_value_groups = local // kv_local
    if isinstance(getattr(module, "embed_dim", None), int):
        module.embed_dim = local * dim


def _shard_mlp(module: nn.Module, names: tuple[str, ...], comm: RankComm) -> None:
    *ins, out = names
    inter = getattr(module, ins[0]).out_features
    if inter % comm.world:
        raise ValueError(f"tp={comm.world} does not divide the MLP width {inter} of {type(module).__name__}")
    part = inter // comm.world
    rows = torch.arange(comm.rank * part, (comm.rank + 1) * part)
    for name in ins:
        setattr(module, name, ColumnParallelLinear(getattr(module, name), rows))
    setattr(module, out, RowParallelLinear(getattr(module, out), rows, comm))
