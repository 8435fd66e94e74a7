"""Time to first audio (TTFA) of the real `speak` pipeline as concurrency rises: 1, 2, 4, 8
requests submitted at the same instant (vLLM-Omni issue #1238 reports audio time to first
packet rising 5x from 1 to 2 concurrent requests).

The pipeline is speak_burst's TTFA variant with long replies: SmolLM2-135M (GGUF) asked for
three or four sentences (max_new_tokens 128), its text streamed sentence by sentence into
the Piper voice. It is loaded once and warmed up. A round sends each of the prompts once, in
bursts of N distinct prompts (N = the concurrency level; the next burst starts when the
last one is done), so every level sees the same prompts the same number of times; levels
are interleaved within a round. For each request: TTFA (submit -> first audio chunk), time
to the first complete sentence of text (the LLM's share of TTFA), JCT (submit -> end),
audio seconds, and playback stall (audio started at the first chunk would pause this long
waiting for later chunks). Per level: median and p90 TTFA, median JCT, the median TTFA
over level 1's (the figure comparable to vLLM-Omni's 5x), and the real-time factor.

    python benchmarks/ttfa_concurrency.py [--rounds 3] [--levels 1,2,4,8]

Writes benchmarks/results/ttfa_concurrency.json and prints a table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

import omnigraph
from omnigraph.api import compile_plan
from omnigraph.runtime.executors.tts import split_sentences

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speak_burst import LONG_PROMPTS, SPEC, _long_replies, _with_stream  # noqa: E402

# speak_burst's five long prompts and three more of the same kind: eight distinct prompts,
# so a burst of 8 has no two alike.
PROMPTS = LONG_PROMPTS + [
    "Describe how a rainbow forms.", "Explain how a refrigerator keeps food cold.",
    "Tell me about the history of the printing press.",
]
REQUEST_TIMEOUT_S = 300.0  # the runtime fails a request past this; a watcher thread waits a bit longer


def _watch(pipe: Any, prompt: str, rec: dict[str, Any]) -> None:
    """Submit one request and timestamp its events (run in a thread per request)."""
    handle = pipe.submit({"prompt": prompt}, timeout=REQUEST_TIMEOUT_S)
    req = handle.request
    rec["submitted"] = req.submitted
    text, chunks, sentence_at = "", [], None
    try:
        for kind, name, value in handle.events(poll=0.005):
            now = time.monotonic()
            if kind == "chunk" and name == "speech":
                chunks.append((now - req.submitted, value.seconds))
            elif kind == "chunk" and name == "reply" and sentence_at is None:
                text += str(value)
                if split_sentences(text, final=False)[0]:
                    sentence_at = now - req.submitted
            elif kind == "output" and name == "reply":
                rec["reply"] = value
    except Exception as exc:  # a failed or timed-out request is recorded, not hidden
        rec["error"] = repr(exc)
    end = req.finished_at if req.finished_at is not None else time.monotonic()
    rec.update(jct_s=end - req.submitted, ttfa_s=chunks[0][0] if chunks else None,
               first_sentence_s=sentence_at, audio_s=sum(s for _, s in chunks),
               chunks=len(chunks), stall_s=_stall(chunks))


def _stall(chunks: list[tuple[float, float]]) -> float:
    """Seconds that playback, started when the first chunk arrived, waits for later chunks."""
    if not chunks:
        return 0.0
    play_end, stall = chunks[0][0] + chunks[0][1], 0.0
    for at, seconds in chunks[1:]:
        if at > play_end:
            stall += at - play_end
            play_end = at
        play_end += seconds
    return stall


def burst(pipe: Any, prompts: list[str]) -> tuple[list[dict[str, Any]], float, dict[str, float]]:
    """Submit `prompts` at once; each request's record, the wall time until all ended, and
    each stage's busy seconds meanwhile."""
    busy0 = pipe.backend.stats()
    records: list[dict[str, Any]] = [{"prompt": p} for p in prompts]
    threads = [threading.Thread(target=_watch, args=(pipe, p, r), daemon=True) for p, r in zip(prompts, records)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=REQUEST_TIMEOUT_S + 30)
    wall = time.monotonic() - start
    for r in records:
        if "jct_s" not in r:
            r["error"] = r.get("error", "watcher did not finish in time")
    busy = {k: v - busy0.get(k, 0.0) for k, v in pipe.backend.stats().items()}
    return records, wall, busy


