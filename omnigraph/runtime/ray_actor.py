"""The Ray actors of a stage instance: `StageActor` is rank 0, the one the driver talks
to; `RankActor` is each further rank of a tensor/expert-parallel instance.

A StageActor runs the stage's executor behind LocalBackend's own worker loop, so batching,
continuous decoding and per-request failure behave exactly as in one process. The driver
speaks a small item protocol to it (all calls return at once except `poll`):

    submit(key, spec)      a work item; streamed inputs are StreamSlots, fed by `feed`
    feed(key, slot, ...)   chunks of a streamed input, numbered (calls may arrive out of order)
    ack(acks)              output chunks the driver delivered: room to ship more
    cancel(keys)           the requests ended elsewhere: drop their work
    poll(wait)             events since the last poll, waiting up to `wait` for one:
                           ("emit", key, port, value) ("chunks", key, port, [chunk…])
                           ("finish", key) ("fail", key, error); plus what the executor read
                           of each streamed input, and whether a TP rank broke

The classes here are plain; the backend wraps them with ray.remote, so importing this
module does not import Ray.
"""
from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from omnigraph.runtime.devices import pin_process, placed, torch_device
from omnigraph.runtime.executor import ExecContext, Executor, WorkItem, executor_class
from omnigraph.runtime.local import StepTiming, _Worker
from omnigraph.runtime.watchdog import DEFAULT_STEP_TIMEOUT_S, StepWatchdog
from omnigraph.runtime.plan import StageNode
from omnigraph.runtime.ray_channel import InboundStream, OutboundStream
from omnigraph.runtime.ray_values import pack, portable, resolve
from omnigraph.runtime.tp.comm import COLLECTIVE_TIMEOUT_S, RankComm, Rendezvous
from omnigraph.runtime.tp.mirror import ItemSpec, Mirror, StepMessage, StreamSlot
from omnigraph.runtime.tp.spmd import (
    RankFailed,
    SpmdLeader,
    check_shardable,
    shard_executor,
    step,
)

_EARLY_FEEDS = 10_000  # feeds for items not submitted yet (or already gone), kept at most
_POLL_SLICE_S = 0.02  # how often a waiting poll looks at the items again


@dataclass
class _Entry:
    item: WorkItem
    streams: dict[str, OutboundStream]
    inbound: dict[int, InboundStream]
    failed: bool = False
    shown: bool = False  # an output or a chunk of it has gone to the driver
    reported: dict[int, int] = field(default_factory=dict)  # slot -> consumed count last reported


def where(device: str) -> dict[str, Any]:
    """Where this actor runs: its Ray node, its placement group, the resources it holds."""
    import ray

    context = ray.get_runtime_context()
    return {"node": context.get_node_id(), "placement_group": context.get_placement_group_id(),
            "resources": context.get_assigned_resources(), "device": device}


def _setup(paths: list[str], threads: int, cores: list[int] | None = None) -> None:
    """The worker process as LocalBackend's would be: the spec's folder importable, and
    torch on as many threads (Ray starts workers on one; the thread count decides the
    order of float sums, so outputs match the local backend's bit for bit); pinned to the
    cores the plan gave the stage, where it gave some."""
    import torch

    for path in paths:
        if path not in sys.path:
            sys.path.append(path)
    pin_process(cores)
    torch.set_num_threads(threads)


