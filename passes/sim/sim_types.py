"""The simulator's vocabulary: the pipeline it replays, the requests, and what it reports.

passes/sim/engine.py is the engine that runs these.
"""
from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from omnigraph.errors import OmnigraphError
from omnigraph.passes.planner.cost_types import StageWork

BatchTime = Callable[[Sequence[StageWork]], float]  # seconds to run these requests as one batch
StepTime = Callable[[int, float], float]  # (running sequences, mean KV context) -> one decode step


class SimulationError(OmnigraphError):
    """The pipeline or workload cannot be simulated (bad stage, bad timing, runaway loop)."""


@dataclass(frozen=True)
class Slo:
    """Latency targets a request must meet to count towards goodput (None: no target):
    time to first token, time per output token after it (DistServe's pair), end to end, and
    time to first audio (a pipeline that speaks its reply: the text can be in time while the
    speech behind it backs up, which a TTFT target alone never sees)."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None
    ttfa_s: float | None = None

    def met(self, r: RequestReport) -> bool:
        return ((self.ttft_s is None or (r.ttft_s is not None and r.ttft_s <= self.ttft_s))
                and (self.tpot_s is None or r.tpot_s is None or r.tpot_s <= self.tpot_s)
                and (self.e2e_s is None or r.jct_s <= self.e2e_s)
                and (self.ttfa_s is None or r.ttfa_s is None or r.ttfa_s <= self.ttfa_s))

    @property
    def token_targets(self) -> bool:
        return self.ttft_s is not None or self.tpot_s is not None

    def __str__(self) -> str:
        parts = [f"{k}={v:g}" for k, v in (("ttft", self.ttft_s), ("tpot", self.tpot_s), ("e2e", self.e2e_s),
                                           ("ttfa", self.ttfa_s)) if v is not None]
        return ",".join(parts)


def parse_slo(text: str | float | None) -> Slo | None:
    """`--slo`: seconds end to end (`5`), or targets by name (`ttft=0.5,tpot=0.05[,e2e=20][,ttfa=1]`)."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return Slo(e2e_s=_positive(float(text), "e2e"))
    fields = {"ttft": "ttft_s", "tpot": "tpot_s", "e2e": "e2e_s", "ttfa": "ttfa_s"}
    if "=" not in text:
        return Slo(e2e_s=_positive(_number(text, "e2e"), "e2e"))
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, value = part.partition("=")
        name = name.strip().lower()
        if name not in fields:
            raise SimulationError(f"--slo: unknown target '{name}' (targets: ttft, tpot, e2e, ttfa, in seconds)")
        out[fields[name]] = _positive(_number(value, name), name)
    return Slo(**out)


def _number(text: str, name: str) -> float:
    try:
        return float(text.strip().removesuffix("s"))
    except ValueError:
        raise SimulationError(f"--slo: {name} must be seconds, not {text.strip()!r}") from None


def _positive(x: float, name: str) -> float:
    if not (x > 0 and math.isfinite(x)):
        raise SimulationError(f"--slo: {name} must be a positive number of seconds, not {x!r}")
    return x


@dataclass(frozen=True)
class SimStage:
    name: str
    mode: Literal["batch", "ar"] = "batch"
    replicas: int = 1
    max_batch: int = 1
    batch_time: BatchTime | None = None  # batch mode
    prefill_time: BatchTime | None = None  # ar mode: the admitted requests' prompts, together
    step_time: StepTime | None = None  # ar mode: one decode step of the running batch
    chunk_tokens: int = 0  # ar mode: a streamed chunk every this many tokens (0: one, at the end)
    max_wait_s: float = 0.0  # batch mode: how long a free server waits for a batch to fill
    placement: tuple[tuple[str, ...], ...] = ()  # per replica, the devices it runs on (empty: its own)
    # Its weights live in host memory: a run on a device whose last swapped stage was another
    # first loads them, this many seconds (plan `swap`).
    swap_s: float = 0.0
    handoff_s: float | None = None  # its own hand-off delay (a calibration's), else the pipeline's


