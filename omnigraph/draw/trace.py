"""Spans as a Chrome trace (the JSON chrome://tracing and Perfetto open): one track per stage
replica, one complete event per step, named by what it ran and for which requests."""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class TraceSpan:
    """A measured step (the simulator's Span has the same fields)."""

    stage: str
    replica: int
    start: float
    end: float
    requests: tuple[int, ...] = ()
    what: str = "step"


class SpanLike(Protocol):
    stage: str
    replica: int
    start: float  # seconds
    end: float
    requests: tuple[int, ...]
    what: str


def chrome_trace(spans: Iterable[SpanLike], process: str, origin: float = 0.0) -> dict[str, Any]:
    """Times in seconds since `origin` become microseconds; tracks are `stage #replica`."""
    spans = sorted(spans, key=lambda s: (s.stage, s.replica, s.start))
    tracks = {key: i + 1 for i, key in enumerate(dict.fromkeys((s.stage, s.replica) for s in spans))}
    events: list[dict[str, Any]] = [{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": process}}]
    for (stage, replica), tid in tracks.items():
        events.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid,
                       "args": {"name": f"{stage} #{replica}"}})
    for s in spans:
        events.append({"name": f"{s.stage} {s.what}", "cat": s.stage, "ph": "X", "pid": 1,
                       "tid": tracks[(s.stage, s.replica)], "ts": round((s.start - origin) * 1e6, 3),
                       "dur": round(max(0.0, s.end - s.start) * 1e6, 3),
                       "args": {"requests": list(s.requests), "batch": len(s.requests)}})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_trace(spans: Iterable[SpanLike], path: str | Path, process: str, origin: float = 0.0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(chrome_trace(spans, process, origin)), encoding="utf-8")
    return path
