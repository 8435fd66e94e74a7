"""A bounded stream between one producer and its consumers, with backpressure.

Producers check `writable()` (or block in `put`) so a slow consumer slows that one
request, not the stage: a continuous-batching producer skips a request whose
channel is full instead of stalling its whole batch. Closing with an error makes
every reader fail, so a stage that crashes mid-stream never leaves a reader hanging.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any


class StreamClosed(Exception):
    """The producer failed; carries its error."""


class StreamChannel:
    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._chunks: list[Any] = []  # everything ever put, for late or slow readers
        self._read: dict[int, int] = {}  # reader id -> index of next chunk
        self._cond = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self._watchers: list[Callable[[], None]] = []

    # producer side -------------------------------------------------------------------
    def writable(self) -> bool:
        with self._cond:
            return self._backlog() < self.capacity

    def _backlog(self) -> int:
        if not self._read:
            return 0
        return len(self._chunks) - min(self._read.values())

    def put(self, chunk: Any, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._backlog() >= self.capacity and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("stream consumer is not reading")
                self._cond.wait(remaining)
            if self._closed:
                return
            self._chunks.append(chunk)
            self._cond.notify_all()
        self._notify()

    def close(self, error: BaseException | None = None) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._error = error
            self._cond.notify_all()
        self._notify()

    # consumer side -------------------------------------------------------------------
    def reader(self, on_data: Callable[[], None] | None = None) -> StreamReader:
        with self._cond:
            rid = len(self._read)
            self._read[rid] = 0
        if on_data is not None:
            self._watchers.append(on_data)
        return StreamReader(self, rid)

    def watch(self, on_data: Callable[[], None]) -> None:
        """Call `on_data` when chunks arrive or the stream ends, without being a reader:
        a watcher never holds the producer back."""
        self._watchers.append(on_data)

    def _notify(self) -> None:
        for watcher in list(self._watchers):
            watcher()

    @property
    def closed(self) -> bool:
        return self._closed

    def chunks(self) -> list[Any]:
        with self._cond:
            return list(self._chunks)


class StreamReader:
    """One consumer's position in a stream."""

    def __init__(self, channel: StreamChannel, rid: int) -> None:
        self.channel = channel
        self.rid = rid

    def poll(self, wait: float | None = 0.0) -> tuple[list[Any], bool]:
        """New chunks, and whether the stream has ended (all read). Waits up to `wait`
        seconds for something to happen (None: until it does). Raises if the producer failed."""
        ch = self.channel
        with ch._cond:
            if wait != 0.0:
                ch._cond.wait_for(lambda: ch._read[self.rid] < len(ch._chunks) or ch._closed, wait)
            new = ch._chunks[ch._read[self.rid]:]
            ch._read[self.rid] = len(ch._chunks)
            closed, error = ch._closed, ch._error
            ch._cond.notify_all()  # room for a blocked producer
        if error is not None and not new:
            raise StreamClosed(str(error)) from error
        return new, closed and error is None

    def __iter__(self) -> Iterator[Any]:
        """Blocking iteration over the chunks, for executors that handle one stream at a time."""
        while True:
            chunks, ended = self.poll(wait=None)
            yield from chunks
            if ended:
                return
