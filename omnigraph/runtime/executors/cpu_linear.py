"""Linear layers on a CPU, with their weights repacked once for oneDNN.

An LLM's decode step is matrix-vector products: each weight is read once per step, so the
step is as fast as the weights stream from memory. torch's plain `linear` on a CPU reads a
row-major weight at a fraction of the memory bandwidth at batch 1 (oneDNN reorders it on
every call); a weight reordered ahead of time into oneDNN's blocked layout
(`mkldnn._reorder_linear_weight`, what inductor does when it freezes a graph) reads at close
to the machine's bandwidth. Measured on this project's 2-core EPYC, SmolLM2's linears at
batch 1: bf16 17 ms plain vs 5.5 ms packed; at batch 32 the gain is smaller but still there.

Before packing, `optimize_linears` merges each layer's q/k/v and gate/up linears into one
matmul per group (fused_linears.py): fewer, larger calls, each paying oneDNN's fixed cost once.

Only the runtime packs (ExecContext.optimize), after any sharding, and only on a CPU with
oneDNN; a packed weight is an opaque oneDNN tensor, so nothing exports, bundles or shards
the module afterwards. The packed copy replaces the plain one, except where the weight is
tied to another module (an embedding shares the LM head's weight): that one stays too.
"""
from __future__ import annotations

import torch
from torch import nn

from omnigraph.runtime.executors.fused_linears import fuse_projections

_PACKED_DTYPES = (torch.float32, torch.bfloat16)


class PackedLinear(nn.Module):
    """`x @ W.T + b` with W in oneDNN's blocked layout (inference only)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.weight_dtype = weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.weight_dtype:
            x = x.to(self.weight_dtype)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def can_pack(model: nn.Module) -> bool:
    params = list(model.parameters())
    return (bool(params) and params[0].device.type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def pack_linears(model: nn.Module) -> int:
    """Replace the model's CPU linear layers (f32/bf16) by packed ones; returns how many."""
    if not can_pack(model):
        return 0
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.weight.dtype in _PACKED_DTYPES and child.weight.dim() == 2:
                setattr(parent, name, PackedLinear(child))  # the plain weight goes with it, unless tied
                count += 1
    return count


def optimize_linears(model: nn.Module) -> tuple[int, int]:
    """What the runtime does to an LLM's linears on a CPU with oneDNN: sibling projections
    merged (a sharded model's are left as they are), then every plain linear packed; returns
    (groups merged, linears packed), (0, 0) elsewhere."""
    if not can_pack(model):
        return 0, 0
    return fuse_projections(model), pack_linears(model)
