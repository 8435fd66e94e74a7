"""Fusion legality, kept apart from profitability: no cycles, no higher peak memory, the caps."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fusion_cases import AUTO, compile_case, export, run_fused
from omnigraph.passes.fusion import legality as fusion_legality
from omnigraph.passes.fusion.fuse import _emittable, fuse_graph
from omnigraph.passes.fusion.state import FusionState
from omnigraph.passes.fusion.fx_lower import lower

pytest.importorskip("triton")


def _state(module: nn.Module, *args: torch.Tensor) -> FusionState:
    dyn = tuple({0: AUTO} for _ in args)
    return FusionState.of(lower(export(module, args, dyn)).graph)


def _group(state: FusionState, op: str) -> int:
    """The group of the first node whose name starts with `op`."""
    return next(g for n, g in state.group_of.items() if n.name.startswith(op))


class Detour(nn.Module):
    """b reads a directly and through an op fusion cannot enter (cumsum): a and b may not merge."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x * 2
        return a + torch.cumsum(a, dim=-1)


class LateConsumer(nn.Module):
    """A row sum of a big temporary, read only after another big temporary exists: merging the
    sum into its reader would keep the first temporary alive next to the second."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        big = torch.cumsum(x, dim=-1)
        total = big.sum(-1, keepdim=True)
        other = torch.cumsum(y, dim=-1)
        return other * total


class Chain(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(60):
            x = x * 1.01 + 0.001 * i
        return x


def test_a_merge_that_would_make_a_cycle_is_refused() -> None:
    state = _state(Detour(), torch.randn(4, 8))
    a, b = _group(state, "mul"), _group(state, "add")
    assert fusion_legality.shares_buffer(state, a, b)
    assert fusion_legality.makes_cycle(state, a, b)
    assert fusion_legality.check(state, a, b, _emittable).why == "cycle"
    final, _ = fuse_graph(state.graph)
    assert final.group_of[state.groups[a].nodes[0]] != final.group_of[state.groups[b].nodes[0]]


def test_the_fused_graph_still_runs_in_order_around_a_refused_cycle() -> None:
    module, x = Detour(), torch.randn(4, 8)
    kernel_file = compile_case(module, (x,), ({0: AUTO},))
    assert kernel_file.source.count("@triton.jit") == 2
    torch.testing.assert_close(run_fused(kernel_file, module, (x,)), module(x))


def test_a_merge_that_raises_peak_memory_is_refused() -> None:
    state = _state(LateConsumer(), torch.randn(64, 256), torch.randn(64, 256))
    total, reader = _group(state, "sum"), _group(state, "mul")
    merged = state.merged(total, reader)
    merged.groups[total].kind = "reduction"
    assert fusion_legality.peak_bytes(merged) > fusion_legality.peak_bytes(state)
    assert fusion_legality.check(state, total, reader, _emittable).why == "raises peak memory"
    assert _emittable(merged, total) is None  # the kernel itself would be fine: only memory says no


def test_groups_stay_under_the_op_cap() -> None:
    module, x = Chain(), torch.randn(4, 8)
    kernel_file = compile_case(module, (x,), ({0: AUTO},))
    assert all(len(k.nodes) <= fusion_legality.MAX_GROUP_OPS for k in kernel_file.kernels)
    assert len(kernel_file.kernels) == -(-120 // fusion_legality.MAX_GROUP_OPS)  # 120 ops, as few kernels as fit
    torch.testing.assert_close(run_fused(kernel_file, module, (x,)), module(x))


def test_two_matmuls_never_share_a_kernel() -> None:
    module = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    state = _state(module, torch.randn(4, 8))
    first, second = sorted(g for g in state.groups if state.groups[g].kind == "matmul")
    assert fusion_legality.check(state, first, second, _emittable).why == "matmul + matmul is no template"


@pytest.mark.parametrize("producer,consumer,kind", [
    ("pointwise", "pointwise", "pointwise"), ("pointwise", "reduction", "reduction"),
    ("reduction", "reduction", "reduction"), ("matmul", "pointwise", "matmul"),
    ("matmul", "reduction", None), ("reduction", "matmul", None),
])
def test_which_kinds_share_a_template(producer: str, consumer: str, kind: str | None) -> None:
    assert fusion_legality.merged_kind(producer, consumer) == kind


class Layers(nn.Module):
    """Four Llama decoder layers: a graph deep enough to fuse in several windows."""

    def __init__(self) -> None:
        super().__init__()
        from fusion_cases import LlamaBlock

        self.blocks = nn.ModuleList(LlamaBlock(32) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def _kernel_shapes(state: FusionState) -> list[tuple[str, tuple[str, ...]]]:
    groups = [g for g in state.groups.values() if len(g.nodes) > 1]
    return sorted((g.kind, tuple(n.target.__name__ for n in g.nodes)) for g in groups)


def test_a_deep_graph_fuses_window_by_window_as_it_does_whole() -> None:
    graph = _state(Layers(), torch.randn(2, 6, 32)).graph
    whole, merges = fuse_graph(graph, window=10**9)
    windowed, merges_w = fuse_graph(graph, window=120, overlap=40)  # a layer lowers to ~90 positions
    assert len(whole.order) > 3 * 120  # so there were several windows
    assert _kernel_shapes(windowed) == _kernel_shapes(whole) and merges_w == merges
    windowed.schedule()  # no cycle
    assert fusion_legality.peak_bytes(windowed) <= fusion_legality.peak_bytes(FusionState.of(graph))


def test_windows_start_where_no_group_straddles() -> None:
    from omnigraph.passes.fusion.fuse import _cut

    graph = _state(Layers(), torch.randn(2, 6, 32)).graph
    fused, _ = fuse_graph(graph, window=10**9)
    spans = [(fused.order[g.nodes[0]], fused.order[g.nodes[-1]]) for g in fused.groups.values()]
    for start in range(0, len(fused.order) - 40, 7):
        cut = _cut(fused, start, start + 40)
        assert start <= cut <= start + 40
        assert cut == start + 40 or not any(first < cut <= last for first, last in spans)
