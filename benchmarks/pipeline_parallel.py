"""Pipeline parallelism measured on this machine: a small random Llama (8 layers) split over
2 ranks (processes, gloo), decoding a burst of 16 requests, with 1, 2, 4 and 8 micro-batches
per step, against the same model on one rank with one thread (each pipeline rank gets one):
the tokens, and the measured bubble 1 - T1 / (p x Tpp) beside the formula (p-1)/(m+p-1).
The measured bubble also holds the hand-offs' cost, which the formula leaves out. Then the
same for prefill (16 prompts of ~125 tokens, one token out each), where the work divides with
the rows.

Then, simulated (issue 20; benchmarks/pipeline_parallel_sim.py, `--simulate` runs only this
part, in under a minute): a Llama-3.1-405B shape (bf16), which no 8-GPU H100 node holds, planned
on `h100-2x8` (tp8·pp2 over the two nodes) against the best one-node plans (`h200x8`, where less
KV room leaves a smaller batch; `h100x8` with an fp8 pin), and a Llama-3.1-70B shape on one node
(tp8) and on two (tp8·pp2), replayed in the discrete-event simulator under Poisson loads of the
`chat` and `long` mixes: goodput within TTFT/TPOT targets, per device and per node, with each pp
instance timed as the simulator times it and as the runtime runs it.

    python benchmarks/pipeline_parallel.py               # both parts
    python benchmarks/pipeline_parallel.py --simulate    # the simulated part only
    python benchmarks/pipeline_parallel.py --measure     # the measured part only

Writes benchmarks/results/pipeline_parallel.json (each part keeps the other's rows).
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA = ("{hidden_size: 1024, intermediate_size: 4096, num_hidden_layers: 8, num_attention_heads: 8, "
         "num_key_value_heads: 4, vocab_size: 1024, max_position_embeddings: 1024}")
REQUESTS, TOKENS, PP = 16, 24, 2


def spec(folder: Path, pp: int, tokens: int = TOKENS) -> Path:
    import yaml

    llm = {"kind": "ar_llm", "model": "transformers:LlamaForCausalLM", "inputs": ["prompt"], "parallel": {"pp": pp},
           "params": {"weights": "random", "max_new_tokens": tokens, "chat": False, "max_batch": REQUESTS,
                      "config": yaml.safe_load(LLAMA)}}
    path = folder / f"pp{pp}_{tokens}.yaml"
    path.write_text(yaml.safe_dump({"pipeline": "pp_bench", "inputs": {"prompt": "text"},
                                    "outputs": {"reply": {"from": "llm.text", "modality": "text"}},
                                    "stages": {"llm": llm}}))
    return path


def timed(path: Path, prompt_words: int = 4) -> tuple[float, list[str]]:
    import omnigraph

    prompts = [{"prompt": f"request number {i} " + " ".join(["asks"] * prompt_words)} for i in range(REQUESTS)]
    with omnigraph.load(path, target=None) as pipe:
        pipe.run(prompts[0])  # warm
        best, replies = float("inf"), []
        for _ in range(3):
            started = time.perf_counter()
            replies = [h.result(300)["reply"] for h in [pipe.submit(p) for p in prompts]]
            best = min(best, time.perf_counter() - started)
    return best, replies


def measure() -> dict:
    import torch

    torch.set_num_threads(1)  # one thread per rank, the single rank too
    folder = Path(tempfile.mkdtemp())
    t1, want = timed(spec(folder, 1))
    rows = []
    for m in (1, 2, 4, 8):
        os.environ["OMNIGRAPH_PP_MICRO_BATCHES"] = str(m)
        tpp, got = timed(spec(folder, PP))
        measured = 1 - t1 / (PP * tpp)
        rows.append({"micro_batches": m, "seconds": round(tpp, 3), "speedup_vs_one_rank": round(t1 / tpp, 3),
                     "bubble_measured": round(measured, 3), "bubble_formula": round((PP - 1) / (m + PP - 1), 3),
                     "tokens_identical": got == want})
        print(rows[-1])
    # Prefill: long prompts, one token each: compute-bound, where micro-batches overlap the stages.
    os.environ.pop("OMNIGRAPH_PP_MICRO_BATCHES", None)
    p1, want = timed(spec(folder, 1, tokens=1), prompt_words=120)
    prefill = []
    for m in (1, 4):
        os.environ["OMNIGRAPH_PP_MICRO_BATCHES"] = str(m)
        tpp, got = timed(spec(folder, PP, tokens=1), prompt_words=120)
        prefill.append({"micro_batches": m, "seconds": round(tpp, 3), "speedup_vs_one_rank": round(p1 / tpp, 3),
                        "bubble_measured": round(1 - p1 / (PP * tpp), 3),
                        "bubble_formula": round((PP - 1) / (m + PP - 1), 3), "tokens_identical": got == want})
        print("prefill", prefill[-1])
    os.environ.pop("OMNIGRAPH_PP_MICRO_BATCHES", None)
    print(f"one rank {t1:.3f} s")
    return {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(), "pp": PP,
            "requests": REQUESTS, "tokens": TOKENS, "one_rank_seconds": round(t1, 3), "decode_runs": rows,
            "prefill_one_rank_seconds": round(p1, 3), "prefill_runs": prefill}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--simulate", action="store_true",
                       help="only the simulated part (405B and 70B plans in the simulator; under a minute)")
    which.add_argument("--measure", action="store_true", help="only the part measured on this machine")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrivals and the mix (default 0)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/pipeline_parallel.json",
                        help="the results file; the part not run keeps its rows there")
    args = parser.parse_args()
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if not args.simulate:
        simulated = result.get("simulated")
        result = measure()
        if simulated is not None:
            result["simulated"] = simulated
    if not args.measure:
        from pipeline_parallel_sim import simulate_cases

        result["simulated"] = simulate_cases(args.seed)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
