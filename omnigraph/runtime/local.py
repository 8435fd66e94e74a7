"""LocalBackend: runs a plan on this machine, one worker thread per stage instance.

Workers admit work items from an inbox, drop items whose request already ended,
and step their executor. Anything the stage raises fails the items of that step (naming
the stage) and the worker goes on serving; a step that overruns the step timeout fails its
items too (watchdog.py). Timeouts and cancellation end a request
wherever its work is; in-flight work for it is dropped at the next step.
"""
from __future__ import annotations

import contextlib
import sys
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from omnigraph.runtime.deadlines import Deadlines
from omnigraph.runtime.devices import placed, torch_device, uses_torch
from omnigraph.runtime.engine import Engine, QueueFull, Request, RequestFailed
from omnigraph.runtime.executor import ExecContext, Executor, WorkItem
from omnigraph.runtime.migration import Migration
from omnigraph.runtime.plan import Instance, RuntimePlan, StageNode
from omnigraph.runtime.stage_loader import load_executor
from omnigraph.runtime.swap import park, swap_slots
from omnigraph.runtime.watchdog import DEFAULT_STEP_TIMEOUT_S, StepWatchdog

LoadHook = Callable[[str, str], None]  # (stage, event: "start" | "done")


class StageLoadError(Exception):
    """A stage's model could not be loaded; names the stage and the model reference."""

    def __init__(self, stage: str, model: str | None, cause: BaseException) -> None:
        what = f" model '{model}'" if model else ""
        super().__init__(f"stage '{stage}': cannot load{what}: {cause}")
        self.stage = stage
        self.cause = cause


@dataclass(frozen=True)
class StepTiming:
    """One executor step that moved work: how many items it ran, how many of those were
    new since the previous step (an AR stage prefills these), when it started
    (time.monotonic()) and how long it took."""

    batch: int
    new: int
    seconds: float
    started: float = 0.0
    requests: tuple[int, ...] = ()  # whose items it ran (a trace colours by request)


_TIMING_RECORDS = 100_000  # per stage: a long-running server keeps the latest ones


class _Worker(threading.Thread):
    def __init__(self, node: StageNode, executor: Executor, index: int = 0, instance: Instance | None = None) -> None:
        super().__init__(name=f"omnigraph-{node.name}" + (f"-{index}" if index else ""), daemon=True)
        self.node = node
        self.instance = instance  # the plan's instance it runs (a plan switch keeps the ones it still wants)
        self.executor = executor
        self.inbox: queue.SimpleQueue[WorkItem] = queue.SimpleQueue()
        self.wake = threading.Event()
        self.active: list[WorkItem] = []
        self.stopping = False
        self.busy_seconds = 0.0
        self.timings: deque[StepTiming] = deque(maxlen=_TIMING_RECORDS)
        self.timings_lock = threading.Lock()  # read and cleared from other threads
        self._stepped: list[WorkItem] = []  # the items of the last step, held so their ids stay unique
        self._step_started: float | None = None  # for the watchdog
        self._last_start = 0.0
        self._stepping: list[WorkItem] = []
        self.stuck: BaseException | None = None  # set by the watchdog while a step overruns
        self.draining = False  # no new items come here (LocalBackend.drain)
        self.slot: Any = None  # its device's SwapSlot when its stage swaps weights (swap.py)
        self._control: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()  # run between steps

    def between_steps(self, action: Callable[[], None]) -> None:
        """Run `action` on this worker's thread before its next step (it owns the executor)."""
        self._control.put(action)
        self.wake.set()

    def release(self, item: WorkItem) -> bool:
        """On this worker's thread: hand `item` back (its executor let go of it, or never
        saw it) so that it can go to another instance."""
        if item in self.active:
            if not self.executor.export(item) and id(item) in {id(i) for i in self._stepped}:
                return False
            self.active.remove(item)
            return True
        return False

    def _run_control(self) -> None:
        while True:
            try:
                action = self._control.get_nowait()
            except queue.Empty:
                return
            action()

    def submit(self, item: WorkItem) -> None:
        stuck = self.stuck
        if stuck is not None:  # do not queue behind a step that may never return
            item.fail(stuck)
            return
        self.inbox.put(item)
        self.wake.set()

    def load(self) -> int:
        """Items this worker holds or has waiting: where a stage's next item goes."""
        return len(self.active) + self.inbox.qsize()

    def step_age(self) -> float | None:
        started = self._step_started
        return None if started is None else time.monotonic() - started

    def fail_step(self, error: BaseException) -> None:
        self.stuck = error
        for item in list(self._stepping):
            item.fail(error)

    def _admit(self, limit: int) -> None:
        while len(self.active) < limit:
            try:
                self.active.append(self.inbox.get_nowait())
            except queue.Empty:
                return

    def run(self) -> None:
        batching = self.node.batching
        limit = batching.max_batch if self.executor.continuous else 4 * batching.max_batch
        while not self.stopping:
            self._run_control()
            self._admit(limit)
            if not self.executor.continuous and 0 < len(self.active) < batching.max_batch:
                # Give a batch a moment to fill: requests arriving together run together.
                deadline = time.monotonic() + batching.max_wait_ms / 1000
                while len(self.active) < batching.max_batch and time.monotonic() < deadline:
                    self.wake.wait(max(0.0, deadline - time.monotonic()))
                    self.wake.clear()
                    self._admit(limit)
            self.active = [i for i in self.active if not i.dead]
            if not self.active:
                self.wake.wait(0.1)
                self.wake.clear()
                continue
            self.wake.clear()
            seen = {id(i) for i in self._stepped}
            new = sum(id(i) not in seen for i in self.active)
            batch = len(self.active) if self.executor.continuous else min(len(self.active), batching.max_batch)
            ids = tuple(i.request_id for i in self.active[:batch])
            with self.slot.hold(self.executor) if self.slot is not None else contextlib.nullcontext():
                progressed = self._step()
            elapsed = time.monotonic() - self._last_start
            self.busy_seconds += elapsed
            if progressed:
                with self.timings_lock:
                    self.timings.append(StepTiming(batch, min(new, batch), elapsed, self._last_start, ids))
            self._stepped = self.active
            self.active = [i for i in self.active if not i.dead]
            if not progressed:
                self.wake.wait(0.02)  # waiting on streams; a chunk or a new item wakes us

    def _step(self) -> bool:
        """One executor step. Whatever the stage's code raises — SystemExit, KeyboardInterrupt
        and GeneratorExit included — fails the items of this step, never the worker."""
        self._stepping = list(self.active)
        self._last_start = self._step_started = time.monotonic()
        try:
            return self.executor.step(self.active)
        except BaseException as exc:  # noqa: BLE001 - the stage failed these requests, not the process
            for item in self.active:
                item.fail(exc)
            return True
        finally:
            self._step_started = None
            self._stepping = []
            self.stuck = None