class StageActor:
    def __init__(self, node_json: str, instance: int, device: str, seed: int, module_paths: list[str],
                 threads: int, step_timeout: float | None = DEFAULT_STEP_TIMEOUT_S,
                 cores: list[int] | None = None) -> None:
        _setup(module_paths, threads, cores)
        self.cores = cores
        self.step_timeout = step_timeout
        self.watchdog: StepWatchdog | None = None
        self.node = StageNode.model_validate_json(node_json)
        self.instance = self.node.instances[instance]
        self.device, self.seed = placed(device), seed
        self.window = self.node.batching.queue_capacity
        self.cond = threading.Condition()
        self.entries: dict[int, _Entry] = {}
        self.outbox: list[tuple] = []
        self.dead: set[int] = set()
        self.early: OrderedDict[int, list[tuple]] = OrderedDict()
        self.executor: Executor | None = None
        self.worker: _Worker | None = None
        self._store: Any = None

    # -- startup ---------------------------------------------------------------------
    def rendezvous(self) -> Rendezvous:
        """Open the TP group's store (before the other ranks start) and say where it is."""
        check_shardable(self.node, self.instance)
        rendezvous, self._store = RankComm.lead(self.instance.ranks)
        self._rendezvous = rendezvous
        return rendezvous

    def start(self, followers: list[Any]) -> bool:
        """Load the stage (with `followers`, rank 0 of its TP group) and start serving."""
        ctx = ExecContext(device=self.device, seed=self.seed, planned=torch_device(self.instance.devices[0]),
                          cores=self.cores)
        if followers:
            comm = RankComm(self._rendezvous, 0, self.device, store=self._store)
            inner = executor_class(self.node.kind)(self.node, ctx)
            inner.load()
            shard_executor(inner, comm, self.instance)
            self.executor = SpmdLeader(inner, comm, RayFollowers(followers))
        else:
            self.executor = executor_class(self.node.kind)(self.node, ctx)
            self.executor.load()
        self.worker = _Worker(self.node, self.executor)
        self.worker.start()
        self.watchdog = StepWatchdog(lambda: [self.worker] if self.worker else [], self.step_timeout)
        return True

    # -- the item protocol -------------------------------------------------------------
    def submit(self, key: int, spec: ItemSpec) -> None:
        assert self.worker is not None, "submit before start"
        inbound: dict[int, InboundStream] = {}

        def swap(value: Any) -> Any:
            if isinstance(value, StreamSlot):
                ch = inbound[value.index] = InboundStream()
                return ch.reader(self.worker.wake.set)
            return resolve(value)

        inputs = {p: [swap(v) for v in value] if isinstance(value, list) else swap(value)
                  for p, value in spec.inputs.items()}
        streams = {p: OutboundStream(self.window) for p in spec.stream_modality}
        for ch in streams.values():
            ch.watch(self._wake)
        item = WorkItem(request_id=spec.request_id, stage=spec.stage, inputs=inputs, wanted=spec.wanted,
                        settings=dict(spec.settings),
                        streams=dict(streams), stream_modality=dict(spec.stream_modality),
                        _deliver=lambda port, value: self._emit(key, port, value),
                        _fail=lambda exc: self._failed(key, exc), _is_dead=lambda: key in self.dead)
        with self.cond:
            self.entries[key] = _Entry(item, streams, inbound)
            early = self.early.pop(key, [])
        for slot, seq, chunks, ended, error in early:
            inbound[slot].apply(seq, chunks, ended, error)
        self.worker.submit(item)

    def feed(self, key: int, slot: int, seq: int, chunks: list[Any], ended: bool, error: str | None) -> None:
        with self.cond:
            entry = self.entries.get(key)
            if entry is None:
                if key not in self.dead:
                    self.early.setdefault(key, []).append((slot, seq, chunks, ended, error))
                    while len(self.early) > _EARLY_FEEDS:
                        self.early.popitem(last=False)
                return
        entry.inbound[slot].apply(seq, chunks, ended, error)

    def ack(self, acks: list[tuple[int, str, int]]) -> None:
        with self.cond:
            for key, port, delivered in acks:
                entry = self.entries.get(key)
                if entry is not None and port in entry.streams:
                    entry.streams[port].ack(delivered)
            self.cond.notify_all()

    def cancel(self, keys: list[int]) -> None:
        with self.cond:
            self.dead.update(keys)
            for key in keys:
                self.entries.pop(key, None)
                self.early.pop(key, None)
        if self.worker is not None:
            self.worker.wake.set()

    def poll(self, wait: float) -> tuple[list[tuple], list[tuple[int, int, int]], str | None]:
        """(events, [(key, slot, consumed)], why the instance is broken or None)."""
        deadline = time.monotonic() + wait
        with self.cond:
            while True:
                events, consumed = self._collect()
                remaining = deadline - time.monotonic()
                if events or consumed or remaining <= 0:
                    break
                self.cond.wait(min(remaining, _POLL_SLICE_S))
        return events, consumed, getattr(self.executor, "broken", None)

    def where(self) -> dict[str, Any]:
        return where(self.device)

    def stats(self) -> tuple[float, list[StepTiming]]:
        if self.worker is None:
            return 0.0, []
        with self.worker.timings_lock:
            return self.worker.busy_seconds, list(self.worker.timings)

    def clear_timings(self) -> None:
        if self.worker is not None:
            with self.worker.timings_lock:
                self.worker.timings.clear()

    def stop(self) -> None:
        if self.watchdog is not None:
            self.watchdog.close()
        if self.worker is not None:
            self.worker.stopping = True
            self.worker.wake.set()
            self.worker.join(timeout=5)
        if self.executor is not None:
            self.executor.close()

    # -- inside ------------------------------------------------------------------------
    def _wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def _emit(self, key: int, port: str, value: Any) -> None:
        entry = self.entries.get(key)
        if entry is None or port in entry.streams:  # a stream's whole value: the driver joins its chunks
            return
        with self.cond:
            entry.shown = True
            self.outbox.append(("emit", key, port, pack(value)))
            self.cond.notify_all()

    def _failed(self, key: int, exc: BaseException) -> None:
        with self.cond:
            entry = self.entries.get(key)
            if entry is not None:
                entry.failed = True
                if isinstance(exc, RankFailed) and not entry.shown:
                    # The instance broke before this item showed anything: poll says it is
                    # broken, and the driver runs the item again on the rebuilt instance.
                    if getattr(self.executor, "broken", None) is None:
                        self.executor.broken = str(exc)  # type: ignore[union-attr]
                    return
            self.outbox.append(("fail", key, portable(exc)))
            self.cond.notify_all()

    def _collect(self) -> tuple[list[tuple], list[tuple[int, int, int]]]:
        """Under the lock: the outbox, then chunks within each stream's window, then the
        items that finished with all their chunks shipped."""
        events, self.outbox = self.outbox, []
        consumed: list[tuple[int, int, int]] = []
        for key, entry in list(self.entries.items()):
            if entry.failed:
                del self.entries[key]
                continue
            ended = True
            for port, ch in entry.streams.items():
                chunks, done = ch.take()
                if chunks:
                    entry.shown = True
                    events.append(("chunks", key, port, chunks))
                ended = ended and done
            for slot, ch in entry.inbound.items():
                n = ch.consumed()
                if entry.reported.get(slot) != n:
                    entry.reported[slot] = n
                    consumed.append((key, slot, n))
            if entry.item.done and ended:
                events.append(("finish", key))
                del self.entries[key]
        return events, consumed


