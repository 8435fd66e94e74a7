"""RayBackend: runs a plan on a Ray cluster, one actor per stage instance (plus one per
further rank of a tensor-parallel instance), in placement groups shaped by the plan's
devices (see ray_cluster.py).

The driver keeps the request dataflow — the same Engine as LocalBackend: routes, loops,
timeouts, cancellation, exactly-once endings — and hands each stage's work items to the
least loaded live instance of that stage. Values cross to the actors in Ray calls (large
ones as object references, see ray_values.py); stream edges cross with a bounded window
at every hop (ray_channel.py). It presents LocalBackend's interface: submit, run, handles
with result/events/cancel, stats, stage_timings, close.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from omnigraph.runtime.deadlines import Deadlines
from omnigraph.runtime.devices import planned_contract
from omnigraph.runtime.engine import Engine, Request
from omnigraph.runtime.executor import WorkItem
from omnigraph.runtime.local import Admission, LoadHook, RequestHandle, StageLoadError, StepTiming
from omnigraph.runtime.watchdog import DEFAULT_STEP_TIMEOUT_S
from omnigraph.runtime.plan import LoopNode, PlanVariant, RouteNode, RuntimePlan, StageNode
from omnigraph.runtime.ray_cluster import (
    Placement,
    connect,
    device_resource,
    disconnect,
    place,
    require_ray,
)
from omnigraph.runtime.ray_instance import RayInstance, RemoteClasses
from omnigraph.runtime.replan import match_instances
from omnigraph.runtime.ray_values import resolve

LOAD_TIMEOUT_S = 600.0
INSPECT_TIMEOUT_S = 10.0
_classes: RemoteClasses | None = None


class RayRequestHandle(RequestHandle):
    """A request on the Ray backend; outputs left in the object store are fetched here."""

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        return {k: resolve(v) for k, v in super().result(timeout).items()}

    def events(self, poll: float = 0.05) -> Iterator[tuple[str, str, Any]]:
        for kind, name, value in super().events(poll):
            if kind == "output":
                value = resolve(value)
            elif kind == "done":
                value = {k: resolve(v) for k, v in value.items()}
            yield kind, name, value


class RayBackend(Admission):
    """Executes a RuntimePlan on a Ray cluster (`address`: "auto", "HOST:PORT", or None to
    join the cluster this process is in, else start a local one)."""

    HANDLE = RayRequestHandle

    def __init__(self, plan: RuntimePlan, *, address: str | None = None, device_resource_name: str | None = None,
                 max_inflight: int = 256, on_load: LoadHook | None = None,
                 load_timeout: float = LOAD_TIMEOUT_S, step_timeout: float | None = DEFAULT_STEP_TIMEOUT_S) -> None:
        self.plan = plan
        self.step_timeout = step_timeout
        self.resource = device_resource(plan, device_resource_name)
        connect(address, plan, self.resource)
        self.placement: Placement | None = None
        self.instances: dict[str, list[RayInstance]] = {}
        self.variant = plan.family[0].name if plan.family else None  # the family's plan running (replan.py)
        self._closed = False
        try:
            self.placement = place(plan, self.resource)
            self._launch(on_load, load_timeout)
        except BaseException:
            self._teardown()
            raise
        self.engine = Engine(plan, self._enqueue, self._waker)
        self.max_inflight = max_inflight
        self._slots = threading.BoundedSemaphore(max_inflight)
        self.engine.on_end.append(self._ended)
        self.deadlines = Deadlines(self.engine)
        for instances in self.instances.values():
            for inst in instances:
                inst.serve()

    # -- startup -------------------------------------------------------------------------
    def _launch(self, on_load: LoadHook | None, timeout: float) -> None:
        """Start every stage's actors at once, then wait for each stage in plan order."""
        ray = require_ray()
        assert self.placement is not None
        classes = _remote_classes()
        reads = _driver_reads(self.plan)
        threads = _torch_threads()
        started: list[tuple[StageNode, list[Any]]] = []
        for node in self.plan.stages():
            if on_load:
                on_load(node.name, "start")
            self.instances[node.name] = [
                RayInstance(node, i, self.placement, classes, list(self.plan.module_paths), reads, threads,
                            step_timeout=self.step_timeout)
                for i in range(len(node.instances))]
            try:
                started.append((node, [ref for inst in self.instances[node.name] for ref in inst.launch()]))
            except Exception as exc:
                raise StageLoadError(node.name, node.model, _cause(exc)) from exc
        for node, refs in started:
            try:
                ray.get(refs, timeout=timeout)
            except ray.exceptions.GetTimeoutError:
                raise StageLoadError(node.name, node.model, TimeoutError(f"not loaded after {timeout:.0f}s")) from None
            except ray.exceptions.RayError as exc:
                raise StageLoadError(node.name, node.model, _cause(exc)) from exc
            if on_load:
                on_load(node.name, "done")

    # -- plan switches (replan.py) -------------------------------------------------------
    def switch_variant(self, variant: PlanVariant, drain_timeout: float = LOAD_TIMEOUT_S) -> int:
        """Run `variant`'s instances: new actors load and serve first, then the instances it
        has no place for take no new work, finish what they hold and stop. Returns 0: Ray
        instances do not hand running requests over (they finish where they are)."""
        import ray
        import time

        assert self.placement is not None
        for stage, wanted in variant.instances.items():
            node = next(n for n in self.plan.stages() if n.name == stage)
            current = list(self.instances[stage])
            keep, add = match_instances([i for i in current if i.state != "dead"], wanted)
            fresh = [RayInstance(node.model_copy(update={"instances": [i]}), 0, self.placement, _remote_classes(),
                                 list(self.plan.module_paths), _driver_reads(self.plan), _torch_threads(),
                                 step_timeout=self.step_timeout) for i in add]
            try:
                ray.get([ref for inst in fresh for ref in inst.launch()], timeout=LOAD_TIMEOUT_S)
            except BaseException:
                for inst in fresh:
                    inst.kill()
                raise
            for inst in fresh:
                inst.serve()
            leaving = [inst for inst in current if inst not in keep]
            self.instances[stage] = keep + fresh  # new work goes to these from now on
            deadline = time.monotonic() + drain_timeout
            while any(inst.load for inst in leaving) and time.monotonic() < deadline:
                time.sleep(0.02)
            for inst in leaving:
                inst.close(timeout=5)
            node.instances = [inst.instance for inst in self.instances[stage]]
        self.variant = variant.name
        return 0

    # -- requests ------------------------------------------------------------------------
    def _enqueue(self, node: StageNode, item: WorkItem) -> None:
        instances = self.instances[node.name]
        live = [i for i in instances if i.state == "up"] or [i for i in instances if i.state != "dead"] or instances
        min(live, key=lambda i: i.load).submit(item)

    def _waker(self, node: StageNode) -> Callable[[], None]:
        """A stream this stage reads got a chunk: its instances' links forward it."""

        def wake() -> None:  # the stage's instances at the time (a plan switch replaces them)
            for inst in self.instances[node.name]:
                inst.wake.set()

        return wake

    def _ended(self, request: Request) -> None:
        self._slots.release()
        for instances in self.instances.values():
            for inst in instances:
                inst.forget(request.id)

    # -- inspection ----------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        """Seconds each stage's actors spent computing (all its instances)."""
        return {name: sum(inst.stats(INSPECT_TIMEOUT_S)[0] for inst in insts)
                for name, insts in self.instances.items()}

    def contract(self) -> dict[str, list[dict[str, Any]]]:
        """Per stage, what each instance's actor was started on and in (from the plan: the
        actors hold the executors)."""
        return {name: [planned_contract(inst.node, inst.instance) for inst in insts]
                for name, insts in self.instances.items()}

    def stage_timings(self) -> dict[str, list[StepTiming]]:
        """Each stage's recorded steps, all its instances (oldest first within each)."""
        return {name: [t for inst in insts for t in inst.stats(INSPECT_TIMEOUT_S)[1]]
                for name, insts in self.instances.items()}

    def clear_stage_timings(self) -> None:
        for insts in self.instances.values():
            for inst in insts:
                inst.clear_timings()

    # -- shutdown ------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.deadlines.close()
        self._teardown()

    def _teardown(self) -> None:
        for instances in self.instances.values():
            for inst in instances:
                inst.close(timeout=5)
        if self.placement is not None:
            self.placement.remove()
        disconnect()



def _torch_threads() -> int:
    """Torch threads per actor: OMNIGRAPH_TORCH_THREADS, else what this process uses."""
    value = os.environ.get("OMNIGRAPH_TORCH_THREADS")
    if value:
        return max(1, int(value))
    import torch

    return torch.get_num_threads()


def _remote_classes() -> RemoteClasses:
    global _classes
    if _classes is None:
        ray = require_ray()
        from omnigraph.runtime.ray_actor import RankActor, StageActor

        _classes = RemoteClasses(ray.remote(StageActor), ray.remote(RankActor))
    return _classes


def _driver_reads(plan: RuntimePlan) -> frozenset[str]:
    """Stage outputs the driver itself reads (route keys, loop conditions): fetched whole."""
    reads: set[str] = set()

    def walk(nodes: list[Any]) -> None:
        for node in nodes:
            if isinstance(node, RouteNode):
                reads.update(b.source for b in node.inputs[1:])  # data, key: the engine reads the key
            elif isinstance(node, LoopNode):
                reads.add(node.until)
                walk(node.body)

    walk(plan.nodes)
    return frozenset(reads)


def _cause(exc: BaseException) -> BaseException:
    """The stage's own error inside Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc
