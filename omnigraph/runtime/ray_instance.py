"""One stage instance on Ray, seen from the driver: its actors (rank 0 and, for a
tensor-parallel instance, one per further rank), the work items under way there, and a
link thread that polls rank 0, relays stream chunks both ways and hands results to the
engine.

Every item ends exactly once. When an actor dies (or a TP rank does), the instance is
rebuilt in its bundles: items that had shown nothing yet (no output, no chunk) go again on
the new actors, streamed inputs replayed from the start; the others fail with an error
naming the stage. Results of a dead actor that arrive late carry keys nobody waits for
any more and are dropped.
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omnigraph.runtime.channel import StreamReader
from omnigraph.runtime.executor import WorkItem
from omnigraph.runtime.watchdog import DEFAULT_STEP_TIMEOUT_S
from omnigraph.runtime.plan import StageNode
from omnigraph.runtime.ray_channel import InputForwarder, OutputRelay
from omnigraph.runtime.devices import DEVICE_MAP_ENV
from omnigraph.runtime.ray_cluster import Placement, is_gpu_device
from omnigraph.runtime.tp.spmd import rank_cores
from omnigraph.runtime.ray_values import resolve
from omnigraph.runtime.tp.mirror import ItemSpec, StreamSlot

log = logging.getLogger(__name__)

POLL_WAIT_S = 0.25  # rank 0 answers a poll at once when it has news, else after this
BACKLOG_TICK_S = 0.005  # how often chunks waiting for room in a full channel are retried
MAX_ATTEMPTS = 3  # an item goes to at most this many incarnations of an instance
MAX_REBUILDS = 5  # after this many, an instance whose actors keep dying stays down
REBUILD_TIMEOUT_S = 600.0  # new actors load the model again
_keys = itertools.count(1)


class InstanceLost(RuntimeError):
    """The instance's actors died under a request that could not be retried."""


@dataclass
class Entry:
    """A work item under way on this instance."""

    item: WorkItem
    spec: ItemSpec
    forwarders: dict[int, InputForwarder]
    relays: dict[str, OutputRelay]
    key: int = field(default_factory=lambda: next(_keys))
    attempts: int = 1
    observed: bool = False  # something of it reached the engine: it cannot be run again
    finishing: bool = False


@dataclass
class RemoteClasses:
    stage: Any  # ray.remote(StageActor)
    rank: Any  # ray.remote(RankActor)