@dataclass(frozen=True)
class Span:
    """One step a stage replica ran, from `start` to `end` seconds, for `requests` (a timeline's
    bar; `omnigraph run --trace` writes the measured ones in the same shape)."""

    stage: str
    replica: int
    start: float
    end: float
    requests: tuple[int, ...] = ()
    what: str = "batch"


@dataclass(frozen=True)
class SimEdge:
    src: str
    dst: str
    stream: bool = False


@dataclass
class SimPipeline:
    stages: list[SimStage]
    edges: list[SimEdge]
    inputs: dict[str, list[str]]  # pipeline input -> the stages that read it
    outputs: list[str]  # stages whose results are the request's outputs
    text_output: str | None = None  # its first token is the TTFT
    audio_output: str | None = None  # its first chunk is the TTFA
    device_capacity: dict[str, float] = field(default_factory=dict)  # C per device (default 1)
    # From a stage's inputs being in to its servers seeing the work (a runtime's dispatch and
    # thread wake-up): a delay on the way to each queue that occupies no server.
    handoff_s: float = 0.0


@dataclass(frozen=True)
class SimRequest:
    id: int
    arrival_s: float
    works: dict[str, StageWork]  # per stage it visits; a stage left out is skipped


@dataclass(frozen=True)
class Latency:
    mean: float
    p50: float
    p90: float
    p99: float
    max: float


@dataclass(frozen=True)
class StageReport:
    name: str
    replicas: int
    utilisation: float  # busy replica-time / (replicas x makespan)
    mean_queue_wait_s: float  # from ready to started (ar: to admitted)
    mean_batch: float  # jobs per batch (ar: sequences per decode step)
    jobs: int


@dataclass(frozen=True)
class RequestReport:
    id: int
    arrival_s: float
    finish_s: float
    ttft_s: float | None
    ttfa_s: float | None
    tpot_s: float | None = None  # the text stage's time per output token after the first

    @property
    def jct_s(self) -> float:
        return self.finish_s - self.arrival_s


