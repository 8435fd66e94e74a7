"""A timeline: each stage replica a lane, each step it ran a bar coloured by its request (a
batch of several: striped in grey, with its size), and under it the requests in the system
and the share of lanes busy over time. The same picture for a simulation and a measured run."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omnigraph.draw.figures import PALETTE, pyplot, save
from omnigraph.draw.trace import SpanLike


def draw_timeline(spans: Sequence[SpanLike], requests: Sequence[tuple[int, float, float]], path: str | Path,
                  title: str) -> Path:
    """`requests`: (id, arrival, end) each, for the in-system curve; times in seconds."""
    plt = pyplot()
    lanes = list(dict.fromkeys((s.stage, s.replica) for s in sorted(spans, key=lambda s: (s.start, s.stage))))
    lane_of = {key: i for i, key in enumerate(lanes)}
    end = max([s.end for s in spans] + [r[2] for r in requests] + [1e-9])
    fig, (gantt, load) = plt.subplots(2, 1, figsize=(12, 1.2 + 0.45 * max(1, len(lanes)) + 2.2),
                                      gridspec_kw={"height_ratios": [max(1, len(lanes)), 3]}, sharex=True)
    for s in spans:
        y = lane_of[(s.stage, s.replica)]
        single = len(s.requests) == 1
        colour = PALETTE[s.requests[0] % len(PALETTE)] if single else "#9e9e9e"
        gantt.broken_barh([(s.start, max(s.end - s.start, end * 2e-3))], (y - 0.4, 0.8), facecolors=colour,
                          edgecolor="none", hatch=None if single else "//")
        if not single and s.end - s.start > end / 60:
            gantt.text((s.start + s.end) / 2, y, str(len(s.requests)), ha="center", va="center", fontsize=6)
    gantt.set_yticks(range(len(lanes)), [f"{st} #{r}" for st, r in lanes])
    gantt.invert_yaxis()
    gantt.set_title(title)
    gantt.grid(axis="x", alpha=0.3)
    times = sorted({0.0, end, *(r[1] for r in requests), *(r[2] for r in requests)})
    in_system = [sum(1 for _, a, e in requests if a <= t < e) for t in times]
    load.step(times, in_system, where="post", color="#4e79a7", label="requests in the system")
    load.set_ylabel("requests")
    busy = load.twinx()
    grid = [end * i / 200 for i in range(201)]
    share = [sum(1 for s in spans if s.start <= t < s.end) / max(1, len(lanes)) for t in grid]
    busy.plot(grid, share, color="#e15759", alpha=0.7, label="lanes busy")
    busy.set_ylim(0, 1.05)
    busy.set_ylabel("share of lanes busy")
    load.set_xlabel("seconds")
    load.legend(loc="upper left", fontsize=7)
    busy.legend(loc="upper right", fontsize=7)
    return save(fig, path)