class RayInstance:
    def __init__(self, node: StageNode, index: int, placement: Placement, classes: RemoteClasses,
                 module_paths: list[str], must_resolve: frozenset[str], threads: int, seed: int = 0,
                 step_timeout: float | None = DEFAULT_STEP_TIMEOUT_S) -> None:
        self.node, self.index = node, index
        self.step_timeout = step_timeout
        self.instance = node.instances[index]
        self.placement, self.classes = placement, classes
        self.module_paths, self.must_resolve, self.seed = module_paths, must_resolve, seed
        self.threads = threads
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.entries: dict[int, Entry] = {}
        self.held: list[Entry] = []  # waiting for the instance to come back
        self.state = "starting"  # starting | up | down | dead
        self.rebuilds = 0
        self.retried = 0  # items sent again to a rebuilt instance
        self.leader: Any = None
        self.followers: list[Any] = []
        self.closing = False
        self._poll: Any = None  # the poll under way (an ObjectRef) and its future
        self._polled: Any = None
        self._thread = threading.Thread(target=self._loop, name=f"omnigraph-ray-{node.name}-{index}", daemon=True)

    # -- actors ------------------------------------------------------------------------
    def launch(self) -> list[Any]:
        """Create the actors; returns refs that complete when every rank has loaded."""
        import ray

        devices = [self.instance.devices[r % len(self.instance.devices)] for r in range(self.instance.ranks)]
        cores = [rank_cores(self.instance, r) for r in range(self.instance.ranks)]
        threads = [len(c) if c else (self.threads if r == 0 else max(1, self.threads // len(devices)))
                   for r, c in enumerate(cores)]
        node_json = self.node.model_dump_json()
        self.leader = self.classes.stage.options(**self.placement.options(devices[0]), max_concurrency=16,
                                                 max_restarts=0, runtime_env=_actor_env()).remote(
            node_json, self.index, _torch_device(devices[0]), self.seed, self.module_paths, threads[0],
            self.step_timeout, cores[0])
        self.followers = []
        if self.instance.ranks == 1:
            return [self.leader.start.remote([])]
        rendezvous = ray.get(self.leader.rendezvous.remote())
        self.followers = [
            self.classes.rank.options(**self.placement.options(devices[r]), max_restarts=0,
                                      runtime_env=_actor_env()).remote(
                node_json, self.index, r, rendezvous, _torch_device(devices[r]), self.seed, self.module_paths,
                threads[r], cores[r])
            for r in range(1, len(devices))]
        return [f.start.remote() for f in self.followers] + [self.leader.start.remote(self.followers)]

    def serve(self) -> None:
        """The actors have loaded: start the link."""
        self.state = "up"
        self._thread.start()

    def kill(self) -> None:
        import ray

        for actor in [self.leader, *self.followers]:
            if actor is not None:
                try:
                    ray.kill(actor)
                except Exception:  # already gone
                    pass

    # -- work --------------------------------------------------------------------------
    @property
    def load(self) -> int:
        return len(self.entries) + len(self.held)

    def submit(self, item: WorkItem) -> None:
        inputs: dict[str, Any] = {}
        forwarders: dict[int, InputForwarder] = {}

        def slot(value: Any) -> Any:
            if isinstance(value, StreamReader):
                forwarders[len(forwarders)] = InputForwarder(value, self.node.batching.queue_capacity)
                return StreamSlot(len(forwarders) - 1)
            return value

        for port, value in item.inputs.items():
            inputs[port] = [slot(v) for v in value] if isinstance(value, list) else slot(value)
        spec = ItemSpec(item.request_id, item.stage, inputs, item.wanted, dict(item.stream_modality),
                        dict(item.settings))
        entry = Entry(item, spec, forwarders, {p: OutputRelay(ch) for p, ch in item.streams.items()})
        with self.lock:
            if self.state == "dead":
                dead = True
            else:
                dead = False
                self._admit(entry)
        if dead:
            item.fail(InstanceLost(f"instance {self.index} is down for good"))
        self.wake.set()

    def _admit(self, entry: Entry) -> None:
        """Under the lock: send it to rank 0 now, or hold it until the instance is back."""
        if self.state != "up":
            self.held.append(entry)
            return
        self.entries[entry.key] = entry
        self.leader.submit.remote(entry.key, entry.spec)

    def forget(self, request_id: int) -> None:
        """The request ended: drop its work here."""
        with self.lock:
            gone = [k for k, e in self.entries.items() if e.item.request_id == request_id]
            for key in gone:
                del self.entries[key]
            self.held = [e for e in self.held if e.item.request_id != request_id]
            if gone and self.state == "up":
                self.leader.cancel.remote(gone)

    # -- the link ----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self.closing:
            backlogged = False
            if self.state == "up" and self._poll is None:
                self._poll = self.leader.poll.remote(POLL_WAIT_S)
                self._polled = self._poll.future()
                self._polled.add_done_callback(lambda _: self.wake.set())
            backlogged = self._pump()
            # Woken by a poll's answer, new work, or a chunk on a stream it forwards.
            self.wake.wait(BACKLOG_TICK_S if backlogged else 1.0)
            self.wake.clear()
            if self._poll is not None and self._polled.done():
                self._answer()

    def _answer(self) -> None:
        import ray

        ref, self._poll = self._poll, None
        try:
            events, consumed, broken = ray.get(ref, timeout=0)
        except ray.exceptions.RayError as exc:
            self._lost(f"instance {self.index} lost its actor ({type(exc).__name__})")
            return
        self._handle(events, consumed)
        if broken is not None:
            self._lost(f"instance {self.index} is broken: {broken}")

    def _handle(self, events: list[tuple], consumed: list[tuple[int, int, int]]) -> None:
        calls: list[Callable[[], None]] = []
        with self.lock:
            for event in events:
                kind, key = event[0], event[1]
                entry = self.entries.get(key)
                if entry is None:
                    continue  # ended meanwhile (cancelled, timed out), or from a dead incarnation
                if kind == "emit":
                    entry.observed = True
                    calls.append(lambda e=entry, p=event[2], v=event[3]: self._emit(e, p, v))
                elif kind == "chunks":
                    entry.observed = True
                    entry.relays[event[2]].offer(event[3])
                elif kind == "finish":
                    entry.finishing = True
                elif kind == "fail":
                    del self.entries[key]
                    calls.append(lambda e=entry, x=event[2]: e.item.fail(x))
            for key, slot, n in consumed:
                entry = self.entries.get(key)
                if entry is not None and slot in entry.forwarders:
                    fw = entry.forwarders[slot]
                    fw.acked = max(fw.acked, n)
        for call in calls:  # into the engine, outside our lock
            _guarded(call)

    def _emit(self, entry: Entry, port: str, value: Any) -> None:
        if f"{self.node.name}.{port}" in self.must_resolve:
            value = resolve(value)
        entry.item.emit(port, value)

    def _pump(self) -> bool:
        """Relay chunks both ways and finish the items whose chunks are all delivered;
        True while chunks wait for room in a full channel (a reader reading does not wake
        us, so we look again soon)."""
        with self.lock:
            entries = list(self.entries.values())
        acks, feeds, finished, backlogged = [], [], [], False
        for entry in entries:
            for port, relay in entry.relays.items():
                if relay.flush():
                    acks.append((entry.key, port, relay.delivered))
                backlogged = backlogged or not relay.drained
            for slot, fw in entry.forwarders.items():
                feed = fw.feed()
                if feed is not None:
                    feeds.append((entry.key, slot, *feed))
            if entry.finishing and all(r.drained for r in entry.relays.values()):
                finished.append(entry)
        if self.state == "up":  # else only finished items drain, needing no actor
            if acks:
                self.leader.ack.remote(acks)
            for feed in feeds:
                self.leader.feed.remote(*feed)
        for entry in finished:
            with self.lock:
                self.entries.pop(entry.key, None)
            _guarded(entry.item.finish)
        return backlogged

    # -- failures ----------------------------------------------------------------------
    def _lost(self, reason: str) -> None:
        """The actors (or one TP rank) died: retry what can be, fail the rest, rebuild."""
        with self.lock:
            if self.state != "up":
                return
            self.state = "down"
            # Items that finished with chunks still on their way into a full channel are
            # done with the actor: they stay and drain. Every other one goes or fails.
            entries = [e for e in self.entries.values() if not e.finishing]
            self.entries = {k: e for k, e in self.entries.items() if e.finishing}
            self._poll = None
        failed = []
        for entry in entries:
            if entry.item.dead:
                continue
            if entry.observed or entry.attempts >= MAX_ATTEMPTS:
                failed.append(entry)
                continue
            entry.attempts += 1
            self.retried += 1
            entry.key = next(_keys)
            for fw in entry.forwarders.values():
                fw.rewind()
            with self.lock:
                self.held.append(entry)
        log.warning("stage '%s': %s; %d request(s) retried, %d failed", self.node.name, reason,
                    len(entries) - len(failed), len(failed))
        for entry in failed:
            _guarded(lambda e=entry: e.item.fail(InstanceLost(f"{reason} while working on this request")))
        self.kill()
        threading.Thread(target=self._rebuild, args=(reason,), daemon=True,
                         name=f"omnigraph-ray-rebuild-{self.node.name}").start()

    def _rebuild(self, reason: str) -> None:
        import ray

        self.rebuilds += 1
        error: str | None = None
        if self.rebuilds > MAX_REBUILDS:
            error = f"{reason}; not restarted again after {MAX_REBUILDS} restarts"
        else:
            try:
                ray.get(self.launch(), timeout=REBUILD_TIMEOUT_S)
            except Exception as exc:
                error = f"{reason}; restarting it failed: {type(exc).__name__}: {exc}"
                self.kill()
        with self.lock:
            held, self.held = self.held, []
            self.state = "dead" if error else "up"
            if not error:
                for entry in held:
                    if not entry.item.dead:
                        self._admit(entry)
        if error:
            for entry in held:
                _guarded(lambda e=entry: e.item.fail(InstanceLost(error)))
        self.wake.set()

    # -- inspection and shutdown -------------------------------------------------------
    def stats(self, timeout: float) -> tuple[float, list[Any]]:
        import ray

        if self.state != "up":
            return 0.0, []
        try:
            return ray.get(self.leader.stats.remote(), timeout=timeout)
        except Exception:  # a dying actor has no stats to give
            return 0.0, []

    def clear_timings(self) -> None:
        if self.state == "up":
            self.leader.clear_timings.remote()

    def close(self, timeout: float) -> None:
        import ray

        self.closing = True
        self.wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self.state == "up":
            try:
                ray.get(self.leader.stop.remote(), timeout=timeout)
            except Exception:  # it is being killed anyway
                pass
        self.kill()



def _actor_env() -> dict[str, Any]:
    """Actor processes with OpenMP threads that sleep when idle: several actors share a
    node's cores, and spinning threads of one would starve the others (on a 2-core
    machine, 20x slower); the thread count stays LocalBackend's, so outputs stay equal."""
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    if os.environ.get(DEVICE_MAP_ENV):  # the device-mapping seam reaches the actors too
        env[DEVICE_MAP_ENV] = os.environ[DEVICE_MAP_ENV]
    return {"env_vars": env}


def _torch_device(device: str) -> str:
    """Inside an actor Ray shows only its own GPU, as cuda:0."""
    return "cuda:0" if is_gpu_device(device) else "cpu"


def _guarded(call: Callable[[], None]) -> None:
    """Calls into the engine must not end the link thread."""
    try:
        call()
    except Exception:  # pragma: no cover - an engine bug; the request's own timeout still ends it
        log.exception("omnigraph: handing a result to the engine failed")
