"""A discrete-event simulator of a pipeline serving requests: the judge of a plan.

The model is the runtime's, one mechanism at a time:

- Each stage has `replicas` servers sharing one FIFO queue. A **batch** stage runs up
  to `max_batch` queued jobs at once, waiting up to `max_wait_s` for a batch to fill
  (as LocalBackend's worker does). An **ar** stage batches continuously, like the
  ar_llm executor: between decode steps it admits waiting requests (up to
  `max_batch` running), prefills them together, and every step decodes one token
  for each running request; requests leave as they finish.
- Edges: a consumer starts when all its producers are done, except over a
  **stream** edge into a batch stage: an AR producer emits a chunk every
  `chunk_tokens` tokens, and the consumer runs a job on whatever chunks have come in
  since its last one (in order, batched with other requests' jobs), so the first
  audio can leave before the reply ends. A stream into an AR stage is read whole,
  as ar_llm reads it.
- A stage absent from a request's `works` is skipped for it (a route not taken).
- Stages whose replicas name the same device share it (processor sharing): a step
  alone runs at full speed; k > 1 steps at once each run at min(1, C/k), C being the
  device's capacity. C = 1 time-slices a GPU between colocated stages; C < 1 says
  that running together wastes some of the device (threads fighting over two CPU
  cores and the GIL); C > 1, that it has room for more than one step.

Times come from callables (the cost rules, or measured timings): the simulator
knows nothing of models. It is deterministic: same inputs, same report.
"""
from __future__ import annotations

import dataclasses
import heapq
from dataclasses import replace
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

from omnigraph.passes.sim.report import report
from omnigraph.passes.sim.rules import _ar_fracs, _event_budget, _scale, _timed, ar_tokens, shared_speed  # noqa: F401
from omnigraph.passes.sim.state import Job, Replica, Req, Run, Stage, Task
from omnigraph.passes.sim.switching import PlanSwitch, apply_switch
from omnigraph.passes.sim.sim_types import (  # noqa: F401  (the public API lives here too)
    BatchTime, Latency, RequestReport, SimEdge, SimPipeline, SimReport, SimRequest, SimStage,
    SimulationError, Slo, Span, StageReport, StepTime, burst_arrivals, latency, parse_slo, poisson_arrivals, validate,
)


def simulate(pipeline: SimPipeline, requests: Sequence[SimRequest], *, slo_s: float | None = None,
             max_events: int | None = None, trace: bool = False, slo: Slo | None = None,
             switches: Sequence[PlanSwitch] = (), until_s: float | None = None) -> SimReport:
    """Serve `requests` on `pipeline`, event by event, and report what happened; with `trace`,
    every step each replica ran too (report.spans: for a timeline). Goodput counts the
    requests that meet `slo` (TTFT, TPOT, end to end), or end within `slo_s` seconds.
    With `until_s`, it stops at that time and reports the requests finished by then (an
    overloaded run's backlog need not drain for its throughput to be judged); what it reports
    is what a full run would have reported of them, since nothing later changes the past."""
    if slo_s is not None and not slo_s > 0:
        raise SimulationError(f"the SLO must be a positive number of seconds, not {slo_s!r}")
    if until_s is not None and not until_s >= 0:
        raise SimulationError(f"until_s must be a non-negative time, not {until_s!r}")
    if slo_s is not None:
        slo = replace(slo or Slo(), e2e_s=slo_s)
    if not requests:
        raise SimulationError("no requests to simulate")
    sim = _Sim(pipeline, requests, max_events)
    sim.spans = [] if trace else None
    sim.until = until_s
    for sw in switches:  # a plan family switching replicas mid-run (sim/switching.py)
        sim._at(sw.at_s, "switch", sw)
    out = sim.run(slo)
    return dataclasses.replace(out, spans=sim.spans) if sim.spans else out


# The engine; its state is in state.py, its report in report.py.
class _Sim:
    def __init__(self, pipeline: SimPipeline, requests: Sequence[SimRequest], max_events: int | None) -> None:
        self.p = pipeline
        self.order = validate(pipeline)
        self.stages = {s.name: Stage(s, [Replica(i, s.placement[i] if s.placement else ())
                                          for i in range(s.replicas)]) for s in pipeline.stages}
        for name in pipeline.outputs:
            self.stages[name].outputs = True
        if pipeline.text_output:
            self.stages[pipeline.text_output].text = True
        if pipeline.audio_output:
            self.stages[pipeline.audio_output].audio = True
        self.in_edges: dict[str, list[SimEdge]] = {s.name: [] for s in pipeline.stages}
        for e in pipeline.edges:
            self.in_edges[e.dst].append(e)
        for r in requests:
            unknown = sorted(set(r.works) - set(self.stages))
            if unknown:
                raise SimulationError(f"request {r.id}: no stage named {', '.join(unknown)}")
            if not (r.arrival_s >= 0 and math.isfinite(r.arrival_s)):
                raise SimulationError(f"request {r.id}: arrival time {r.arrival_s!r} is not a time")
        self.requests = [Req(r) for r in requests]
        self.spans: list[Span] | None = None  # simulate(trace=True) records every run here
        self.now = 0.0
        self.heap: list[tuple[float, int, str, Any]] = []
        self.seq = itertools.count()
        self.events = 0
        self.max_events = max_events or _event_budget(requests, pipeline)
        self.device_runs: dict[str, list[Run]] = {}
        self.swapped: dict[str, Stage] = {}  # per device, the swapped stage whose weights it holds
        # Stages with new work or a free server: dispatched once every event at this instant is
        # in, so that requests arriving together are batched together.
        self.dirty: dict[Stage, None] = {}
        self.until: float | None = None  # simulate(until_s=…): stop there, report what finished

    # -- the loop --------------------------------------------------------------------
    def run(self, slo: Slo | None) -> SimReport:
        for req in self.requests:
            self._at(req.spec.arrival_s, "arrive", req)
        while self.heap:
            if self.until is not None and self.heap[0][0] > self.until:
                break
            self.events += 1
            if self.events > self.max_events:
                raise SimulationError(f"simulation did not finish within {self.max_events} events "
                                      f"(a timing function may return tiny times); stopped at t={self.now:.3f}s")
            t, _, kind, payload = heapq.heappop(self.heap)
            self.now = t
            if kind == "arrive":
                self._arrive(payload)
            elif kind == "run":
                run, version = payload
                if version == run.version:
                    self._finish_run(run)
            elif kind == "enqueue":
                stage, item = payload
                self._enqueue(stage, item, handed_off=True)
            elif kind == "switch":
                apply_switch(self, payload)
            elif kind == "ready":
                self.dirty[payload] = None
            elif kind == "fill":
                stage, token = payload
                if stage.fill_token == token:
                    stage.fill_token, stage.fill_ready = None, True
                    self.dirty[stage] = None
            while self.dirty and (not self.heap or self.heap[0][0] > self.now):
                stage = next(iter(self.dirty))
                del self.dirty[stage]
                self._dispatch(stage)
        stuck = [r.spec.id for r in self.requests if r.finish is None]
        if stuck and self.until is None:
            raise SimulationError(f"{len(stuck)} request(s) never finished (first: {stuck[0]}); "
                                  "a stage waits on an input nothing produces")
        if len(stuck) == len(self.requests):
            raise SimulationError(f"no request finished by t={self.until:g}s")
        return self._report(slo)

    def _at(self, t: float, kind: str, payload: Any) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), kind, payload))

    # -- requests and tasks -----------------------------------------------------------
    def _arrive(self, req: Req) -> None:
        for name in self.order:
            work = req.spec.works.get(name)
            if work is None:
                continue  # skipped for this request
            stage = self.stages[name]
            task = Task(req, stage, work, fracs=[1.0])
            producers = [(e, req.tasks[e.src]) for e in self.in_edges[name] if e.src in req.tasks]
            driver = next((t for e, t in producers if e.stream and stage.spec.mode == "batch"), None)
            for _, prod in producers:
                if prod is driver:
                    prod.driven.append(task)
                else:
                    prod.waiters.append(task)
                    task.waiting_on += 1
            task.driver = driver
            task.fracs = driver.fracs if driver is not None else _ar_fracs(stage.spec, work)
            req.tasks[name] = task
            req.pending_outputs += stage.outputs
        if req.pending_outputs == 0:
            req.finish = self.now
        for task in list(req.tasks.values()):
            self._try_ready(task)

    def _try_ready(self, task: Task) -> None:
        if task.waiting_on or task.in_flight or task.done:
            return
        stage = task.stage
        if stage.spec.mode == "ar":
            task.in_flight = True
            self._enqueue(stage, task)
        else:
            # Every chunk that has come in since its last job, at once: a streaming consumer
            # reads what has arrived, so one that lags catches up in bigger pieces.
            j = task.next_chunk
            arrived = len(task.fracs) if task.driver is None else task.driver.chunks_out
            if j >= arrived:
                return
            work = task.work if len(task.fracs) == 1 else _scale(task.work, sum(task.fracs[j:arrived]))
            task.in_flight, task.next_chunk = True, arrived
            self._enqueue(stage, Job(task, work, self.now, arrived - j))

    def _enqueue(self, stage: Stage, item: Job | Task, handed_off: bool = False) -> None:
        delay = self.p.handoff_s if stage.spec.handoff_s is None else stage.spec.handoff_s
        if delay > 0 and not handed_off:
            self._at(self.now + delay, "enqueue", (stage, item))
            return
        if isinstance(item, Job):
            item.ready_at = self.now
        else:
            item.queued_at = self.now
        stage.queue.append(item)
        self.dirty[stage] = None

    def _emit(self, task: Task, chunks: int = 1) -> None:
        """`chunks` more output chunks of `task` are out."""
        first = task.chunks_out == 0
        task.chunks_out += chunks
        req = task.req
        if first:
            if task.stage.audio and req.ttfa is None:
                req.ttfa = self.now - req.spec.arrival_s
            if task.stage.text and req.ttft is None:
                req.ttft = self.now - req.spec.arrival_s
        for consumer in task.driven:
            self._try_ready(consumer)
        if task.chunks_out == len(task.fracs):
            task.done = True
            for consumer in task.waiters:
                consumer.waiting_on -= 1
                self._try_ready(consumer)
            if task.stage.outputs:
                req.pending_outputs -= 1
                if req.pending_outputs == 0:
                    req.finish = self.now

    # -- dispatch -----------------------------------------------------------------------
    def _dispatch(self, stage: Stage) -> None:
        if stage.spec.mode == "ar":
            for rep in stage.replicas:
                if not rep.busy and (rep.running or (stage.queue and rep.admits(self.now))):
                    self._ar_iteration(stage, rep)
            return
        for rep in stage.replicas:
            if not stage.queue:
                break
            if rep.busy or not rep.admits(self.now):
                continue
            spec = rep.timing(stage)
            if len(stage.queue) < spec.max_batch and spec.max_wait_s > 0 and not stage.fill_ready:
                if stage.fill_token is None:  # give the batch a moment to fill
                    stage.fill_token = next(self.seq)
                    self._at(self.now + spec.max_wait_s, "fill", (stage, stage.fill_token))
                break
            jobs = [stage.queue.popleft() for _ in range(min(spec.max_batch, len(stage.queue)))]
            stage.fill_token, stage.fill_ready = None, False
            self._start_batch(stage, rep, jobs)
        stage.fill_ready = False

    def _start_batch(self, stage: Stage, rep: Replica, jobs: list[Job]) -> None:
        for job in jobs:
            stage.waits += self.now - job.ready_at
        stage.jobs += len(jobs)
        stage.batches += 1
        stage.batched += len(jobs)
        seconds = _timed(stage, "batch_time", rep.timing(stage).batch_time, [j.work for j in jobs])

        def done() -> None:
            for job in jobs:
                job.task.in_flight = False
                self._emit(job.task, job.chunks)
            for job in jobs:  # their next chunks, if in
                self._try_ready(job.task)
            self.dirty[stage] = None

        self._start_run(stage, rep, seconds, done, tuple(j.task.req.spec.id for j in jobs))

    def _ar_iteration(self, stage: Stage, rep: Replica) -> None:
        """Admit and prefill what fits, then one decode step for everything running."""
        room = rep.timing(stage).max_batch - len(rep.running) if rep.admits(self.now) else 0
        admitted = [stage.queue.popleft() for _ in range(min(room, len(stage.queue)))]
        if admitted:
            for task in admitted:
                stage.waits += self.now - task.queued_at
            stage.jobs += len(admitted)
            seconds = _timed(stage, "prefill_time", rep.timing(stage).prefill_time, [t.work for t in admitted])

            def prefilled() -> None:
                rep.busy = True  # held through to the decode step of this iteration
                for task in admitted:
                    task.context = task.work.tokens
                    self._token(task)
                    if not task.done and not self._next_round(stage, task):
                        rep.running.append(task)
                self._ar_decode(stage, rep)

            self._start_run(stage, rep, seconds, prefilled, tuple(t.req.spec.id for t in admitted), "prefill")
        else:
            self._ar_decode(stage, rep)

    def _ar_decode(self, stage: Stage, rep: Replica) -> None:
        running = list(rep.running)
        if not running:
            rep.busy = False
            self.dirty[stage] = None
            return
        context = sum(t.context for t in running) / len(running)
        stage.batches += 1
        stage.batched += len(running)
        seconds = _timed(stage, "step_time", rep.timing(stage).step_time, len(running), context)

        def stepped() -> None:
            for task in running:
                task.context += 1
                self._token(task)
            rep.running = [t for t in rep.running if not t.done and not self._next_round(stage, t)]
            self.dirty[stage] = None

        self._start_run(stage, rep, seconds, stepped, tuple(t.req.spec.id for t in running), "decode")

    def _token(self, task: Task) -> None:
        """One more token out of an AR task: a chunk at each boundary, done at the last. A task
        of several rounds (a loop body's iterations) writes each round's tokens as a sequence
        of its own; its TTFT and TPOT are its last round's, whose text is the answer."""
        task.generated += 1
        per_round = task.work.decode_steps + 1  # the prefill writes the first token
        total = ar_tokens(task.work)
        in_round = (task.generated - 1) % per_round + 1
        last_round = task.generated > total - per_round
        if in_round == 1:
            task.first_token = self.now
            if last_round and task.stage.text and task.req.ttft is None:
                task.req.ttft = self.now - task.req.spec.arrival_s
        if task.generated == total and per_round > 1 and task.stage.text:
            task.req.tpot = (self.now - task.first_token) / (per_round - 1)
        size = task.stage.spec.chunk_tokens
        if task.generated == total or (size and task.generated % size == 0):
            self._emit(task)

    def _next_round(self, stage: Stage, task: Task) -> bool:
        """A task that ended a round with more to run leaves the batch and queues again for
        its next (admitted, prefilled and decoded as a new sequence). True when it left."""
        if task.done or task.generated % (task.work.decode_steps + 1):
            return False
        self._enqueue(stage, task)
        return True

    # -- timed runs, with devices shared by processor sharing -----------------------------
    def _start_run(self, stage: Stage, rep: Replica, seconds: float, on_done: Callable[[], None],
                   requests: tuple[int, ...] = (), what: str = "batch") -> None:
        rep.busy = True
        if rep.timing(stage).swap_s and rep.devices:  # its weights come onto the device first, unless there
            if any(self.swapped.get(d) is not stage for d in rep.devices):
                seconds += rep.timing(stage).swap_s
                stage.swaps += 1
            for d in rep.devices:
                self.swapped[d] = stage
        run = Run(stage, rep, seconds, on_done, started=self.now, since=self.now, requests=requests, what=what)
        if rep.devices:
            self._reshare(rep.devices, add=run)
        else:
            self._at(self.now + seconds, "run", (run, run.version))

    def _finish_run(self, run: Run) -> None:
        if run.replica.devices:
            self._reshare(run.replica.devices, remove=run)
        run.stage.busy_s += self.now - run.started
        if self.spans is not None:
            self.spans.append(Span(run.stage.spec.name, run.replica.index, run.started, self.now, run.requests, run.what))
        run.replica.busy = False
        run.on_done()

    def _reshare(self, devices: tuple[str, ...], add: Run | None = None, remove: Run | None = None) -> None:
        affected = {id(r): r for d in devices for r in self.device_runs.get(d, [])}
        for d in devices:
            runs = self.device_runs.setdefault(d, [])
            if add is not None:
                runs.append(add)
            if remove is not None:
                runs.remove(remove)
        if add is not None:
            add.rate = 0.0  # timed below, from its start
            affected[id(add)] = add
        affected.pop(id(remove), None)
        capacity, runs_on = self.p.device_capacity, self.device_runs
        for run in affected.values():
            devs = run.replica.devices
            rate = (shared_speed(capacity.get(devs[0], 1.0), len(runs_on[devs[0]])) if len(devs) == 1
                    else min(shared_speed(capacity.get(d, 1.0), len(runs_on[d])) for d in devs))
            if rate == run.rate:  # its finish stands as timed
                continue
            # progress so far, at the old rate; the rest at the new one
            run.remaining = max(0.0, run.remaining - run.rate * (self.now - run.since))
            run.since, run.rate = self.now, rate
            run.version += 1
            self._at(self.now + run.remaining / run.rate, "run", (run, run.version))

    def _report(self, slo: Slo | None) -> SimReport:
        return report([r for r in self.requests if r.finish is not None], self.stages, self.now, self.events, slo)

