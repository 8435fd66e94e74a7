"""`omnigraph bench URL`: load a serving endpoint over HTTP, in the shape of `vllm bench serve`.

Streaming chat requests (with audio when the server's pipeline speaks) arrive as a Poisson
process at `rate` per second (inf: all at once), at most `concurrency` at a time; each is
timed from its send: time to first token (the first text delta), time per output token after
it, time to first audio, its audio seconds and real-time factor (end-to-end time over audio
seconds), and errors by status. Prompts come from a file (one per line) or a built-in set.
"""
from __future__ import annotations

import asyncio
import base64
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

PROMPTS = ["The capital of France is", "Name three primary colours.", "What is 12 times 12?",
           "Why is the sky blue?", "Write one sentence about autumn.", "What does a CPU do?",
           "How many legs does a spider have?", "Who wrote Hamlet?"]


@dataclass
class Sample:
    ok: bool = False
    status: int = 0
    error: str = ""
    sent: float = 0.0
    ttft: float | None = None
    ttfa: float | None = None
    end: float | None = None
    tokens: int = 0
    audio_s: float = 0.0
    first_token_at: float | None = None


@dataclass
class BenchConfig:
    url: str
    n: int = 100
    rate: float = float("inf")
    concurrency: int | None = None
    prompts: list[str] = field(default_factory=lambda: list(PROMPTS))
    audio: bool | None = None  # None: when the server's pipeline has an audio output
    max_tokens: int | None = None
    api_key: str | None = None
    seed: int = 0
    timeout_s: float = 600.0


async def _one(client: Any, cfg: BenchConfig, model: str, prompt: str, audio: bool, started: float) -> Sample:
    s = Sample(sent=time.perf_counter() - started)
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
                            "stream_options": {"include_usage": True}}
    if audio:
        body.update(modalities=["text", "audio"], audio={"format": "pcm16"})
    if cfg.max_tokens is not None:
        body["max_tokens"] = cfg.max_tokens
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", f"{cfg.url}/v1/chat/completions", json=body) as resp:
            s.status = resp.status_code
            if resp.status_code != 200:
                s.error = (await resp.aread()).decode("utf-8", "replace")[:200]
                return s
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    s.error = event["error"].get("message", "")
                    return s
                now = time.perf_counter() - t0
                if event.get("usage"):
                    s.tokens = event["usage"].get("completion_tokens", 0)
                for choice in event.get("choices", []):
                    delta = choice.get("delta", {})
                    piece = delta.get("audio", {})
                    if (delta.get("content") or piece.get("transcript")) and s.ttft is None:
                        s.ttft = now
                    if piece.get("data"):
                        s.ttfa = now if s.ttfa is None else s.ttfa
                        samples = len(base64.b64decode(piece["data"])) // 2
                        s.audio_s += samples / float(piece.get("sample_rate") or 24000)
            s.end = time.perf_counter() - t0
            s.ok = True
    except Exception as exc:  # noqa: BLE001 - a refused connection or a reset is a failed sample
        s.error = f"{type(exc).__name__}: {exc}"
    return s


async def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    limits = httpx.Limits(max_connections=cfg.concurrency or cfg.n, max_keepalive_connections=cfg.concurrency or cfg.n)
    async with httpx.AsyncClient(headers=headers, timeout=cfg.timeout_s, limits=limits) as client:
        models = (await client.get(f"{cfg.url}/v1/models")).json()
        if "data" not in models:
            raise RuntimeError(f"{cfg.url}/v1/models: {models.get('error', models)}")
        model = models["data"][0]["id"]
        audio = cfg.audio
        if audio is None:
            probe = await client.post(f"{cfg.url}/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
                "modalities": ["text", "audio"]})
            audio = probe.status_code == 200
        rng = random.Random(cfg.seed)
        gate = asyncio.Semaphore(cfg.concurrency or cfg.n)
        started = time.perf_counter()

        async def gated(prompt: str) -> Sample:
            async with gate:
                return await _one(client, cfg, model, prompt, audio, started)

        tasks = []
        for i in range(cfg.n):
            tasks.append(asyncio.create_task(gated(cfg.prompts[i % len(cfg.prompts)])))
            if cfg.rate != float("inf") and i + 1 < cfg.n:
                await asyncio.sleep(rng.expovariate(cfg.rate))
        samples = await asyncio.gather(*tasks)
        wall = time.perf_counter() - started
    return summarize(samples, wall, cfg, model, audio)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


def summarize(samples: list[Sample], wall: float, cfg: BenchConfig, model: str, audio: bool) -> dict[str, Any]:
    ok = [s for s in samples if s.ok]
    errors: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            key = str(s.status or s.error.split(":")[0])
            errors[key] = errors.get(key, 0) + 1
    ttft = [s.ttft for s in ok if s.ttft is not None]
    tpot = [(s.end - s.ttft) / (s.tokens - 1) for s in ok if s.ttft is not None and s.end and s.tokens > 1]
    ttfa = [s.ttfa for s in ok if s.ttfa is not None]
    rtf = [s.end / s.audio_s for s in ok if s.audio_s > 0 and s.end]
    e2e = [s.end for s in ok if s.end is not None]
    tokens = sum(s.tokens for s in ok)

    def dist(v: list[float]) -> dict[str, float | None]:
        return {"mean": round(statistics.mean(v), 4) if v else None, "p50": _pct(v, 0.5), "p90": _pct(v, 0.9),
                "p99": _pct(v, 0.99)}

    return {"url": cfg.url, "model": model, "requests": len(samples), "completed": len(ok), "errors": errors,
            "rate": cfg.rate if cfg.rate != float("inf") else "inf", "concurrency": cfg.concurrency,
            "audio": audio, "wall_s": round(wall, 3), "throughput_req_s": round(len(ok) / wall, 4),
            "output_tokens_per_s": round(tokens / wall, 2), "ttft_s": dist(ttft), "tpot_s": dist(tpot),
            "ttfa_s": dist(ttfa), "e2e_s": dist(e2e), "rtf": dist(rtf),
            "audio_seconds": round(sum(s.audio_s for s in ok), 2)}
