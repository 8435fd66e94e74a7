"""The view of a step that every rank of an instance executes on.

An executor's decisions depend on more than its items' inputs: which requests are dead,
which output streams have room (backpressure), which stream chunks have arrived. Those
change while a step runs, and differently on every rank, so the leader freezes them
before each step into a message (`ItemStep` per item), every rank (the leader too)
applies it to its `MirrorItem`s, and the executors step on those: same view, same
decisions, same collectives. A leader's mirror item passes outputs on to the real item;
a follower's drops them.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from omnigraph.runtime.channel import StreamChannel, StreamClosed, StreamReader
from omnigraph.runtime.executor import WorkItem

STATE_KEY = "_spmd_key"  # in a real item's state: its key in the messages
_keys = itertools.count(1)


@dataclass(frozen=True)
class StreamSlot:
    """Stands for a streamed input in a message; its chunks come in ItemStep.feeds."""

    index: int


@dataclass
class ItemSpec:
    """What a rank needs to build its view of an item it has not seen yet."""

    request_id: int
    stage: str
    inputs: dict[str, Any]  # StreamReaders replaced by StreamSlots
    wanted: frozenset[str]
    stream_modality: dict[str, str]
    settings: dict[str, Any] = field(default_factory=dict)  # the request's params for the stage


@dataclass
class ItemStep:
    key: int
    spec: ItemSpec | None  # only in the first step that has the item
    dead: bool
    writable: dict[str, bool]
    feeds: dict[int, tuple[list[Any], bool, str | None]] = field(default_factory=dict)  # slot -> new chunks, ended, error


StepMessage = list[ItemStep]


class SnapshotReader(StreamReader):
    """A streamed input as the leader saw it: the chunks of the steps so far, no more."""

    def __init__(self) -> None:  # no channel: chunks come from messages
        self.pending: list[Any] = []
        self.ended = False
        self.error: str | None = None

    def offer(self, chunks: list[Any], ended: bool, error: str | None) -> None:
        self.pending.extend(chunks)
        self.ended = self.ended or ended
        self.error = self.error or error

    def poll(self, wait: float | None = 0.0) -> tuple[list[Any], bool]:
        new, self.pending = self.pending, []
        if self.error is not None and not new:
            raise StreamClosed(self.error)
        return new, self.ended and self.error is None

    def __iter__(self):
        chunks, ended = self.poll()
        if not ended:  # the leader reads a batch stage's streams to the end before the step
            raise RuntimeError("a stream that has not ended reached a batch step")
        yield from chunks


class MirrorItem(WorkItem):
    """An item as one rank sees it for one step (dead and writable frozen by the leader)."""

    def __init__(self, spec: ItemSpec, real: WorkItem | None) -> None:
        self.readers: dict[int, SnapshotReader] = {}
        super().__init__(
            request_id=spec.request_id, stage=spec.stage, inputs=self._view(spec.inputs), wanted=spec.wanted,
            # Unread channels record what the executor streams (ar_llm asks what it already sent).
            streams={p: StreamChannel(capacity=1 << 30) for p in spec.stream_modality},
            stream_modality=dict(spec.stream_modality), _deliver=lambda p, v: None, _fail=lambda e: None,
            _is_dead=lambda: False, settings=dict(spec.settings))
        self.real = real
        self.frozen_dead = False
        self.frozen_writable: dict[str, bool] = {}

    def _view(self, inputs: dict[str, Any]) -> dict[str, Any]:
        def swap(value: Any) -> Any:
            if isinstance(value, StreamSlot):
                return self.readers.setdefault(value.index, SnapshotReader())
            return value

        return {p: [swap(v) for v in value] if isinstance(value, list) else swap(value)
                for p, value in inputs.items()}

    @property
    def dead(self) -> bool:
        return self.done or self.frozen_dead

    def writable(self, port: str) -> bool:
        return self.frozen_writable.get(port, True)

    def chunk(self, port: str, value: Any) -> None:
        ch = self.streams.get(port)
        if ch is not None:
            ch.put(value)
        if self.real is not None:
            self.real.chunk(port, value)

    def emit(self, port: str, value: Any) -> None:
        if port in self.streams:
            raise RuntimeError(f"port '{port}' is streamed; use chunk()")
        if self.real is not None:
            self.real.emit(port, value)

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        for ch in self.streams.values():
            ch.close()
        if self.real is not None:
            self.real.finish()

    def fail(self, error: BaseException) -> None:
        if self.done:
            return
        self.done = True
        if self.real is not None:
            self.real.fail(error)


class Mirror:
    """One rank's views, kept in step with the leader's messages."""

    def __init__(self) -> None:
        self.views: dict[int, MirrorItem] = {}

    def apply(self, message: StepMessage, reals: list[WorkItem] | None = None) -> list[MirrorItem]:
        views: dict[int, MirrorItem] = {}
        for i, step in enumerate(message):
            view = self.views.get(step.key)
            if view is None:
                if step.spec is None:
                    raise RuntimeError(f"step names item {step.key}, which this rank never saw")
                view = MirrorItem(step.spec, reals[i] if reals is not None else None)
            view.frozen_dead = step.dead
            view.frozen_writable = step.writable
            for slot, (chunks, ended, error) in step.feeds.items():
                view.readers.setdefault(slot, SnapshotReader()).offer(chunks, ended, error)
            views[step.key] = view
        self.views = views  # an item not in this step has left the leader's batch
        return list(views.values())


class Snapshots:
    """The leader's side: freezes its real items into the next step's message."""

    def __init__(self) -> None:
        self.readers: dict[int, dict[int, StreamReader]] = {}  # key -> slot -> the real reader

    def message(self, items: list[WorkItem], read_whole: int) -> StepMessage:
        """`read_whole`: the first this-many items run in a batch step, which reads its
        streamed inputs to the end; the streams of the rest are read as far as they go."""
        steps: list[ItemStep] = []
        readers: dict[int, dict[int, StreamReader]] = {}
        for i, item in enumerate(items):
            key = item.state.get(STATE_KEY)
            spec = None
            if key is None:
                key = item.state[STATE_KEY] = next(_keys)
                spec, readers[key] = self._spec(item)
            else:
                readers[key] = self.readers.get(key, {})
            feeds = {slot: _read(reader, whole=i < read_whole) for slot, reader in readers[key].items()}
            steps.append(ItemStep(key, spec, item.dead, {p: item.writable(p) for p in item.streams}, feeds))
        self.readers = readers
        return steps

    @staticmethod
    def _spec(item: WorkItem) -> tuple[ItemSpec, dict[int, StreamReader]]:
        readers: dict[int, StreamReader] = {}

        def slot(value: Any) -> Any:
            if isinstance(value, StreamReader):
                readers[len(readers)] = value
                return StreamSlot(len(readers) - 1)
            return value

        inputs = {p: [slot(v) for v in value] if isinstance(value, list) else slot(value)
                  for p, value in item.inputs.items()}
        spec = ItemSpec(item.request_id, item.stage, inputs, item.wanted,
                        {p: item.stream_modality.get(p, "") for p in item.streams}, dict(item.settings))
        return spec, readers


def _read(reader: StreamReader, whole: bool) -> tuple[list[Any], bool, str | None]:
    chunks: list[Any] = []
    try:
        while True:
            new, ended = reader.poll(wait=None if whole else 0.0)
            chunks.extend(new)
            if ended or not whole:
                return chunks, ended, None
    except StreamClosed as exc:
        return chunks, False, str(exc) or "the producing stage failed"