@dataclass
class RequestHandle:
    request: Request
    backend: LocalBackend

    @property
    def id(self) -> int:
        return self.request.id

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The outputs; raises RequestFailed naming the stage if the request failed."""
        return self.request.future.result(timeout)

    def cancel(self) -> None:
        self.backend.engine.fail(self.request, RequestFailed("cancelled", reason="cancelled"))

    def events(self, poll: float = 0.05) -> Iterator[tuple[str, str, Any]]:
        """("chunk", output, piece) as stream outputs grow, then ("output", name, value)
        for each output, then ("done", "", outputs); raises if the request fails."""
        from omnigraph.runtime.async_requests import ready_events

        req = self.request
        readers: dict[str, Any] = {}
        while True:
            events, done = ready_events(req, readers)
            for event in events:
                if event[0] == "error":
                    raise event[2]
                yield event
            if done:
                return
            with req.lock:
                if not req.done:
                    req.changed.wait(poll)


class Admission:
    """What both backends do with a new request: bound how many are in flight, arm its
    deadline, start it on the engine, and hand back a handle of the backend's kind."""

    HANDLE: type[RequestHandle] = RequestHandle
    engine: Engine
    deadlines: Deadlines
    _slots: threading.BoundedSemaphore
    _closed: bool
    max_inflight: int

    def submit(self, inputs: dict[str, Any], *, timeout: float | None = None,
               settings: dict[str, dict[str, Any]] | None = None, block: bool = True) -> RequestHandle:
        """Start a request (with per-stage `settings`, already validated); blocks while
        `max_inflight` requests are already running, or with block=False raises QueueFull."""
        if self._closed:
            raise RuntimeError("backend is closed")
        if not self._slots.acquire(blocking=block):
            raise QueueFull(f"{self.max_inflight} requests are already in flight")
        request = Request(inputs, timeout, settings)
        self.deadlines.add(request)
        try:
            self.engine.start(request)
        except Exception as exc:  # a bug in the engine must still end the request
            self.engine.fail(request, exc)
        return self.HANDLE(request, self)  # type: ignore[arg-type]  # either backend

    def run(self, inputs: dict[str, Any], *, timeout: float | None = None,
            settings: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        return self.submit(inputs, timeout=timeout, settings=settings).result()

    def inflight(self) -> int:
        """Requests admitted and not yet ended."""
        return self.max_inflight - self._slots._value  # a Semaphore's count: CPython has no public getter

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):  # noqa: ANN204 - the backend itself
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalBackend(Migration, Admission):
    """Executes a RuntimePlan in this process."""

    def __init__(self, plan: RuntimePlan, *, max_inflight: int = 256, on_load: LoadHook | None = None,
                 step_timeout: float | None = DEFAULT_STEP_TIMEOUT_S) -> None:
        self.plan = plan
        self.instances: dict[str, list[_Worker]] = {}  # per stage, one worker per instance
        for path in plan.module_paths:
            if path not in sys.path:
                sys.path.append(path)  # after everything installed: a spec cannot shadow a package
        self._threads = set_torch_threads(plan)
        for node in plan.stages():
            if on_load:
                on_load(node.name, "start")
            for index, instance in enumerate(node.instances):
                try:
                    executor = load_executor(node, instance_context(instance), plan.module_paths, index)
                except Exception as exc:  # a missing package or file, a bad config: name the stage
                    for loaded in self.all_workers():
                        loaded.executor.close()  # e.g. the rank processes of a TP stage loaded before
                    restore_torch_threads(self._threads)
                    raise StageLoadError(node.name, node.model, exc) from exc
                park(executor)
                self.instances.setdefault(node.name, []).append(_Worker(node, executor, index, instance))
            if on_load:
                on_load(node.name, "done")
        self.workers = {name: found[0] for name, found in self.instances.items()}  # each stage's first
        self.variant = plan.family[0].name if plan.family else None  # the family's plan running (replan.py)
        self.engine = Engine(plan, self._enqueue, self._waker)
        self.max_inflight = max_inflight
        self._slots = threading.BoundedSemaphore(max_inflight)
        self.engine.on_end.append(lambda r: self._slots.release())
        self._closed = False
        swap_slots(self.all_workers())
        for worker in self.all_workers():
            worker.start()
        self.deadlines = Deadlines(self.engine)
        self.watchdog = StepWatchdog(self.all_workers, step_timeout)

    def all_workers(self) -> list[_Worker]:
        return [w for found in self.instances.values() for w in found]

    def _enqueue(self, node: StageNode, item: WorkItem) -> None:
        """To the stage's least loaded instance (a request's item stays where it went, unless
        it migrates); an instance being drained takes nothing new."""
        workers = [w for w in self.instances[node.name] if not w.draining] or self.instances[node.name]
        worker = workers[0] if len(workers) == 1 else min(workers, key=lambda w: w.load())
        worker.submit(item)

    def _waker(self, node: StageNode) -> Callable[[], None]:
        def wake() -> None:  # the stage's instances at the time (a plan switch replaces them)
            for w in self.instances[node.name]:
                w.wake.set()

        return wake

    def stats(self) -> dict[str, float]:
        """Seconds each stage's workers spent computing (all its instances)."""
        return {name: sum(w.busy_seconds for w in found) for name, found in self.instances.items()}

    def contract(self) -> dict[str, list[dict[str, Any]]]:
        """Per stage, what each instance runs on and in: the plan's contract as this process
        keeps it (`run --stats` prints it beside `plan --json`'s)."""
        return {name: [w.executor.placement() for w in found] for name, found in self.instances.items()}

    def stage_load(self) -> dict[str, int]:
        """Items each stage holds or has waiting, over its instances."""
        return {name: sum(w.load() for w in found) for name, found in self.instances.items()}

    def stage_timings(self) -> dict[str, list[StepTiming]]:
        """Each stage's recorded steps (the latest ones), oldest first: for calibrating a
        simulator against this machine."""
        out: dict[str, list[StepTiming]] = {}
        for name, found in self.instances.items():
            out[name] = []
            for worker in found:
                with worker.timings_lock:
                    out[name] += list(worker.timings)
            out[name].sort(key=lambda t: t.started)
        return out

    def clear_stage_timings(self) -> None:
        for worker in self.all_workers():
            with worker.timings_lock:
                worker.timings.clear()

    def close(self) -> None:
        self._closed = True
        self.deadlines.close()
        self.watchdog.close()
        for worker in self.all_workers():
            worker.stopping = True
            worker.wake.set()
        for worker in self.all_workers():
            worker.join(timeout=5)
            worker.executor.close()
        restore_torch_threads(self._threads)


def instance_context(instance: Instance, seed: int = 0) -> ExecContext:
    """The context one instance's executor loads in: its plan device and cores."""
    planned = torch_device(instance.devices[0])
    return ExecContext(device=placed(planned), seed=seed, planned=planned, cores=instance.cores,
                       plan_devices=list(instance.devices))


def set_torch_threads(plan: RuntimePlan) -> tuple[int, int] | None:
    """torch's intra-op threads are one pool per process: the cores the plan gave the torch
    stages here, together (ONNX stages size their own sessions from their cores). Returns
    (the count before, the count set), for close() to put back; None when nothing changed."""
    cores: set[int] = set()
    for node in plan.stages():
        if uses_torch(node):
            for instance in node.instances:
                cores.update(instance.cores or ())
    if not cores:
        return None
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(len(cores))
    return before, len(cores)


def restore_torch_threads(changed: tuple[int, int] | None) -> None:
    """Put back the thread count a pipeline found, unless someone changed it since."""
    if changed is None:
        return
    import torch

    before, mine = changed
    if torch.get_num_threads() == mine:
        torch.set_num_threads(before)