def _pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def level_summary(records: list[dict[str, Any]], walls: list[float], busy: list[dict[str, float]]) -> dict:
    ok = [r for r in records if "error" not in r and r["ttfa_s"] is not None]
    ttfa = [r["ttfa_s"] for r in ok]
    sent = [r["first_sentence_s"] for r in ok if r["first_sentence_s"] is not None]
    audio = sum(r["audio_s"] for r in ok)
    return {
        "requests": len(records), "failed": len(records) - len(ok),
        "median_ttfa_s": round(statistics.median(ttfa), 4), "p90_ttfa_s": round(_pct(ttfa, 0.9), 4),
        "max_ttfa_s": round(max(ttfa), 4),
        "median_first_sentence_s": round(statistics.median(sent), 4) if sent else None,
        "median_voice_wait_s": round(statistics.median(
            r["ttfa_s"] - r["first_sentence_s"] for r in ok if r["first_sentence_s"] is not None), 4) if sent else None,
        "median_jct_s": round(statistics.median(r["jct_s"] for r in ok), 4),
        "median_audio_s": round(statistics.median(r["audio_s"] for r in ok), 3),
        # per request: its time to end over its audio's length (< 1: the request is done
        # before its audio could have played); per level: all bursts' wall time over all
        # audio made (the machine's pace, concurrency included)
        "median_request_rtf": round(statistics.median(r["jct_s"] / r["audio_s"] for r in ok if r["audio_s"]), 4),
        "aggregate_rtf": round(sum(walls) / audio, 4) if audio else None,
        "median_stall_s": round(statistics.median(r["stall_s"] for r in ok), 4),
        "requests_with_stall": sum(r["stall_s"] > 0.05 for r in ok),
        "stage_busy_s": {k: round(sum(b[k] for b in busy), 3) for k in busy[0]},
        "burst_wall_s": round(sum(walls), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--levels", default="1,2,4,8")
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many of the prompts a round sends")
    ap.add_argument("--no-write", action="store_true", help="print only (a smoke run)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    prompts = PROMPTS[:args.prompts]
    if max(levels) > len(prompts):
        ap.error(f"level {max(levels)} needs {max(levels)} distinct prompts; there are {len(prompts)}")

    load0 = os.getloadavg()
    t_load = time.monotonic()
    plan = _with_stream(_long_replies(compile_plan(SPEC, "local")), True)  # as `omnigraph run` plans it
    pipe = omnigraph.load(plan)
    load_s = time.monotonic() - t_load
    try:
        # Warm-up, not timed: one request alone, then a burst (batched decode shapes).
        burst(pipe, prompts[:1])
        burst(pipe, prompts[:min(4, len(prompts))])
        records: dict[int, list[dict[str, Any]]] = {n: [] for n in levels}
        walls: dict[int, list[float]] = {n: [] for n in levels}
        busy: dict[int, list[dict[str, float]]] = {n: [] for n in levels}
        t_run = time.monotonic()
        for rnd in range(args.rounds):
            order = prompts[rnd % len(prompts):] + prompts[:rnd % len(prompts)]  # pairings change per round
            for n in levels:
                for first in range(0, len(order), n):
                    group = order[first:first + n]
                    if len(group) < n:
                        group += order[:n - len(group)]  # a partial last burst: fill to n
                    recs, wall, b = burst(pipe, group)
                    for r in recs:
                        r.update(round=rnd, level=n)
                    records[n] += recs
                    walls[n].append(wall)
                    busy[n].append(b)
                print(f"round {rnd + 1}/{args.rounds} level {n}: {len(records[n])} requests so far, "
                      f"{time.monotonic() - t_run:.0f} s", flush=True)
        run_s = time.monotonic() - t_run
    finally:
        pipe.close()
    load1 = os.getloadavg()

    summary = {n: level_summary(records[n], walls[n], busy[n]) for n in levels}
    base = summary[levels[0]]["median_ttfa_s"] if levels[0] == 1 else None
    for n in levels:
        s = summary[n]
        s["ttfa_ratio_vs_1"] = round(s["median_ttfa_s"] / base, 3) if base else None
        s["jct_ratio_vs_1"] = round(s["median_jct_s"] / summary[1]["median_jct_s"], 3) if base else None
    # prompt-matched: each request's TTFA over the median level-1 TTFA of the same prompt
    if base:
        solo = {p: statistics.median(r["ttfa_s"] for r in records[1] if r["prompt"] == p and r.get("ttfa_s"))
                for p in prompts}
        for n in levels:
            summary[n]["median_prompt_matched_ttfa_ratio"] = round(statistics.median(
                r["ttfa_s"] / solo[r["prompt"]] for r in records[n] if r.get("ttfa_s")), 3)

    header = (f"{'level':>5} {'reqs':>4} {'TTFA p50':>9} {'TTFA p90':>9} {'ratio':>6} {'1st sent':>9} "
              f"{'voice wait':>10} {'JCT p50':>8} {'audio p50':>9} {'RTF req':>8} {'RTF agg':>8} {'stalls':>6}")
    print(header)
    for n in levels:
        s = summary[n]
        print(f"{n:>5} {s['requests']:>4} {s['median_ttfa_s']:>8.3f}s {s['p90_ttfa_s']:>8.3f}s "
              f"{s['ttfa_ratio_vs_1'] or float('nan'):>5.2f}x {s['median_first_sentence_s'] or float('nan'):>8.3f}s "
              f"{s['median_voice_wait_s'] or float('nan'):>9.3f}s {s['median_jct_s']:>7.2f}s "
              f"{s['median_audio_s']:>8.2f}s {s['median_request_rtf']:>8.3f} "
              f"{s['aggregate_rtf'] or float('nan'):>8.3f} "
              f"{s['requests_with_stall']:>6}")

    result: dict[str, Any] = {
        "pipeline": "speak, long replies (SmolLM2-135M-Instruct Q4_1 GGUF -> Piper en_US-joe-medium), "
                    "thinker -> talker edge streamed",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "arch": platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "gpu": torch.cuda.is_available(),
                    "loadavg_start": [round(x, 2) for x in load0], "loadavg_end": [round(x, 2) for x in load1]},
        "args": vars(args),
        "prompts": prompts,
        "max_new_tokens": next(s for s in plan.stages() if s.name == "thinker").params["max_new_tokens"],
        "plan": {n.name: {"dtype": n.resources.dtype, "cores": n.instances[0].cores,
                          "kv_budget": n.resources.kv_bytes} for n in plan.stages()},
        "load_s": round(load_s, 2), "run_s": round(run_s, 1),
        "levels": {str(n): summary[n] for n in levels},
        "requests": {str(n): [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                              for r in records[n]] for n in levels},
    }
    if not args.no_write:
        out = Path(__file__).parent / "results" / "ttfa_concurrency.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    print(json.dumps({"levels": result["levels"]}, indent=2))


if __name__ == "__main__":
    main()
