"""The real `speak` pipeline (SmolLM2-135M GGUF → Piper VITS) under a burst of prompts,
measured side by side in one run against two plain scripts:

  sequential  per request: transformers `generate`, then Piper; one request at a time
  batched     static batches of --batch: one left-padded `generate` per batch, then Piper
              for each reply (stages one after another)
  omnigraph   LocalBackend on the plan for this machine (what `omnigraph run` does):
              continuous batching in the thinker at the planned dtype over its paged KV
              pool, the reply streamed into the talker sentence by sentence, each stage on
              its planned share of the cores

The baselines run as they always have (the GGUF dequantized to f32), and again with the
weights in bf16 (`*_bf16`), so that the gain from scheduling shows apart from the gain from
the dtype the planner picks.

All requests arrive at t=0; a request's job completion time (JCT) is when its audio is
done. Time to first audio (TTFA) is measured on single requests with the stream edge
and with the edge made non-streaming (the talker then waits for the whole reply).
Same weights, greedy decoding, same max_new_tokens everywhere; models are loaded
before timing starts.

    python benchmarks/speak_burst.py [--requests 32] [--batch 32]

Writes benchmarks/results/speak_burst.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

import omnigraph
from omnigraph.api import compile_plan
from omnigraph.runtime.executors.llm_text import prompt_ids

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "examples" / "speak.yaml"
PROMPTS = [
    "The capital of France is", "Name three primary colours.", "What is 12 times 12?",
    "Why is the sky blue?", "Write one sentence about autumn.", "What does a CPU do?",
    "Give me a synonym for happy.", "How many legs does a spider have?",
    "What is the boiling point of water?", "Who wrote Hamlet?", "What is the largest ocean?",
    "How many days are in a leap year?", "What colour is a ripe banana?",
    "What is the opposite of cold?", "Which planet is closest to the sun?",
    "What do bees make?",
]


LONG_PROMPTS = [
    "Explain why the sky is blue.", "Describe how a bicycle works.",
    "Tell me about the city of Paris.", "Explain what a computer program is.",
    "Describe the water cycle.",
]


def _with_stream(plan: Any, stream: bool) -> Any:
    """The plan with the thinker → talker edge streaming or not."""
    plan = plan.model_copy(deep=True)
    next(s for s in plan.stages() if s.name == "talker").inputs[0].stream = stream
    return plan


def _long_replies(plan: Any) -> Any:
    plan = plan.model_copy(deep=True)
    thinker = next(s for s in plan.stages() if s.name == "thinker")
    thinker.params.update(system="You are a helpful assistant. Answer in three or four sentences.",
                          max_new_tokens=128)
    return plan


def load_baseline_models(plan: Any, dtype: str | None = None) -> tuple[Any, Any, Any, dict]:
    """The same weights the runtime uses, loaded the same way, at `dtype` (None: f32, as
    before the planner chose one)."""
    from omnigraph.runtime.executors.llm_loading import load_causal_lm
    from omnigraph.runtime.loaders import voice_files
    from piper import PiperVoice

    thinker = next(s for s in plan.stages() if s.name == "thinker").model_copy(deep=True)
    thinker.resources.dtype = dtype
    talker = next(s for s in plan.stages() if s.name == "talker")
    model, tokenizer = load_causal_lm(thinker, "cpu")
    onnx_path, config_path = voice_files(talker.model)
    voice = PiperVoice.load(str(onnx_path), config_path=str(config_path))
    return model, tokenizer, voice, thinker.params


def speak(voice: Any, text: str) -> np.ndarray:
    return np.concatenate([c.audio_float_array for c in voice.synthesize(text)] or [np.zeros(1)])


@contextlib.contextmanager
def all_cores() -> Iterator[None]:
    """A plain script's torch threads: every core (the pipeline set its planned share)."""
    planned = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.set_num_threads(planned)


def run_sequential(prompts: list[str], model: Any, tok: Any, voice: Any, params: dict) -> dict:
    start = time.perf_counter()
    done, replies = [], []
    for prompt in prompts:
        ids = torch.tensor([prompt_ids(tok, prompt, params.get("system"), True)])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=params["max_new_tokens"], pad_token_id=tok.eos_token_id)
        reply = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        speak(voice, reply)
        replies.append(reply)
        done.append(time.perf_counter() - start)
    return {"jct": done, "makespan": done[-1], "replies": replies}


def run_batched(prompts: list[str], model: Any, tok: Any, voice: Any, params: dict, batch: int) -> dict:
    start = time.perf_counter()
    done, replies = [], []
    for first in range(0, len(prompts), batch):
        chunk = prompts[first:first + batch]
        rows = [prompt_ids(tok, p, params.get("system"), True) for p in chunk]
        width = max(map(len, rows))
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=params["max_new_tokens"], pad_token_id=pad)
        texts = [tok.decode(row[width:], skip_special_tokens=True) for row in out]
        for text in texts:  # the TTS stage runs after the LLM stage, request by request
            speak(voice, text)
            replies.append(text)
            done.append(time.perf_counter() - start)
    return {"jct": done, "makespan": done[-1], "replies": replies}


