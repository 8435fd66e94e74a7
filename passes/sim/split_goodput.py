"""Does splitting an LLM stage into prefill and decode instances pay? The simulator judges.

DistServe's measure: a configuration's goodput is the highest arrival rate at which at
least `ATTAINMENT` of the requests meet both the time-to-first-token and the time-per-output-
token targets. The same replicas are tried whole (every instance prefills and decodes, so a
new prompt's prefill stalls the running decodes: TPOT suffers under load) and split p : r-p
(prefill instances hand the KV over a link to decode instances, which then only decode).
The split is kept only where its goodput beats the whole stage's by `MARGIN`: never where it
loses. Step times are the cost rules' (sim/model.py's CostTimes), so the planner and the
simulator that replays its plan agree on what a split is worth.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from omnigraph.passes.planner.cost_types import RequestShape, StageWork
from omnigraph.passes.planner.workload import sample_shapes
from omnigraph.passes.sim.engine import (
    SimEdge, SimPipeline, SimRequest, SimStage, Slo, poisson_arrivals, simulate,
)

ATTAINMENT = 0.9  # of requests within the targets (DistServe's default)
MARGIN = 1.05  # a split must beat the whole stage by this much to be chosen
REQUESTS = 160  # per simulated load, at least: as many as arrive over HORIZON request times
MAX_REQUESTS = 2400
HORIZON = 25  # a load runs this many times a lone request's latency: long enough for queues to build
SEARCH_STEPS = 9  # bisections of the arrival rate
KV_HOP_S = 50e-6  # a hand-over's fixed cost (a message, an allocation) besides its bytes
PREFILL_TOKENS = 4096  # a prefill instance batches prompts up to about this many tokens: enough to
# keep the device's compute busy, few enough that a prompt does not wait on many others (DistServe)


def prefill_batch(works: Sequence[StageWork], cap: int) -> int:
    """A prefill instance's batch for prompts of these sizes (within the stage's batch)."""
    mean = sum(w.tokens for w in works) / max(1, len(works))
    return max(1, min(cap, int(PREFILL_TOKENS // max(1.0, mean))))


@dataclass(frozen=True)
class LlmTimes:
    """One LLM replica's step times (sim/model.py CostTimes) and its KV size."""

    prefill: Callable[[Sequence[StageWork]], float]
    step: Callable[[int, float], float]
    kv_bytes_per_token: int
    link_gb_s: float  # between a prefill and a decode instance

    def handover(self, works: Sequence[StageWork]) -> float:
        """Moving the admitted requests' KV to a decode instance."""
        tokens = sum(w.tokens for w in works)
        return KV_HOP_S * len(works) + tokens * self.kv_bytes_per_token / (self.link_gb_s * 1e9)


@dataclass(frozen=True)
class SplitVerdict:
    replicas: int
    goodput: dict[int, float]  # prefill instances (0: the stage whole) -> requests/s within the SLO
    slo: Slo

    @property
    def prefill(self) -> int:
        """The prefill instances to split off (0: keep the stage whole)."""
        best = max(self.goodput, key=lambda p: (self.goodput[p], -p))
        whole = self.goodput.get(0, 0.0)
        return best if best and self.goodput[best] > whole * MARGIN and self.goodput[best] > 0 else 0

    @property
    def gain(self) -> float:
        whole = self.goodput.get(0, 0.0)
        best = self.goodput[self.prefill]
        return best / whole if whole > 0 else float("inf") if best > 0 else 1.0

    def describe(self) -> str:
        p, r = self.prefill, self.replicas
        figures = ", ".join(f"{'whole' if k == 0 else f'{k}:{r - k}'} {v:.3g}" for k, v in sorted(self.goodput.items()))
        head = (f"prefill {p} + decode {r - p}: {self.gain:.2f}x the whole stage's goodput" if p
                else "kept whole: no split beats it")
        return f"{head} under {self.slo} (req/s at {ATTAINMENT:.0%} within targets: {figures})"


def whole_pipeline(name: str, times: LlmTimes, replicas: int, batch: int) -> SimPipeline:
    stage = SimStage(name, "ar", replicas, batch, prefill_time=times.prefill, step_time=times.step)
    return SimPipeline([stage], [], {"prompt": [name]}, [name], text_output=name)


def split_pipeline(name: str, times: LlmTimes, prefill: int, decode: int, batch: int,
                   prefill_at: int | None = None) -> SimPipeline:
    pre = SimStage(f"{name}_prefill", "batch", prefill, prefill_at or batch, batch_time=times.prefill)
    dec = SimStage(name, "ar", decode, batch, prefill_time=times.handover, step_time=times.step)
    return SimPipeline([pre, dec], [SimEdge(pre.name, name)], {"prompt": [pre.name]}, [name], text_output=name)


def judge_split(name: str, times: LlmTimes, replicas: int, batch: int, works: Sequence[StageWork],
                mix: Sequence[RequestShape], slo: Slo, rate_hint: float) -> SplitVerdict:
    """Goodput of the stage whole and of each prefill:decode split of its replicas."""
    shapes = sample_shapes(list(mix), MAX_REQUESTS, seed=0)
    index = {id(s): i for i, s in enumerate(mix)}
    per_request = [works[index[id(s)]] for s in shapes]
    alone = sum(times.prefill([w]) + w.decode_steps * times.step(1, w.tokens) for w in works) / len(works)
    hi = max(rate_hint, 1e-3) * 2
    goodput = {0: max_goodput(whole_pipeline(name, times, replicas, batch), per_request, slo, hi, HORIZON * alone)}
    for p in _split_candidates(replicas):
        pipeline = split_pipeline(name, times, p, replicas - p, batch, prefill_batch(works, batch))
        goodput[p] = max_goodput(pipeline, per_request, slo, hi, HORIZON * alone)
    return SplitVerdict(replicas, goodput, slo)


def max_goodput(pipeline: SimPipeline, works: Sequence[StageWork], slo: Slo, hi: float, horizon_s: float) -> float:
    """The highest Poisson arrival rate (requests/s, bisected from [0, hi]) at which at least
    ATTAINMENT of the requests meet `slo` on `pipeline`, arrivals running `horizon_s` seconds
    (within REQUESTS..MAX_REQUESTS of `works`); 0 if even a trickle does not."""
    stages = [s.name for s in pipeline.stages]

    def attained(rate: float) -> bool:
        n = int(min(len(works), max(REQUESTS, rate * horizon_s)))
        arrivals = poisson_arrivals(rate, n, seed=1)
        reqs = [SimRequest(i, t, {s: w for s in stages}) for i, (t, w) in enumerate(zip(arrivals, works))]
        return simulate(pipeline, reqs, slo=slo).attainment >= ATTAINMENT

    lo = 0.0
    if not attained(hi / 2 ** SEARCH_STEPS):
        return 0.0
    while attained(hi) and hi < 1e6:  # the hint was low: look higher
        lo, hi = hi, hi * 2
    for _ in range(SEARCH_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if attained(mid) else (lo, mid)
    return lo


def _split_candidates(replicas: int) -> list[int]:
    """Prefill instance counts worth trying: every one on a few replicas, a spread on many."""
    if replicas < 2:
        return []
    if replicas <= 6:
        return list(range(1, replicas))
    return sorted({1, max(1, replicas // 4), replicas // 2, (3 * replicas) // 4, replicas - 1})

