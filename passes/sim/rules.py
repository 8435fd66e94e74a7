"""Small rules of the simulator: device sharing, streamed chunks, AR rounds, timings, the event budget."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from omnigraph.passes.planner.cost_types import StageWork
from omnigraph.passes.sim.sim_types import SimPipeline, SimRequest, SimStage, SimulationError
from omnigraph.passes.sim.state import Stage


def shared_speed(capacity: float, k: int) -> float:
    """The speed of each of k steps sharing a device: alone, full speed; together, the
    device's capacity split evenly (never faster than alone)."""
    return 1.0 if k == 1 else min(1.0, capacity / k)


def ar_rounds(work: StageWork) -> int:
    """Sequences an AR task runs one after another: a loop body's iterations (sim/model.py)."""
    return max(1, work.repeats)


def ar_tokens(work: StageWork) -> int:
    """Tokens an AR task writes in all: the prefill writes each round's first."""
    return (work.decode_steps + 1) * ar_rounds(work)


def _ar_fracs(stage: SimStage, work: StageWork) -> list[float]:
    """Output chunks of a task: AR stages stream every chunk_tokens tokens, others emit once."""
    if stage.mode != "ar" or not stage.chunk_tokens:
        return [1.0]
    total = ar_tokens(work)
    sizes = [stage.chunk_tokens] * (total // stage.chunk_tokens)
    if total % stage.chunk_tokens:
        sizes.append(total % stage.chunk_tokens)
    return [s / total for s in sizes]


@lru_cache(maxsize=4096)  # the simulator's hottest call when a consumer follows a stream token by token
def _scale(work: StageWork, frac: float) -> StageWork:
    """The part of a request's work that one chunk brings (each size at least 1 where it was not 0)."""
    t, d, o, b = work.tokens, work.decode_steps, work.out_tokens, work.out_bytes
    return StageWork(max(1, round(t * frac)) if t > 0 else 0, work.repeats,
                     max(1, round(d * frac)) if d > 0 else 0, max(1, round(o * frac)) if o > 0 else 0,
                     max(1, round(b * frac)) if b > 0 else 0)


def _event_budget(requests: Sequence[SimRequest], pipeline: SimPipeline) -> int:
    """Generous: every run is an event, plus re-timings when devices are shared."""
    units = sum(w.decode_steps * ar_rounds(w) + 3 for r in requests for w in r.works.values())
    shared = 1 + sum(s.replicas for s in pipeline.stages if s.placement)
    return 10_000 + 8 * units * shared


def _timed(stage: Stage, what: str, fn: Callable[..., float] | None, *args: Any) -> float:
    """What a timing function says a run takes, checked: positive, finite seconds."""
    assert fn is not None  # _validate checked the mode's functions are there
    seconds = fn(*args)
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        n = args[0] if isinstance(args[0], int) else len(args[0])
        raise SimulationError(f"stage '{stage.spec.name}': {what} returned {seconds!r} for a batch of {n}; "
                              "times must be positive seconds")
    return float(seconds)
