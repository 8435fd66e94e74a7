"""Sibling projections of a transformer layer (q/k/v, gate/up) merged into one matmul each.

A decode step at batch 1 reads every weight once, and on a CPU each matmul call also has a
fixed cost (oneDNN's dispatch, threads, a cold start on each small matrix): SmolLM2-135M's
k and v matrices are 0.2 MB each. One [q;k;v] matmul and one [gate;up] matmul per layer make
fewer, larger calls (7 per layer become 4) that stream closer to the memory bandwidth.

The attention and MLP forwards stay the model's own (any Llama-, Qwen- or Mistral-style
module): `q_proj`, `k_proj` and `v_proj` become `ProjectionSlice`s of one `FusedProjection`.
The first slice called with an input computes the merged product; the others called with
that same tensor (same object, not edited since) take their columns of it, and the product
is dropped once every slice has had its part. A slice called with another input computes
the product again, so a forward that feeds them differently is still right, only not faster.

Only plain `nn.Linear`s that agree (input width, dtype, device) are merged: the column- and
row-parallel linears of a tensor-parallel shard (runtime/tp/shard.py) are left alone, as is a
weight some other module shares. Inference only: the merged weight is a new tensor.
"""
from __future__ import annotations

import torch
from torch import nn

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class FusedProjection(nn.Module):
    """`linear` holds the parts' weights stacked by rows; `bounds` are each part's columns
    of its output."""

    def __init__(self, parts: list[nn.Linear]) -> None:
        super().__init__()
        first = parts[0]
        weight = torch.cat([p.weight.detach() for p in parts])
        with_bias = any(p.bias is not None for p in parts)
        self.linear = nn.Linear(first.in_features, weight.shape[0], bias=with_bias,
                                device=weight.device, dtype=weight.dtype)
        self.linear.weight = nn.Parameter(weight, requires_grad=False)
        if with_bias:  # a part without a bias adds zeros
            bias = torch.cat([p.bias.detach() if p.bias is not None
                              else torch.zeros(p.out_features, dtype=weight.dtype, device=weight.device)
                              for p in parts])
            self.linear.bias = nn.Parameter(bias, requires_grad=False)
        edges = [0]
        for p in parts:
            edges.append(edges[-1] + p.out_features)
        self.bounds = list(zip(edges, edges[1:]))
        self.held = _Held()  # a plain object: nn.Module's own attribute setting is slow

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Part `index`'s output for `x`, from the merged product of `x` (computed once)."""
        held = self.held
        if not (held.output is not None and x is held.input and x._version == held.version
                and index in held.pending):
            held.input, held.version = x, x._version
            held.output = self.linear(x)
            held.pending = set(range(len(self.bounds)))
        output = held.output
        held.pending.discard(index)
        if not held.pending:  # every part had its share: hold neither tensor past the forward
            held.input = held.output = None
        lo, hi = self.bounds[index]
        return output[..., lo:hi]


class _Held:
    """The last input and its merged product, until every part has taken its columns."""

    def __init__(self) -> None:
        self.input: torch.Tensor | None = None
        self.version = -1
        self.output: torch.Tensor | None = None
        self.pending: set[int] = set()


class ProjectionSlice(nn.Module):
    """Stands where one of the merged linears was; computes through the shared product."""

    def __init__(self, fused: FusedProjection, index: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.index = index
        object.__setattr__(self, "fused", fused)  # not a submodule: the parent registers it once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.part(x, self.index)


def _mergeable(parts: list[object], shared: set[int]) -> bool:
    if not all(type(p) is nn.Linear for p in parts):
        return False
    linears: list[nn.Linear] = parts  # type: ignore[assignment]
    first = linears[0].weight
    return all(p.in_features == linears[0].in_features and p.weight.dtype == first.dtype
               and p.weight.device == first.device and p.weight.dim() == 2
               and p.weight.data_ptr() not in shared for p in linears)


def fuse_projections(model: nn.Module) -> int:
    """Merge each module's q/k/v and gate/up linears (where it has all of a group's, plain and
    alike) into one matmul per group, in place; returns how many groups it merged."""
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):  # a tied weight is registered twice
        counts[p.data_ptr()] = counts.get(p.data_ptr(), 0) + 1
    shared = {ptr for ptr, n in counts.items() if n > 1}  # stays where the other module needs it
    merged = 0
    for module in list(model.modules()):
        for names in GROUPS:
            parts = [getattr(module, n, None) for n in names]
            if not _mergeable(parts, shared):
                continue
            fused = FusedProjection(parts)  # type: ignore[arg-type]
            module.add_module("fused_" + "_".join(n.removesuffix("_proj") for n in names), fused)
            for index, (name, part) in enumerate(zip(names, parts)):
                setattr(module, name, ProjectionSlice(fused, index, part.in_features, part.out_features))
            merged += 1
    return merged
