"""Request timeouts for both backends: one thread fails each request whose deadline passes,
naming the stages it was still in."""
from __future__ import annotations

import heapq
import threading
import time

from omnigraph.runtime.engine import Engine, Request, RequestFailed


class Deadlines:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._heap: list[tuple[float, int, Request]] = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="omnigraph-timeouts", daemon=True)
        self._thread.start()

    def add(self, request: Request) -> None:
        if request.deadline is None:
            return
        with self._cv:
            heapq.heappush(self._heap, (request.deadline, request.id, request))
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._heap and not self._closed:
                    self._cv.wait(0.5)
                if self._closed:
                    return
                deadline, _, request = self._heap[0]
                now = time.monotonic()
                if deadline > now:
                    self._cv.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
            if not request.done:
                running = [s for s, t in request.timings.items() if t.finished is None]
                where = f" (in {', '.join(running)})" if running else ""
                self.engine.fail(request, RequestFailed(
                    f"timed out after {deadline - request.submitted:.1f}s{where}", running[0] if running else None))