def run_omnigraph(prompts: list[str], pipe: Any) -> dict:
    start = time.perf_counter()
    t0 = time.monotonic()
    handles = [pipe.submit({"prompt": p}) for p in prompts]
    outs = [h.result(timeout=1800) for h in handles]
    jct = [h.request.finished_at - t0 for h in handles]
    return {"jct": jct, "makespan": time.perf_counter() - start, "replies": [o["reply"] for o in outs]}


def first_audio(pipe: Any, prompt: str) -> tuple[float, float]:
    """(seconds to the first audio chunk, seconds to the end) for one request alone."""
    handle = pipe.submit({"prompt": prompt})
    first = None
    for kind, name, _ in handle.events(poll=0.005):
        if kind == "chunk" and name == "speech" and first is None:
            first = time.monotonic() - handle.request.submitted
    total = handle.request.finished_at - handle.request.submitted
    return (first if first is not None else total), total


def summary(run: dict, n: int) -> dict:
    jct = run["jct"]
    return {"mean_jct_s": round(statistics.mean(jct), 3), "p50_jct_s": round(statistics.median(jct), 3),
            "max_jct_s": round(max(jct), 3), "makespan_s": round(run["makespan"], 3),
            "throughput_req_s": round(n / run["makespan"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--ttfa-samples", type=int, default=5)
    args = ap.parse_args()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]

    plan = compile_plan(SPEC, "local")
    # TTFA variants: the speak spec as is (one-sentence replies), and the same pipeline
    # asked for longer replies, where streaming sentence by sentence has room to help.
    variants = {"speak": plan, "long_replies": _long_replies(plan)}
    ttfa_pipes = {(name, stream): omnigraph.load(_with_stream(p, stream))
                  for name, p in variants.items() for stream in (True, False)}
    with omnigraph.load(plan) as pipe:
        model, tok, voice, params = load_baseline_models(plan)
        model_bf16 = load_baseline_models(plan, "bf16")[0]
        warm = PROMPTS[0]
        for p in (pipe, *ttfa_pipes.values()):
            p.run({"prompt": warm})
        planned_threads = torch.get_num_threads()
        with all_cores():
            run_sequential([warm], model, tok, voice, params)  # warm-up, not timed
            run_sequential([warm], model_bf16, tok, voice, params)
            runs = {
                "sequential": run_sequential(prompts, model, tok, voice, params),
                "batched": run_batched(prompts, model, tok, voice, params, args.batch),
                "sequential_bf16": run_sequential(prompts, model_bf16, tok, voice, params),
                "batched_bf16": run_batched(prompts, model_bf16, tok, voice, params, args.batch),
            }
        runs["omnigraph"] = run_omnigraph(prompts, pipe)
        placement = pipe.backend.contract()
        ttfa: dict[str, dict[str, float]] = {}
        for name in variants:
            s_runs = [first_audio(ttfa_pipes[(name, True)], LONG_PROMPTS[i % len(LONG_PROMPTS)])
                      for i in range(args.ttfa_samples)]
            n_runs = [first_audio(ttfa_pipes[(name, False)], LONG_PROMPTS[i % len(LONG_PROMPTS)])
                      for i in range(args.ttfa_samples)]
            ttfa[name] = {
                "stream_first_audio_s": round(statistics.mean(t for t, _ in s_runs), 4),
                "nostream_first_audio_s": round(statistics.mean(t for t, _ in n_runs), 4),
                "nostream_end_to_end_s": round(statistics.mean(e for _, e in n_runs), 4),
            }
            ttfa[name]["ratio"] = round(ttfa[name]["stream_first_audio_s"]
                                        / ttfa[name]["nostream_end_to_end_s"], 4)
    for p in ttfa_pipes.values():
        p.close()

    result: dict[str, Any] = {
        "pipeline": "speak (SmolLM2-135M-Instruct Q4_1 GGUF -> Piper en_US-joe-medium)",
        "requests": args.requests, "static_batch": args.batch,
        "max_new_tokens": params["max_new_tokens"],
        "torch_threads": {"baselines": os.cpu_count(), "omnigraph": planned_threads},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only",
        "runs": {name: summary(run, args.requests) for name, run in runs.items()},
        "same_replies_as_sequential": {
            name: sum(a == b for a, b in zip(run["replies"], runs["sequential"]["replies"]))
            for name, run in runs.items() if name != "sequential"},
    }
    og = result["runs"]["omnigraph"]
    result["plan"] = {name: {k: inst[0].get(k) for k in ("dtype", "cores", "kv_budget")}
                      for name, inst in placement.items()}
    result["ratios"] = {}
    for suffix in ("", "_bf16"):
        seq, bat = result["runs"][f"sequential{suffix}"], result["runs"][f"batched{suffix}"]
        result["ratios"].update({
            f"mean_jct_vs_sequential{suffix}": round(og["mean_jct_s"] / seq["mean_jct_s"], 4),
            f"throughput_vs_sequential{suffix}": round(og["throughput_req_s"] / seq["throughput_req_s"], 3),
            f"throughput_vs_batched{suffix}": round(og["throughput_req_s"] / bat["throughput_req_s"], 3),
            f"mean_jct_vs_batched{suffix}": round(og["mean_jct_s"] / bat["mean_jct_s"], 4)})
    result["ratios"].update({
        f"ttfa_stream_vs_e2e_nostream[{k}]": v["ratio"] for k, v in ttfa.items()})
    result["ttfa"] = ttfa
    out = Path(__file__).parent / "results" / "speak_burst.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
