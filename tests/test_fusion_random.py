"""Random graphs of pointwise ops and row reductions: fused kernels equal eager (hypothesis,
derandomized). Values are [B, S, N] tensors, row statistics [B, S, 1] or [B, S], a weight [N]."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from fusion_cases import AUTO, compile_case, run_fused

pytest.importorskip("triton")

UNARY = {
    "neg": torch.neg, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "abs": torch.abs,
    "silu": nn.functional.silu, "gelu": nn.functional.gelu, "sqrt1": lambda v: torch.sqrt(v.abs() + 1),
    "rsqrt1": lambda v: torch.rsqrt(v * v + 1), "exp_small": lambda v: torch.exp(torch.tanh(v)),
    "scale": lambda v: v * 0.5 + 0.25, "square": lambda v: v * v,
}
BINARY = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "max": torch.maximum,
    "div1": lambda a, b: a / (b.abs() + 1), "where": lambda a, b: torch.where(a > b, a, b * 2),
}
REDUCE = {
    "sum": lambda v: v.sum(-1, keepdim=True), "mean": lambda v: v.mean(-1, keepdim=True),
    "amax": lambda v: v.amax(-1, keepdim=True), "mean_flat": lambda v: v.mean(-1),
    "softmax": lambda v: v.softmax(-1), "var": lambda v: v.var(-1, keepdim=True),
}
Step = tuple[str, str, int, int]  # family, op, operand indices (into the values so far)


class Program(nn.Module):
    """Runs the steps on [x, weight, row]; returns the last two values."""

    def __init__(self, steps: list[Step], width: int) -> None:
        super().__init__()
        self.steps = steps
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, width))

    def forward(self, x: torch.Tensor, row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values = [x, self.weight, row]
        for family, op, i, j in self.steps:
            a, b = values[i % len(values)], values[j % len(values)]
            if family == "unary":
                values.append(UNARY[op](a))
            elif family == "binary":
                if a.dim() == 2 and b.dim() == 3:  # a [B, S] statistic: broadcast it as a row
                    a = a.unsqueeze(-1)
                if b.dim() == 2 and a.dim() == 3:
                    b = b.unsqueeze(-1)
                if a.dim() == 2 and b.dim() == 1:
                    a = a.unsqueeze(-1)
                if b.dim() == 2 and a.dim() == 1:
                    b = b.unsqueeze(-1)
                values.append(BINARY[op](a, b))
            else:
                values.append(REDUCE[op](a if a.dim() == 3 else x + (a.unsqueeze(-1) if a.dim() == 2 else a)))
        return values[-1] + 0, values[-2] + 0


steps = st.lists(st.one_of(
    st.tuples(st.just("unary"), st.sampled_from(sorted(UNARY)), st.integers(0, 99), st.integers(0, 99)),
    st.tuples(st.just("binary"), st.sampled_from(sorted(BINARY)), st.integers(0, 99), st.integers(0, 99)),
    st.tuples(st.just("reduce"), st.sampled_from(sorted(REDUCE)), st.integers(0, 99), st.integers(0, 99)),
), min_size=1, max_size=8)


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(steps=steps)
def test_random_pointwise_and_reduction_graphs_match_eager(steps: list[Step]) -> None:
    width = 12  # not a power of two: the masked lanes of every row are exercised
    g = torch.Generator().manual_seed(len(steps))
    x, row = torch.randn(2, 5, width, generator=g), torch.randn(2, 5, 1, generator=g)
    module = Program(steps, width).eval()
    with torch.no_grad():
        want = module(x, row)
    kernel_file = compile_case(module, (x, row), ({0: AUTO, 1: AUTO}, {0: AUTO, 1: AUTO}))
    assert kernel_file.kernels, "every step is pointwise or a row reduction: something must fuse"
    got = run_fused(kernel_file, module, (x, row))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, equal_nan=True)  # var of one element is nan
