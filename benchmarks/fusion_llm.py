"""The LLM case group of benchmarks/fusion_kernels.py: a whole Llama-architecture causal LM,
its prefill and decode step captured as the ar_llm executor calls them
(runtime/entry_points.py's `_Prefill` and `_DecodeStep`), fused, and run three ways:
the eager wrapper, `torch.compile(wrapper)` and the fused program (generated kernels).

The model is `transformers.LlamaForCausalLM` from a config (CONFIGS) with seeded random
weights. Entries are exported from `_llm_entries`' small example inputs with its dynamic
dims, so one fused program serves every batch size and length measured.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

CONFIGS: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                         max_position_embeddings=8192),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=300, max_position_embeddings=128),
}
Timer = Callable[[Callable[[], Any], int], float]  # (fn, iters) -> seconds per call


@dataclass
class Shapes:
    """What one run measures: decode steps per batch size over a KV cache, and one prefill."""

    decode_batches: tuple[int, ...] = (1, 8, 32)
    kv_len: int = 512
    prefill_batch: int = 1
    prefill_len: int = 512


GPU_SHAPES = Shapes()
CPU_CHECK_SHAPES = Shapes(decode_batches=(2,), kv_len=8, prefill_batch=2, prefill_len=8)


@dataclass
class FusedEntry:
    name: str
    wrapper: nn.Module  # the eager entry (_Prefill or _DecodeStep around the model)
    fused: nn.Module  # omnigraph.runtime.fused_stage.FusedProgram
    kernels: int


def build_model(name: str, device: str, dtype: torch.dtype) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**CONFIGS[name]))
    return model.to(dtype).eval()


def fuse_entries(model: nn.Module, device: str, interpret: bool) -> dict[str, FusedEntry]:
    """prefill and decode_step, captured with `_llm_entries`' example inputs and dynamic dims
    (moved to `device`), fused, assembled and bound to the model's live weights."""
    from omnigraph.codegen.kernel_module import assemble
    from omnigraph.runtime.entry_points import _llm_entries
    from omnigraph.passes.fusion.capture import export_entry
    from omnigraph.passes.fusion.fuse import fuse_program
    from omnigraph.runtime.fused_stage import FusedProgram, load_kernels

    out = {}
    for entry in _llm_entries(SimpleNamespace(model=model), None):
        entry.args = torch.utils._pytree.tree_map(
            lambda a: a.to(device) if isinstance(a, torch.Tensor) else a, entry.args)
        graph = fuse_program(export_entry(entry))
        kernel_file = assemble("llm", entry.name, graph.program, graph.kernels, graph.compute_ops)
        kernels = load_kernels(kernel_file.source, kernel_file.filename, interpret)
        # the wrapper holds the model as `model`, as the entry was captured (like fused_entry's holder)
        fused = FusedProgram(kernels, entry.module, kernel_file.constants, device, interpret)
        out[entry.name] = FusedEntry(entry.name, entry.module, fused, len(kernel_file.kernels))
    return out


def decode_inputs(model: nn.Module, batch: int, kv_len: int, device: str) -> tuple[Any, ...]:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    dtype = next(model.parameters()).dtype
    g = torch.Generator(device).manual_seed(batch)
    kv = [torch.randn(batch, cfg.num_key_value_heads, kv_len, head_dim, generator=g, device=device).to(dtype)
          for _ in range(2 * cfg.num_hidden_layers)]
    ids = torch.randint(0, cfg.vocab_size, (batch, 1), generator=g, device=device)
    mask = torch.ones(batch, kv_len + 1, dtype=torch.long, device=device)
    return ids, mask, torch.full((batch, 1), kv_len, device=device), kv


def prefill_inputs(model: nn.Module, batch: int, length: int, device: str) -> tuple[Any, ...]:
    dtype = next(model.parameters()).dtype
    g = torch.Generator(device).manual_seed(length)
    embeds = torch.randn(batch, length, model.config.hidden_size, generator=g, device=device).to(dtype)
    mask = torch.ones(batch, length, dtype=torch.long, device=device)
    return embeds, mask, torch.arange(length, device=device).repeat(batch, 1)


def wall_timed(fn: Callable[[], Any], iters: int) -> float:
    """Mean seconds of one call, by the wall clock (CPU: no CUDA events)."""
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def max_diff(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...], check: bool) -> float:
    """Largest absolute difference over all outputs; with `check`, assert they match."""
    assert len(got) == len(want), f"{len(got)} outputs, eager has {len(want)}"
    for a, b in zip(got, want):
        assert a.shape == b.shape, f"shape {tuple(a.shape)}, eager {tuple(b.shape)}"
        if check:
            torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-4)
    return max(float((a.float() - b.float()).abs().max()) for a, b in zip(got, want))


def measure_call(case: str, entry: FusedEntry, compiled: nn.Module | None, args: tuple[Any, ...],
                 timer: Timer, iters: int, check: bool) -> dict[str, Any]:
    with torch.no_grad():
        want, got = entry.wrapper(*args), entry.fused(*args)
        diff = max_diff(got, want, check)
        t_eager = timer(lambda: entry.wrapper(*args), iters)
        t_compile = timer(lambda: compiled(*args), iters) if compiled is not None else None
        t_ours = timer(lambda: entry.fused(*args), iters)
    return {"case": case, "entry": entry.name, "batch": int(args[0].shape[0]), "kernels": entry.kernels,
            "eager_ms": t_eager * 1e3, "torch_compile_ms": t_compile * 1e3 if t_compile is not None else None,
            "omnigraph_ms": t_ours * 1e3, "speedup_vs_eager": t_eager / t_ours,
            "speedup_vs_torch_compile": t_compile / t_ours if t_compile is not None else None, "max_abs_diff": diff}


def measure_llm(config: str, device: str, dtype: torch.dtype, shapes: Shapes, timer: Timer, iters: int,
                compile_too: bool = True, interpret: bool = False, check: bool = False) -> list[dict[str, Any]]:
    """One row per decode batch size, then one for the prefill."""
    model = build_model(config, device, dtype)
    entries = fuse_entries(model, device, interpret)
    decode, prefill = entries["decode_step"], entries["prefill"]
    compiled = {name: torch.compile(e.wrapper) if compile_too else None for name, e in entries.items()}
    rows = []
    for batch in shapes.decode_batches:
        args = decode_inputs(model, batch, shapes.kv_len, device)
        rows.append(measure_call(f"llm_decode_b{batch}_kv{shapes.kv_len}", decode, compiled["decode_step"],
                                 args, timer, iters, check))
    args = prefill_inputs(model, shapes.prefill_batch, shapes.prefill_len, device)
    rows.append(measure_call(f"llm_prefill_b{shapes.prefill_batch}_s{shapes.prefill_len}", prefill,
                             compiled["prefill"], args, timer, iters, check))
    return rows


def format_row(row: dict[str, Any]) -> str:
    compile_ms = f"{row['torch_compile_ms']:.3f} ms" if row["torch_compile_ms"] is not None else "-"
    vs_compile = f"x{row['speedup_vs_torch_compile']:.2f}" if row["speedup_vs_torch_compile"] is not None else "-"
    return (f"{row['case']:20s} {row['kernels']:3d} kernels  eager {row['eager_ms']:.3f} ms  "
            f"compile {compile_ms}  ours {row['omnigraph_ms']:.3f} ms  x{row['speedup_vs_eager']:.2f} vs eager  "
            f"{vs_compile} vs compile  max|diff| {row['max_abs_diff']:.2e}")