class RankActor:
    """Rank 1.. of a tensor/expert-parallel instance: its shard of the model, stepping on
    the leader's messages."""

    def __init__(self, node_json: str, instance: int, rank: int, rendezvous: Rendezvous, device: str,
                 seed: int, module_paths: list[str], threads: int, cores: list[int] | None = None) -> None:
        _setup(module_paths, threads, cores)
        self.node = StageNode.model_validate_json(node_json)
        self.instance = self.node.instances[instance]
        self.rank, self.rendezvous, self.device, self.seed = rank, rendezvous, placed(device), seed
        self.cores = cores
        self.mirror = Mirror()
        self.executor: Executor | None = None

    def start(self) -> bool:
        comm = RankComm(self.rendezvous, self.rank, self.device)
        executor = executor_class(self.node.kind)(self.node, ExecContext(device=self.device, seed=self.seed,
                                                                          cores=self.cores))
        executor.load()
        shard_executor(executor, comm, self.instance)
        self.executor = executor
        return True

    def where(self) -> dict[str, Any]:
        return where(self.device)

    def step(self, message: StepMessage) -> None:
        assert self.executor is not None, "step before start"
        step(self.executor, self.mirror, message)


class RayFollowers:
    """The leader's link to its RankActors: a step message is an actor call, and the
    call's result says whether that rank is still there."""

    def __init__(self, handles: list[Any]) -> None:
        self.handles = handles
        self.refs: list[Any] = []

    def send(self, message: StepMessage) -> None:
        self.refs = [h.step.remote(message) for h in self.handles]

    def check(self) -> None:
        """A dead rank shows in the step that follows (its collective fails, `settle` names it)."""

    def settle(self) -> None:
        import ray

        world = len(self.handles) + 1
        for rank, ref in enumerate(self.refs, start=1):
            try:
                ray.get(ref, timeout=COLLECTIVE_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                raise RankFailed(f"tensor-parallel rank {rank} of {world} did not finish its step") from None
            except ray.exceptions.RayActorError as exc:
                raise RankFailed(f"tensor-parallel rank {rank} of {world} died ({type(exc).__name__})") from None
        self.refs = []

    def close(self) -> None:
        import ray

        for handle in self.handles:
            ray.kill(handle)
