"""Stream edges across Ray: bounded in-flight chunks at every hop, so backpressure reaches
the producing executor as it does in one process.

A stream runs producer actor → driver → consumer actor(s); the driver keeps the engine's
StreamChannel, the one every reader of the stream (and the caller's events) reads from.

    OutboundStream   actor side, the producer's output: ships chunks only while fewer than
                     `window` are unacknowledged, so a slow reader fills it and the
                     executor sees writable() false for that request
    OutputRelay      driver side: puts shipped chunks into the engine's channel while it has
                     room, acknowledging each one; never blocks the driver
    InputForwarder   driver side: reads the engine's channel for one consumer and feeds the
                     consumer actor, at most `window` chunks beyond what it has read; keeps
                     what it read so that a retry on a new actor replays the stream
    InboundStream    actor side, the consumer's input: applies feeds in order (Ray runs a
                     threaded actor's calls in any order) and counts what the executor read
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from omnigraph.runtime.channel import StreamChannel, StreamClosed, StreamReader


class OutboundStream(StreamChannel):
    """A producer's output on its actor; the shipper is its one reader."""

    def __init__(self, window: int) -> None:
        super().__init__(capacity=window)
        self.reader()  # the shipper: the backlog (what writable() checks) is what it has not taken
        self.acked = 0  # delivered into the driver's channel

    def take(self) -> tuple[list[Any], bool]:
        """Chunks to ship now (within the window), and whether the stream has ended with all
        of them shipped."""
        with self._cond:
            shipped = self._read[0]
            room = max(0, self.capacity - (shipped - self.acked))
            chunks = self._chunks[shipped:shipped + room]
            self._read[0] = shipped + len(chunks)
            self._cond.notify_all()  # a producer blocked in put() has room again
            drained = self._read[0] == len(self._chunks)
            return chunks, self._closed and self._error is None and drained

    def ack(self, delivered: int) -> None:
        with self._cond:
            self.acked = max(self.acked, delivered)


class InboundStream(StreamChannel):
    """A consumer's input on its actor, fed by the driver in sequence."""

    def __init__(self) -> None:
        super().__init__(capacity=1 << 30)  # the driver's window bounds it
        self._next = 0
        self._early: dict[int, tuple[list[Any], bool, str | None]] = {}
        self._applying = threading.Lock()  # feeds apply one at a time, in sequence

    def apply(self, seq: int, chunks: list[Any], ended: bool, error: str | None) -> None:
        with self._applying:
            self._early[seq] = (chunks, ended, error)
            while self._next in self._early:
                chunks, ended, error = self._early.pop(self._next)
                self._next += 1
                for chunk in chunks:
                    self.put(chunk)
                if error is not None:
                    self.close(StreamClosed(error))
                elif ended:
                    self.close()

    def consumed(self) -> int:
        """Chunks the executor has read."""
        with self._cond:
            return self._read[0] if self._read else 0


@dataclass
class OutputRelay:
    """Chunks shipped by a producer actor on their way into the engine's channel."""

    channel: StreamChannel
    pending: deque[Any] = field(default_factory=deque)
    delivered: int = 0

    def offer(self, chunks: list[Any]) -> None:
        self.pending.extend(chunks)

    def flush(self) -> bool:
        """Deliver what the channel has room for; True when the count delivered changed."""
        before = self.delivered
        while self.pending and self.channel.writable() and not self.channel.closed:
            self.channel.put(self.pending.popleft(), timeout=0)
            self.delivered += 1
        return self.delivered != before

    @property
    def drained(self) -> bool:
        return not self.pending


@dataclass
class InputForwarder:
    """One consumer's streamed input, read on the driver and fed to its actor."""

    reader: StreamReader
    window: int
    history: list[Any] = field(default_factory=list)  # everything read so far, for a replay
    ended: bool = False
    error: str | None = None
    sent: int = 0
    acked: int = 0  # read by the consumer's executor
    seq: int = 0
    closed_sent: bool = False

    def feed(self) -> tuple[int, list[Any], bool, str | None] | None:
        """The next feed (seq, chunks, ended, error) for the actor, or None."""
        if not (self.ended or self.error) and len(self.history) - self.acked < self.window:
            try:
                chunks, self.ended = self.reader.poll()
                self.history.extend(chunks)
            except StreamClosed as exc:
                self.error = str(exc) or "the producing stage failed"
        upto = min(len(self.history), self.acked + self.window)
        chunks = self.history[self.sent:upto]
        finished = (self.ended or self.error is not None) and upto == len(self.history)
        if not chunks and (not finished or self.closed_sent):
            return None
        self.sent = upto
        self.closed_sent = finished
        out = (self.seq, chunks, self.ended and finished, self.error if finished else None)
        self.seq += 1
        return out

    def rewind(self) -> None:
        """Start over on a new actor: replay everything read so far."""
        self.sent = self.acked = self.seq = 0
        self.closed_sent = False
