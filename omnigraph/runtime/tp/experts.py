"""Expert parallelism for a `MoeBlock`: each rank keeps num_experts/ep of the experts.

Every rank of the instance sees the same tokens (the stage's input reaches all ranks), so
dispatch needs no communication: each rank routes all tokens with the whole (small)
router, runs only the tokens routed to its own experts, and one all-reduce of
[tokens, hidden] sums the ranks' partial outputs. The shared experts (one fused MLP) are
split Megatron-style across the same ranks, and their partial sums ride in the same
all-reduce. Null experts cost nothing anywhere.
"""
from __future__ import annotations

import torch
from torch import nn

from omnigraph.runtime.executors.moe import MoeBlock, SwiGLU
from omnigraph.runtime.tp.comm import RankComm


class ExpertParallelMoe(nn.Module):
    def __init__(self, block: MoeBlock, comm: RankComm) -> None:
        super().__init__()
        ep, rank = comm.world, comm.rank
        if block.num_experts % ep:
            raise ValueError(f"ep={ep} does not divide the {block.num_experts} experts")
        per = block.num_experts // ep
        self.first = rank * per
        self.block = block
        self.block.experts = nn.ModuleList(list(block.experts)[self.first:self.first + per])
        self.shared = None if block.shared is None else _split_swiglu(block.shared, rank, ep)
        block.shared = None  # its slice lives in self.shared
        self.comm = comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        weights = self.block.gates(flat)
        y = torch.zeros_like(flat)
        for i, expert in enumerate(self.block.experts):
            e = self.first + i
            tokens = weights[:, e].nonzero().squeeze(-1)
            if tokens.numel():
                y.index_add_(0, tokens, expert(flat[tokens]) * weights[tokens, e, None].to(flat.dtype))
        if self.shared is not None:
            y = y + self.shared(flat)
        return self.comm.all_reduce(y).reshape(x.shape)


def _split_swiglu(mlp: SwiGLU, rank: int, world: int) -> SwiGLU:
    """This rank's slice of the intermediate width; its output is a partial sum."""
    inter = mlp.down.in_features
    if inter % world:
        raise ValueError(f"ep={world} does not divide the shared experts' width {inter}")
    part = inter // world
    rows = torch.arange(rank * part, (rank + 1) * part)
    out = SwiGLU(mlp.down.out_features, part).to(mlp.down.weight.dtype)
    with torch.no_grad():
        out.gate_up.weight.copy_(torch.cat([mlp.gate_up.weight[rows], mlp.gate_up.weight[inter + rows]]))
        out.down.weight.copy_(mlp.down.weight[:, rows])
    return out.to(mlp.down.weight.device).requires_grad_(False)


def shard_experts(model: nn.Module, comm: RankComm) -> nn.Module:
    """The expert-parallel form of a MoeBlock stage module."""
    if not isinstance(model, MoeBlock):
        raise ValueError(f"expert parallelism splits MoeBlock's experts; {type(model).__name__} is no MoeBlock")
    return ExpertParallelMoe(model, comm)
