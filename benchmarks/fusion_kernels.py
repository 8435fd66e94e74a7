"""Generated Triton kernels vs eager PyTorch vs torch.compile, per fusion pattern and per
whole block (Llama decoder layer, SigLIP encoder layer, PixArt DiT block), on one GPU.

Each case (tests/fusion_cases.py, at --scale times its test size) is captured with
torch.export, fused by omnigraph's fuse-ops, and run three ways side by side in one run:
eager, `torch.compile` (Inductor, default mode) and the fused graph calling the generated
kernels. Times are medians of --iters CUDA-event-timed calls after warm-up. Achieved
bandwidth counts the bytes a case must move at least (its inputs, weights and outputs,
once each) over the generated version's time, against the device's HBM peak (from
--target, else the table below); it is the figure that matters for the memory-bound
patterns (norms, softmax, rotary, adaLN, gating), not for the blocks' matmuls.

The LLM group (benchmarks/fusion_llm.py) runs a whole Llama-architecture causal LM
(`--llm`: a SmolLM2-135M-shaped config by default, or `tiny`; seeded random weights, built
in --dtype) through its prefill and decode step as the ar_llm executor calls them
(`_Prefill` / `_DecodeStep`, captured with their dynamic dims): the decode step at batch
1, 8 and 32 over a 512-position KV cache, and a 512-token prefill at batch 1, each eager
vs torch.compile vs fused, with speedups over both and the number of generated kernels.
`--only` names cases (`llm` for this group); `--llm none` skips it.

Goal (issue 5): >= 1.1x torch.compile, and >= 80% of the HBM roofline on the memory-bound
fusions. Needs CUDA: on a machine without one it says so and exits 0, writing nothing.

`--cpu-check` checks the script itself without a GPU: only the `tiny` LLM, on CPU under
the Triton interpreter, fp32, batch 2, KV length 8, prefill length 8, one wall-clock-timed
call each, no torch.compile; the fused outputs must match eager (atol/rtol 2e-4). It
prints the rows and writes nothing.

    python benchmarks/fusion_kernels.py [--scale 32] [--dtype bf16] [--iters 50] [--target h200x8]
                                        [--llm smollm2-135m|tiny|none] [--only llm,softmax] [--cpu-check]

Writes benchmarks/results/fusion_kernels.json (the LLM rows under "llm").
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the cases the tests check are the ones measured
sys.path.insert(0, str(ROOT / "benchmarks"))  # fusion_llm, the LLM group

HBM_GB_S = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0, "L40S": 864.0, "A10": 600.0}  # vendor peaks
MEMORY_BOUND = {"rmsnorm_residual", "layernorm_residual", "rotary", "softmax", "adaln_modulate", "moe_gate"}


def hbm_peak(target: str | None) -> float | None:
    if target is not None:
        from omnigraph.target import load_target

        devices = [d for node in load_target(target).nodes for d in node.devices if d.type != "cpu"]
        if devices:
            return float(devices[0].mem_bandwidth_gb_s)
    name = torch.cuda.get_device_name()
    return next((v for k, v in HBM_GB_S.items() if k in name), None)


def timed(fn: Callable[[], Any], iters: int) -> float:
    """Median seconds of one call, CUDA events around each."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
    return statistics.median(samples)


def min_bytes(module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: Any) -> int:
    outs = out if isinstance(out, tuple) else (out,)
    tensors = [*args, *module.parameters(), *module.buffers(), *outs]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def measure(case: Any, scale: int, dtype: torch.dtype, iters: int, peak: float | None) -> dict[str, Any]:
    from fusion_cases import compile_case
    from omnigraph.runtime.fused_stage import FusedProgram, load_kernels

    module, args, dynamic = case.build(scale)
    module = module.to("cuda", dtype)
    args = tuple(a.to("cuda", dtype) if a.is_floating_point() else a.to("cuda") for a in args)
    kernel_file = compile_case(module, args, dynamic, case.name)
    fused = FusedProgram(load_kernels(kernel_file.source, kernel_file.filename), module,
                         kernel_file.constants, "cuda")
    compiled = torch.compile(module)
    with torch.no_grad():
        out = module(*args)
        ours = fused(*args)
        for a, b in zip(ours if isinstance(ours, tuple) else (ours,), out if isinstance(out, tuple) else (out,)):
            if b.is_floating_point():
                torch.testing.assert_close(a.float(), b.float(), atol=5e-2, rtol=5e-2)
        t_eager = timed(lambda: module(*args), iters)
        t_compile = timed(lambda: compiled(*args), iters)
        t_ours = timed(lambda: fused(*args), iters)
    moved = min_bytes(module, args, out)
    gb_s = moved / t_ours / 1e9
    row = {"case": case.name, "kernels": len(kernel_file.kernels), "bytes": moved,
           "eager_ms": t_eager * 1e3, "torch_compile_ms": t_compile * 1e3, "omnigraph_ms": t_ours * 1e3,
           "speedup_vs_eager": t_eager / t_ours, "speedup_vs_torch_compile": t_compile / t_ours,
           "achieved_gb_s": gb_s, "memory_bound": case.name in MEMORY_BOUND}
    if peak is not None:
        row["fraction_of_hbm_peak"] = gb_s / peak
    return row


