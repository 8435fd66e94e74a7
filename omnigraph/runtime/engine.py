"""The dataflow engine: per-request state, readiness, routes, loops, completion.

A request's values live in scopes (the pipeline's, and one per loop iteration).
When a value arrives, the nodes that read it are checked: a stage whose inputs
are all there is dispatched to a worker; a streamed input counts as there once
its channel is open. Route cases not taken are SKIPPED, and a node reading a
SKIPPED value is skipped in turn. Every request ends exactly once.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from omnigraph.runtime.channel import StreamChannel
from omnigraph.runtime.executor import USAGE_PORT, StageFailed, WorkItem
from omnigraph.runtime.plan import Binding, LoopNode, Node, RouteNode, RuntimePlan, StageNode
from omnigraph.runtime.values import SKIPPED, input_problem, truthy

_ids = itertools.count(1)


class RequestFailed(Exception):
    """A request ended with an error; `stage` names where, when a stage caused it. `reason`
    says what kind of end it was, for callers that answer differently (a server's status):
    "input" (the request's own inputs), "timeout", "cancelled", or "stage" (a stage failed)."""

    def __init__(self, message: str, stage: str | None = None, reason: str = "stage") -> None:
        super().__init__(message)
        self.stage = stage
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # pickled across processes (Ray) with all three
        return (type(self), (str(self), self.stage, self.reason))


class QueueFull(Exception):
    """A request turned away (not started) because the pipeline has all it may hold in flight."""


@dataclass
class Scope:
    nodes: list[Node]
    parent: Scope | None = None
    loop: LoopNode | None = None
    iteration: int = 0
    values: dict[str, Any] = field(default_factory=dict)
    streams: dict[str, StreamChannel] = field(default_factory=dict)
    dispatched: set[str] = field(default_factory=set)

    def get(self, key: str) -> tuple[bool, Any]:
        scope: Scope | None = self
        while scope is not None:
            if key in scope.values:
                return True, scope.values[key]
            scope = scope.parent
        return False, None

    def channel(self, key: str) -> StreamChannel | None:
        scope: Scope | None = self
        while scope is not None:
            if key in scope.streams:
                return scope.streams[key]
            scope = scope.parent
        return None


@dataclass
class StageTiming:
    dispatched: float
    finished: float | None = None


class Request:
    def __init__(self, inputs: dict[str, Any], timeout: float | None,
                 settings: dict[str, dict[str, Any]] | None = None) -> None:
        self.id = next(_ids)
        self.inputs = inputs
        self.settings = settings or {}  # stage -> params for this request only (validated)
        self.submitted = time.monotonic()
        self.deadline = None if timeout is None else self.submitted + timeout
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.future: Future[dict[str, Any]] = Future()
        self.outputs: dict[str, Any] = {}
        self.output_streams: dict[str, StreamChannel] = {}
        self.timings: dict[str, StageTiming] = {}
        self.channels: list[StreamChannel] = []
        self.finished_at: float | None = None
        self.listeners: list[Callable[[], None]] = []  # called (under the lock) on every change
        self.usage: dict[str, dict[str, int]] = {}  # stage -> counts its executor reported

    @property
    def done(self) -> bool:
        return self.future.done()

    def notify(self) -> None:
        """Wake whoever waits on this request (call with the lock held): blocking readers on
        the condition, async readers through their listeners."""
        self.changed.notify_all()
        for listener in list(self.listeners):
            listener()


class Engine:
    def __init__(self, plan: RuntimePlan, enqueue: Callable[[StageNode, WorkItem], None],
                 waker: Callable[[StageNode], Callable[[], None]] | None = None) -> None:
        self.plan = plan
        self.enqueue = enqueue
        self.waker = waker  # wakes a stage's worker when a stream it reads gets a chunk
        self.wanted = _wanted_ports(plan)
        self.output_sources = {src: name for name, src in plan.outputs.items()}
        self.on_end: list[Callable[[Request], None]] = []

    # -- requests ----------------------------------------------------------------------
    def start(self, request: Request) -> None:
        missing = [k for k in self.plan.inputs if k not in request.inputs]
        extra = [k for k in request.inputs if k not in self.plan.inputs]
        if missing or extra:
            what = f"missing input(s) {', '.join(missing)}" if missing else f"unknown input(s) {', '.join(extra)}"
            self.fail(request, RequestFailed(reason="input", message=f"{what}; pipeline '{self.plan.pipeline}' takes "
                                             f"{', '.join(self.plan.inputs) or 'no inputs'}"))
            return
        for name, ptype in self.plan.inputs.items():
            problem = input_problem(ptype.modality, request.inputs[name])
            if problem is not None:
                self.fail(request, RequestFailed(f"input '{name}': {problem}", reason="input"))
                return
        root = Scope(self.plan.nodes)
        with request.lock:
            # All inputs land before anything starts, so routes decide before the stages
            # they make unneeded could be dispatched.
            for name, value in request.inputs.items():
                root.values[name] = value
                if name in self.output_sources:
                    request.outputs[self.output_sources[name]] = value
            self._advance(request, root)

    def fail(self, request: Request, error: BaseException) -> None:
        with request.lock:
            if request.done:
                return
            request.finished_at = time.monotonic()
            if not isinstance(error, RequestFailed):
                stage = error.stage if isinstance(error, StageFailed) else None
                error = RequestFailed(str(error), stage)
            for ch in request.channels:
                ch.close(error)
            request.future.set_exception(error)
            request.notify()
        for hook in self.on_end:
            hook(request)

    def _complete(self, request: Request) -> None:
        with request.lock:
            if request.done:
                return
            request.finished_at = time.monotonic()
            request.future.set_result(dict(request.outputs))
            request.notify()
        for hook in self.on_end:
            hook(request)

    # -- dataflow ----------------------------------------------------------------------
    def deliver(self, request: Request, scope: Scope, key: str, value: Any) -> None:
        stage, _, port = key.rpartition(".")
        if port == USAGE_PORT:
            with request.lock:
                counts = request.usage.setdefault(stage, {})
                for name, n in value.items():
                    counts[name] = counts.get(name, 0) + int(n)
            return
        with request.lock:
            if request.done:
                return
            scope.values[key] = value
            if scope.parent is None and key in self.output_sources:
                if value is not SKIPPED:
                    request.outputs[self.output_sources[key]] = value
                request.notify()
            self._advance(request, scope)

    def _open_stream(self, request: Request, scope: Scope, key: str, ch: StreamChannel) -> None:
        scope.streams[key] = ch
        request.channels.append(ch)
        if scope.parent is None and key in self.output_sources:
            request.output_streams[self.output_sources[key]] = ch
            ch.watch(lambda: self._notify(request))

    def _notify(self, request: Request) -> None:
        with request.lock:
            request.notify()

    def _advance(self, request: Request, scope: Scope) -> None:
        progressed = True
        while progressed and not request.done:
            progressed = False
            # Routes first: their decisions tell which stages this request no longer needs.
            for node in sorted(scope.nodes, key=lambda n: not isinstance(n, RouteNode)):
                if node.name in scope.dispatched:
                    continue
                state = self._readiness(scope, node)
                if state == "wait":
                    continue
                if state == "ready" and self._unneeded(scope, node, {}):
                    state = "skip"
                scope.dispatched.add(node.name)
                progressed = True
                if state == "skip":
                    self._skip(request, scope, node)
                else:
                    self._dispatch(request, scope, node)
            if scope.loop is not None:
                progressed |= self._loop_check(request, scope)
        if scope.parent is None:
            self._check_done(request, scope)

    def _doomed(self, scope: Scope, node: Node) -> bool:
        """Will be skipped: it reads a SKIPPED value, or one from a doomed node."""
        for binding in _reads(node):
            found, value = scope.get(binding.source)
            if found:
                if value is SKIPPED:
                    return True
                continue
            producer = self._producer(scope, binding.source)
            if producer is not None and producer.name not in scope.dispatched and self._doomed(scope, producer):
                return True
        return False

    def _unneeded(self, scope: Scope, node: Node, memo: dict[str, bool]) -> bool:
        """Nothing this node makes can be used by this request (every reader is doomed or
        unneeded, and no output leaves the scope): a route decided against it."""
        if node.name in memo:
            return memo[node.name]
        memo[node.name] = False
        keys = {f"{node.name}.{port}" for port in node.outputs}
        if keys & self._escaping(scope):
            return False
        readers = [n for n in scope.nodes if any(b.source in keys for b in _reads(n))]
        if not readers:
            return False  # nothing reads it here: `wanted` already decides whether it runs
        memo[node.name] = all(self._doomed(scope, r) or self._unneeded(scope, r, memo) for r in readers)
        return memo[node.name]

    def _escaping(self, scope: Scope) -> set[str]:
        """Values read from outside the scope: pipeline outputs, or a loop's until/next."""
        if scope.loop is None:
            return set(self.output_sources)
        return {scope.loop.until, *scope.loop.next.values()}

    @staticmethod
    def _producer(scope: Scope, key: str) -> Node | None:
        name = key.partition(".")[0]
        return next((n for n in scope.nodes if n.name == name), None)

    def _readiness(self, scope: Scope, node: Node) -> str:
        for binding in _reads(node):
            found, value = scope.get(binding.source)
            if found and value is SKIPPED:
                return "skip"
            if binding.stream and scope.channel(binding.source) is not None:
                continue
            if not found:
                return "wait"
        return "ready"

    def _skip(self, request: Request, scope: Scope, node: Node) -> None:
        for port in node.outputs:
            scope.values[f"{node.name}.{port}"] = SKIPPED
            if scope.parent is None and f"{node.name}.{port}" in self.output_sources:
                request.notify()

    def _dispatch(self, request: Request, scope: Scope, node: Node) -> None:
        if isinstance(node, RouteNode):
            data, key = (scope.get(b.source)[1] for b in node.inputs)
            choice = str(key).strip()
            if choice not in node.cases:
                if node.default is None:
                    self.fail(request, RequestFailed(
                        f"route '{node.name}': key {choice!r} is none of {', '.join(node.cases)}", node.name,
                        reason="input"))
                    return
                choice = node.default
            for case in node.cases:
                scope.values[f"{node.name}.{case}"] = data if case == choice else SKIPPED
            return
        if isinstance(node, LoopNode):
            self._start_iteration(request, scope, node, 0,
                                  {b.port: scope.get(b.source)[1] for b in node.carry})
            return
        self._dispatch_stage(request, scope, node)

    def _dispatch_stage(self, request: Request, scope: Scope, node: StageNode) -> None:
        inputs: dict[str, Any] = {}
        for binding in node.inputs:
            if binding.stream and scope.channel(binding.source) is not None:
                value: Any = scope.channel(binding.source).reader(self.waker(node) if self.waker else None)
            else:
                value = scope.get(binding.source)[1]
            if binding.port in inputs:  # a variadic port: several edges
                prev = inputs[binding.port]
                inputs[binding.port] = (prev if isinstance(prev, list) else [prev]) + [value]
            else:
                inputs[binding.port] = value
        streams: dict[str, StreamChannel] = {}
        for port, ptype in node.outputs.items():
            if ptype.stream:
                ch = StreamChannel(capacity=node.batching.queue_capacity)
                streams[port] = ch
                self._open_stream(request, scope, f"{node.name}.{port}", ch)
        request.timings.setdefault(node.name, StageTiming(time.monotonic()))

        def deliver(port: str, value: Any) -> None:
            self.deliver(request, scope, f"{node.name}.{port}", value)
            if all(f"{node.name}.{p}" in scope.values for p in self.wanted[node.name]):
                request.timings[node.name].finished = time.monotonic()

        item = WorkItem(
            request_id=request.id, stage=node.name, inputs=inputs, wanted=self.wanted[node.name],
            streams=streams, stream_modality={p: node.outputs[p].modality for p in streams},
            _deliver=deliver, _fail=lambda e: self.fail(request, StageFailed(node.name, e)),
            _is_dead=lambda: request.done, settings=request.settings.get(node.settings_of or node.name, {}),
        )
        if not self.wanted[node.name]:
            item.done = True  # nobody reads this stage: nothing to run
            return
        self.enqueue(node, item)

    # -- loops -------------------------------------------------------------------------
    def _start_iteration(self, request: Request, parent: Scope, loop: LoopNode, iteration: int,
                         carried: dict[str, Any]) -> None:
        child = Scope(loop.body, parent=parent, loop=loop, iteration=iteration)
        child.values.update(carried)
        self._advance(request, child)

    def _loop_check(self, request: Request, scope: Scope) -> bool:
        loop = scope.loop
        assert loop is not None
        keys = [loop.until, *loop.next.values()]
        if "__ended__" in scope.values or not all(k in scope.values for k in keys):
            return False
        scope.values["__ended__"] = True
        carried = {b.port: scope.values[b.port] for b in loop.carry}
        if truthy(scope.values[loop.until]):
            result = carried
        else:
            result = {c: scope.values[src] for c, src in loop.next.items()}
            if scope.iteration + 1 < loop.max_iters:
                self._start_iteration(request, scope.parent, loop, scope.iteration + 1, result)
                return True
        for name, value in result.items():
            self.deliver(request, scope.parent, f"{loop.name}.{name}", value)
        return True

    def _check_done(self, request: Request, root: Scope) -> None:
        if request.done:
            return
        if all(src in root.values for src in self.plan.outputs.values()):
            self._complete(request)


def _reads(node: Node) -> list[Binding]:
    """What a node needs before it can start (a loop: its carries and outside reads)."""
    if isinstance(node, LoopNode):
        inner = {f"{n.name}.{p}" for n in node.body for p in n.outputs} | {b.port for b in node.carry}
        outside = [b for n in node.body for b in n.inputs if b.source not in inner]
        return [*node.carry, *(Binding(port=b.port, source=b.source, modality=b.modality) for b in outside)]
    return node.inputs


def _wanted_ports(plan: RuntimePlan) -> dict[str, frozenset[str]]:
    read: set[str] = set(plan.outputs.values())
    for node in plan.nodes:
        nodes = [node, *node.body] if isinstance(node, LoopNode) else [node]
        for n in nodes:
            read |= {b.source for b in (n.carry if isinstance(n, LoopNode) else n.inputs)}
            if isinstance(n, LoopNode):
                read |= {n.until, *n.next.values()}
    return {s.name: frozenset(p for p in s.outputs if f"{s.name}.{p}" in read) for s in plan.stages()}
