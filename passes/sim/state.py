"""What the simulator keeps per request, stage, replica and timed run (see engine.py).

A Task is one request at one stage; a Job is one unit a batch stage runs (a task, or one
chunk of it); a Run is one timed step on a replica (a batch, a prefill, a decode step).
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omnigraph.passes.planner.cost_types import StageWork
from omnigraph.passes.sim.sim_types import SimRequest, SimStage


@dataclass(eq=False)
class Req:
    spec: SimRequest
    tasks: dict[str, Task] = field(default_factory=dict)
    pending_outputs: int = 0
    finish: float | None = None
    ttft: float | None = None
    ttfa: float | None = None
    tpot: float | None = None


@dataclass(eq=False)
class Task:
    req: Req
    stage: Stage
    work: StageWork
    fracs: list[float]  # the share of the work in each output chunk
    waiting_on: int = 0  # producers (read whole) not yet done
    driver: Task | None = None  # the stream producer whose chunks this task follows
    driven: list[Task] = field(default_factory=list)
    waiters: list[Task] = field(default_factory=list)
    chunks_out: int = 0
    next_chunk: int = 0
    in_flight: bool = False
    done: bool = False
    queued_at: float = 0.0
    # ar mode
    generated: int = 0
    context: float = 0.0
    first_token: float = 0.0


@dataclass(eq=False)
class Job:
    task: Task
    work: StageWork
    ready_at: float
    chunks: int = 1  # of the task's output chunks this job makes


@dataclass(eq=False)
class Replica:
    index: int
    devices: tuple[str, ...]
    busy: bool = False
    running: list[Task] = field(default_factory=list)  # ar mode
    ready_at: float = 0.0  # a replica a plan switch added serves from then (it loads first)
    # A switch took it away: from then on it finishes what it runs and takes nothing new.
    retire_at: float = math.inf
    spec: SimStage | None = None  # its own timing and batch (a switch set another config)
    config: Any = None  # what a switch must keep for it to stay (None: its stage's own config)

    def admits(self, now: float) -> bool:
        return self.ready_at <= now < self.retire_at

    def timing(self, stage: Stage) -> SimStage:
        """What times its runs and bounds its batch: its own config, else its stage's."""
        return self.spec or stage.spec


@dataclass(eq=False)
class Stage:
    spec: SimStage
    replicas: list[Replica]
    queue: deque = field(default_factory=deque)  # Job (batch) or Task (ar)
    fill_token: int | None = None
    fill_ready: bool = False
    busy_s: float = 0.0
    waits: float = 0.0
    jobs: int = 0
    batches: int = 0
    batched: int = 0
    swaps: int = 0  # runs that first loaded its weights (a swapped stage)
    text: bool = False
    audio: bool = False
    outputs: bool = False


@dataclass(eq=False)
class Run:
    stage: Stage
    replica: Replica
    remaining: float
    on_done: Callable[[], None]
    started: float
    since: float
    rate: float = 1.0
    version: int = 0
    requests: tuple[int, ...] = ()  # whose work it is (a timeline colours by request)
    what: str = "batch"  # batch | prefill | decode
