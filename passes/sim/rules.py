"""Small rules of the simulator: device sharing, streamed chunks, the event budget."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from omnigraph.passes.planner.cost_types import StageWork
from omnigraph.passes.sim.sim_types import SimPipeline, SimRequest, SimStage


def shared_speed(capacity: float, k: int) -> float:
    """The speed of each of k steps sharing a device: alone, full speed; together, the
    device's capacity split evenly (never faster than alone)."""
    return 1.0 if k == 1 else min(1.0, capacity / k)


def _ar_fracs(stage: SimStage, work: StageWork) -> list[float]:
    """Output chunks of a task: AR stages stream every chunk_tokens tokens, others emit once."""
    if stage.mode != "ar" or not stage.chunk_tokens:
        return [1.0]
    total = work.decode_steps + 1
    sizes = [stage.chunk_tokens] * (total // stage.chunk_tokens)
    if total % stage.chunk_tokens:
        sizes.append(total % stage.chunk_tokens)
    return [s / total for s in sizes]


def _scale(work: StageWork, frac: float) -> StageWork:
    """The part of a request's work that one chunk brings."""
    part = (lambda n: max(1, round(n * frac)) if n > 0 else 0)
    return replace(work, tokens=part(work.tokens), decode_steps=part(work.decode_steps),
                   out_tokens=part(work.out_tokens), out_bytes=part(work.out_bytes))


def _event_budget(requests: Sequence[SimRequest], pipeline: SimPipeline) -> int:
    """Generous: every run is an event, plus re-timings when devices are shared."""
    units = sum(w.decode_steps + 3 for r in requests for w in r.works.values())
    shared = 1 + sum(s.replicas for s in pipeline.stages if s.placement)
    return 10_000 + 8 * units * shared
