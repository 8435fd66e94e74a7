"""`moe`: a mixture-of-experts block, x [seq, hidden] → y [seq, hidden].

`MoeBlock` (model `py:omnigraph.runtime.executors.moe:MoeBlock`) is built from the
stage's params: a linear router over num_experts SwiGLU experts plus null_experts
zero-computation slots (MoE++: a token routed there skips that share of compute),
top_k or top_p routing, and shared experts every token goes through (DeepSeekMoE).
Any other module is called on [1, tokens, hidden]. MoE is token-wise, so the tokens
of all requests in a step run as one forward, whatever their lengths.
"""
from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from omnigraph.runtime.executor import WorkItem
from omnigraph.runtime.executors.batched import GroupedExecutor
from omnigraph.runtime.executors.modules import load_module, main_output, stage_dtype
from omnigraph.runtime.fused_stage import fused_entry

_SIZES = ("hidden_size", "num_experts", "top_k", "top_p", "shared_experts", "null_experts", "routing")


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class MoeBlock(nn.Module):
    def __init__(self, hidden_size: int, num_experts: int, top_k: int = 2, shared_experts: int = 0,
                 null_experts: int = 0, routing: Literal["top_k", "top_p"] = "top_k",
                 intermediate_size: int | None = None, top_p: float = 0.4, norm_topk_prob: bool = True) -> None:
        """top_p: routing keeps the most probable experts until their mass reaches it (0.4, as in
        dynamic top-p routing), using at most top_k; norm_topk_prob renormalizes the kept
        weights, null slots included, so a null pick scales the routed output down."""
        super().__init__()
        if routing not in ("top_k", "top_p"):
            raise ValueError(f"routing is top_k or top_p, not {routing!r}")
        inter = intermediate_size or 2 * hidden_size
        self.num_experts, self.null_experts = num_experts, null_experts
        self.top_k, self.top_p, self.routing, self.norm = top_k, top_p, routing, norm_topk_prob
        self.router = nn.Linear(hidden_size, num_experts + null_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(hidden_size, inter) for _ in range(num_experts))
        # The shared experts, fused into one MLP: the same sum as separate ones, one matmul.
        self.shared = SwiGLU(hidden_size, inter * shared_experts) if shared_experts else None

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Routing weights [tokens, num_experts + null_experts]; zero where not routed."""
        probs = self.router(x).float().softmax(-1)
        k = min(self.top_k, probs.shape[-1])
        top, idx = probs.topk(k, dim=-1)  # sorted, most probable first
        if self.routing == "top_p":  # keep a prefix: every expert before the mass reaches top_p
            top = top * ((top.cumsum(-1) - top) < self.top_p)
        weights = torch.zeros_like(probs).scatter(-1, idx, top)
        if self.norm:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        weights = self.gates(flat)
        y = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):  # columns past num_experts are null: no compute
            tokens = weights[:, e].nonzero().squeeze(-1)
            if tokens.numel():
                y.index_add_(0, tokens, expert(flat[tokens]) * weights[tokens, e, None].to(flat.dtype))
        if self.shared is not None:
            y = y + self.shared(flat)
        return y.reshape(x.shape)


class MoeExecutor(GroupedExecutor[torch.Tensor]):
    def load(self) -> None:
        self.hidden = self.params.get("hidden_size")
        self.dtype = stage_dtype(self.node)
        sizes = {k: self.params.get(k) for k in _SIZES}
        self.model = load_module(self.node, self.ctx.device, sizes, self.ctx.seed)
        self.model = fused_entry(self.node, "forward", self.model, self.ctx.device) or self.model

    def prepare(self, item: WorkItem) -> torch.Tensor:
        x = torch.as_tensor(item.inputs["x"])
        if x.dim() != 2 or (self.hidden is not None and x.shape[-1] != self.hidden):
            raise ValueError(f"x has shape {list(x.shape)}; expected [seq, {self.hidden or 'hidden'}]")
        return x

    def batch_key(self, prepared: torch.Tensor) -> Hashable:
        return prepared.shape[-1]

    def forward(self, batch: list[torch.Tensor], items: list[WorkItem]) -> list[dict[str, Any]]:
        x = torch.cat(batch).to(self.ctx.device, self.dtype)
        y = main_output(self.model(x.unsqueeze(0))).reshape(x.shape)
        return [{"y": part.to(b.dtype).cpu()} for part, b in zip(y.split([len(b) for b in batch]), batch)]
