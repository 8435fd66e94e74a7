"""Request timeouts for both backends: one thread fails each request whose deadline passes,
naming the stages it was still in.

Only requests still running are held: one that ends is forgotten at once (a server with long
timeouts must not keep every finished request alive until its deadline). The heap keeps
(deadline, id) pairs and is rebuilt when ended requests make up most of it.
"""
from __future__ import annotations

import heapq
import threading
import time

from omnigraph.runtime.engine import Engine, Request, RequestFailed


class Deadlines:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._heap: list[tuple[float, int]] = []
        self._pending: dict[int, Request] = {}
        self._cv = threading.Condition()
        self._closed = False
        engine.on_end.append(self._ended)
        self._thread = threading.Thread(target=self._run, name="omnigraph-timeouts", daemon=True)
        self._thread.start()

    def add(self, request: Request) -> None:
        if request.deadline is None:
            return
        with self._cv:
            if request.done:
                return
            self._pending[request.id] = request
            heapq.heappush(self._heap, (request.deadline, request.id))
            self._cv.notify()

    def held(self) -> int:
        """Requests this timer still refers to (the ones running with a deadline)."""
        with self._cv:
            return len(self._pending)

    def _ended(self, request: Request) -> None:
        with self._cv:
            if self._pending.pop(request.id, None) is not None and len(self._heap) > 2 * len(self._pending) + 64:
                self._heap = [(d, i) for d, i in self._heap if i in self._pending]
                heapq.heapify(self._heap)

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
                deadline, rid = self._heap[0]
                if rid not in self._pending:  # ended already
                    heapq.heappop(self._heap)
                    continue
                now = time.monotonic()
                if deadline > now:
                    self._cv.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
                request = self._pending.pop(rid)
            if not request.done:
                running = [s for s, t in request.timings.items() if t.finished is None]
                where = f" (in {', '.join(running)})" if running else ""
                self.engine.fail(request, RequestFailed(
                    f"timed out after {deadline - request.submitted:.1f}s{where}", running[0] if running else None,
                    reason="timeout"))
