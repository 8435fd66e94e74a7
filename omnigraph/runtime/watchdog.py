"""A stage step that never returns must not hold its requests forever.

One thread per backend (or Ray actor) looks at its workers' current steps. A step running
longer than the limit fails the requests in it, naming the stage; until that step returns,
new work for the stage fails at once instead of queueing behind it (a Python thread cannot
be stopped from outside, so the stage is reported stuck rather than restarted). When the
step does return, the stage serves again.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Protocol

DEFAULT_STEP_TIMEOUT_S = 900.0  # a step of any real model on any machine is far shorter


class StepTimeout(Exception):
    """A stage step ran past the watchdog's limit."""


class Watched(Protocol):
    stuck: BaseException | None  # set while its step overruns

    def step_age(self) -> float | None:
        """Seconds the current step has run, or None between steps."""

    def fail_step(self, error: BaseException) -> None:
        """Fail the items of the current step, and hold later ones until it returns."""


class StepWatchdog:
    def __init__(self, workers: Callable[[], Iterable[Watched]], limit_s: float | None,
                 poll_s: float = 0.25) -> None:
        self.workers = workers
        self.limit_s = limit_s
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if limit_s is not None:
            self._thread = threading.Thread(target=self._run, name="omnigraph-watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self.limit_s is not None
        while not self._stop.wait(min(self.poll_s, self.limit_s / 4)):
            for worker in list(self.workers()):
                age = worker.step_age()
                if age is not None and age > self.limit_s and not worker.stuck:
                    worker.fail_step(StepTimeout(f"a step ran over {self.limit_s:g}s (the step timeout); "
                                                 f"the stage takes no work until it returns"))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