@dataclass(frozen=True)
class SimReport:
    requests: int
    makespan_s: float  # first arrival to last completion
    throughput: float  # completed requests per second over the makespan
    goodput: float  # those meeting the SLO per second (= throughput without an SLO)
    slo_s: float | None
    jct: Latency
    ttft: Latency | None
    ttfa: Latency | None
    stages: dict[str, StageReport]
    per_request: list[RequestReport]
    events: int
    spans: list[Span] = field(default_factory=list)  # with simulate(trace=True): every step run
    tpot: Latency | None = None
    slo: Slo | None = None  # the targets goodput counted (slo_s is its e2e)
    attainment: float = 1.0  # the share of requests that met them

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the summary and per-stage figures (not the per-request list)."""
        lat = (lambda x: None if x is None else {k: round(v, 6) for k, v in vars(x).items()})
        return {
            "requests": self.requests, "makespan_s": round(self.makespan_s, 6),
            "throughput_req_s": round(self.throughput, 6), "goodput_req_s": round(self.goodput, 6),
            "slo_s": self.slo_s, "slo": str(self.slo) if self.slo else None, "attainment": round(self.attainment, 6),
            "jct_s": lat(self.jct), "ttft_s": lat(self.ttft), "tpot_s": lat(self.tpot), "ttfa_s": lat(self.ttfa),
            "stages": {name: {"replicas": s.replicas, "utilisation": round(s.utilisation, 6),
                              "mean_queue_wait_s": round(s.mean_queue_wait_s, 6),
                              "mean_batch": round(s.mean_batch, 4), "jobs": s.jobs}
                       for name, s in self.stages.items()},
            "events": self.events,
        }


def poisson_arrivals(rate: float, n: int, seed: int = 0) -> list[float]:
    """`n` arrival times of a Poisson process of `rate` per second (the first after 0)."""
    if not rate > 0 or math.isinf(rate):
        raise SimulationError(f"arrival rate must be a positive number of requests/s, not {rate!r}")
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


def burst_arrivals(n: int) -> list[float]:
    """`n` requests all at t = 0."""
    return [0.0] * n


def latency(values: Sequence[float]) -> Latency:
    """Mean and percentiles (linear interpolation between ranks, as numpy's default)."""
    xs = sorted(values)

    def pct(q: float) -> float:
        pos = (len(xs) - 1) * q
        lo = math.floor(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return Latency(sum(xs) / len(xs), pct(0.5), pct(0.9), pct(0.99), xs[-1])


def validate(p: SimPipeline) -> list[str]:
    """Check the pipeline; return its stage names in dependency order."""
    names = [s.name for s in p.stages]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise SimulationError(f"two stages are named '{dup}'")
    known = set(names)
    for s in p.stages:
        if s.replicas < 1:
            raise SimulationError(f"stage '{s.name}' has {s.replicas} replicas; it needs at least one")
        if s.max_batch < 1:
            raise SimulationError(f"stage '{s.name}': max_batch must be at least 1, not {s.max_batch}")
        if s.mode not in ("batch", "ar"):
            raise SimulationError(f"stage '{s.name}': mode is 'batch' or 'ar', not {s.mode!r}")
        need = ("batch_time",) if s.mode == "batch" else ("prefill_time", "step_time")
        missing = [f for f in need if getattr(s, f) is None]
        if missing:
            raise SimulationError(f"stage '{s.name}' ({s.mode}) needs {' and '.join(missing)}")
        if s.placement and len(s.placement) != s.replicas:
            raise SimulationError(f"stage '{s.name}': placement lists {len(s.placement)} replicas, "
                                  f"not {s.replicas}")
        if s.chunk_tokens < 0 or not s.max_wait_s >= 0:
            raise SimulationError(f"stage '{s.name}': chunk_tokens and max_wait_s cannot be negative")
    if not (p.handoff_s >= 0 and math.isfinite(p.handoff_s)):
        raise SimulationError(f"handoff_s must be a non-negative time, not {p.handoff_s!r}")
    for d, c in p.device_capacity.items():
        if not c > 0:
            raise SimulationError(f"device '{d}': capacity must be positive, not {c!r}")
    for e in p.edges:
        for end in (e.src, e.dst):
            if end not in known:
                raise SimulationError(f"edge {e.src} -> {e.dst}: no stage named '{end}'")
    fed = {s for stages in p.inputs.values() for s in stages}
    for s in sorted(fed - known):
        raise SimulationError(f"an input feeds '{s}', which is not a stage")
    for name in [*p.outputs, p.text_output, p.audio_output]:
        if name is not None and name not in known:
            raise SimulationError(f"output stage '{name}' is not a stage")
    for name in (p.text_output, p.audio_output):
        if name is not None and name not in p.outputs:
            raise SimulationError(f"'{name}' is named as the text or audio output but is not an output")
    has_in = {e.dst for e in p.edges}
    for s in names:
        if s not in has_in and s not in fed:
            raise SimulationError(f"stage '{s}' reads nothing: no edge or pipeline input feeds it")
    # Kahn's algorithm, in the stages' listed order: a cycle leaves stages unvisited.
    indeg = {n: 0 for n in names}
    for e in p.edges:
        indeg[e.dst] += 1
    order, ready = [], deque(n for n in names if indeg[n] == 0)
    while ready:
        n = ready.popleft()
        order.append(n)
        for e in p.edges:
            if e.src == n:
                indeg[e.dst] -= 1
                if indeg[e.dst] == 0:
                    ready.append(e.dst)
    if len(order) != len(names):
        raise SimulationError(f"the stage graph has a cycle through {', '.join(n for n in names if indeg[n])}")
    return order
