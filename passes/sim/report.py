"""The simulator's report: per-request times, throughput and goodput, per-stage busy time."""
from __future__ import annotations

import math
from collections.abc import Sequence

from omnigraph.passes.sim.sim_types import RequestReport, SimReport, Slo, StageReport, latency
from omnigraph.passes.sim.state import Req, Stage


def report(requests: Sequence[Req], stages: dict[str, Stage], now: float, events: int,
           slo: Slo | None) -> SimReport:
    per = [RequestReport(r.spec.id, r.spec.arrival_s, r.finish, r.ttft, r.ttfa, r.tpot)  # type: ignore[arg-type]
           for r in requests]
    start = min(r.arrival_s for r in per)
    makespan = max(r.finish_s for r in per) - start
    span = max(makespan, now - start)
    rate = (lambda k: k / makespan if makespan > 0 else math.inf)
    good = len(per) if slo is None else sum(slo.met(r) for r in per)
    per_stage = {}
    for name, st in stages.items():
        cap = st.spec.replicas * span
        per_stage[name] = StageReport(
            name, st.spec.replicas, st.busy_s / cap if cap > 0 else 0.0,
            st.waits / st.jobs if st.jobs else 0.0, st.batched / st.batches if st.batches else 0.0, st.jobs)
    ttft = [r.ttft_s for r in per if r.ttft_s is not None]
    ttfa = [r.ttfa_s for r in per if r.ttfa_s is not None]
    tpot = [r.tpot_s for r in per if r.tpot_s is not None]
    return SimReport(
        requests=len(per), makespan_s=makespan, throughput=rate(len(per)), goodput=rate(good),
        slo_s=slo.e2e_s if slo else None, slo=slo, attainment=good / len(per), tpot=latency(tpot) if tpot else None,
        jct=latency([r.jct_s for r in per]), ttft=latency(ttft) if ttft else None,
        ttfa=latency(ttfa) if ttfa else None, stages=per_stage, per_request=per, events=events)
