"""Weights that take turns on a device (`StageResources.swap`, the planner's choice when the
stages sharing a device do not fit there together).

One `SwapSlot` per device: a stage's step takes the slot, the slot's previous holder moves its
weights to host memory and this stage's come onto the device, and the step runs; other
swapped stages on that device wait for the slot (they would only time-slice it anyway). A
stage that runs again finds its weights still there: consecutive batches of one stage pay no
load. On a CPU device host and device are the same memory and the moves cost nothing; the
turn-taking is the same.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

HOST = "cpu"


class SwapSlot:
    def __init__(self, device: str) -> None:
        self.device = device
        self.holder: Any = None  # the executor whose weights are on the device
        self.loads = 0  # weight loads onto the device so far
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, executor: Any) -> Iterator[None]:
        """The device's weights are `executor`'s for the duration."""
        with self._lock:
            if self.holder is not executor:
                if self.holder is not None:
                    _move(self.holder, HOST)
                _move(executor, self.device)
                self.holder = executor
                self.loads += 1
            yield


def _move(executor: Any, device: str) -> None:
    model = getattr(executor, "model", None)
    if model is not None and hasattr(model, "to"):
        model.to(device)


def park(executor: Any) -> None:
    """A swapped stage's weights go to host memory as soon as it has loaded (so that the stages
    sharing its device never all sit there at once)."""
    if executor.node.resources.swap:
        _move(executor, HOST)


def swap_slots(workers: list[Any]) -> None:
    """Give every worker whose stage swaps the slot of its device (one per device)."""
    slots: dict[str, SwapSlot] = {}
    for w in workers:
        if w.node.resources.swap:
            device = w.executor.ctx.device
            w.slot = slots.setdefault(device, SwapSlot(device))
