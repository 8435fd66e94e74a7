"""Plumbing shared by the executors that make audio from a whole or streamed input
(tts, vocoder): read what has arrived without blocking, and pass audio on as it
is made — chunk by chunk when the output port streams, joined at the end when not.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from omnigraph.runtime.channel import StreamReader
from omnigraph.runtime.executor import WorkItem
from omnigraph.runtime.values import Audio, join_chunks

AUDIO = "audio"
_HELD = "audio_io.held"  # item.state key: pieces kept for a non-streamed output
_TAKEN = "audio_io.taken"  # item.state key: ports whose whole value was already taken


def take(item: WorkItem, port: str) -> tuple[list[Any], bool]:
    """What arrived on `port` since the last call, and whether the input is complete.

    A stream is polled without waiting, so one slow producer never stalls the other
    requests of the step; a whole value comes out once, as a single piece."""
    value = item.inputs[port]
    if isinstance(value, StreamReader):
        return value.poll()
    taken: set[str] = item.state.setdefault(_TAKEN, set())
    if port in taken:
        return [], True
    taken.add(port)
    return [value], True


def step_each(items: list[WorkItem], advance: Callable[[WorkItem], bool]) -> bool:
    """Advance each item on its own; whether any moved. Skips an item whose audio stream is
    full (backpressure slows that request only), and an error fails that request only."""
    moved = False
    for item in items:
        if item.dead or not item.writable(AUDIO):
            continue
        try:
            moved |= advance(item)
        except Exception as exc:
            item.fail(exc)
            moved = True
    return moved


def send(item: WorkItem, audio: Audio) -> None:
    """Hand on one piece of the item's audio."""
    if AUDIO in item.streams:
        item.chunk(AUDIO, audio)
    else:
        item.state.setdefault(_HELD, []).append(audio)


def end(item: WorkItem) -> None:
    """All audio is out: emit the joined value (when not streamed) and finish the item."""
    if AUDIO not in item.streams:
        item.emit(AUDIO, join_chunks("audio", item.state.pop(_HELD, [])))
    item.finish()


def silence(seconds: float, sample_rate: int) -> Audio:
    return Audio(np.zeros(round(seconds * sample_rate), dtype=np.float32), sample_rate)