def print_row(row: dict[str, Any]) -> None:
    frac = f"{row['fraction_of_hbm_peak']:.0%} of HBM" if "fraction_of_hbm_peak" in row else ""
    print(f"{row['case']:20s} {row['kernels']:2d} kernels  eager {row['eager_ms']:.3f} ms  "
          f"compile {row['torch_compile_ms']:.3f} ms  ours {row['omnigraph_ms']:.3f} ms  "
          f"x{row['speedup_vs_torch_compile']:.2f} vs compile  {row['achieved_gb_s']:.0f} GB/s {frac}")


def llm_rows(config: str, device: str, dtype: torch.dtype, iters: int, cpu_check: bool) -> list[dict[str, Any]]:
    """The LLM group's rows, measured then printed (see benchmarks/fusion_llm.py)."""
    from fusion_llm import CPU_CHECK_SHAPES, GPU_SHAPES, format_row, measure_llm, wall_timed

    if cpu_check:
        rows = measure_llm(config, device, dtype, CPU_CHECK_SHAPES, wall_timed, iters,
                           compile_too=False, interpret=True, check=True)
    else:
        rows = measure_llm(config, device, dtype, GPU_SHAPES, timed, iters)
    for row in rows:
        print(format_row(row))
    return rows


def cpu_check() -> int:
    """The tiny LLM on CPU under the Triton interpreter: the script runs, fused matches eager."""
    from omnigraph.runtime.fused_stage import INTERPRET_ENV

    os.environ[INTERPRET_ENV] = "1"
    llm_rows("tiny", "cpu", torch.float32, 1, cpu_check=True)
    print("fusion_kernels: --cpu-check passed (fused matches eager); no results written")
    return 0


def main() -> int:
    from fusion_llm import CONFIGS, GPU_SHAPES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=32, help="times the test size (hidden 32*scale, …)")
    parser.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--target", help="target YAML or name, for the device's HBM peak")
    parser.add_argument("--only", help="comma-separated case names (`llm`: the LLM group)")
    parser.add_argument("--llm", choices=[*CONFIGS, "none"], default="smollm2-135m", help="the LLM group's config")
    parser.add_argument("--cpu-check", action="store_true", help="check the script on CPU (tiny LLM, interpreter)")
    args = parser.parse_args()
    if args.cpu_check:
        return cpu_check()
    if not torch.cuda.is_available():
        print("fusion_kernels: needs a CUDA GPU (the generated kernels run on CPU only under the Triton "
              "interpreter, which measures nothing); no results written")
        return 0
    from fusion_cases import BLOCKS, PATTERNS

    only = args.only.split(",") if args.only else None
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    peak = hbm_peak(args.target)
    cases = [c for c in PATTERNS + BLOCKS if only is None or c.name in only]
    rows = []
    for case in cases:
        rows.append(measure(case, args.scale, dtype, args.iters, peak))
        print_row(rows[-1])
    result = {"device": torch.cuda.get_device_name(), "hbm_peak_gb_s": peak, "dtype": args.dtype,
              "scale": args.scale, "iters": args.iters, "torch": torch.__version__,
              "python": platform.python_version(), "cases": rows}
    if args.llm != "none" and (only is None or "llm" in only):
        result["llm"] = {"config": args.llm, **CONFIGS[args.llm], **vars(GPU_SHAPES),
                         "rows": llm_rows(args.llm, "cuda", dtype, args.iters, cpu_check=False)}
    out = ROOT / "benchmarks" / "results" / "fusion_kernels.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
