"""Moving requests between the instances of a stage (Llumnix-style live migration).

A mixin of LocalBackend: `migrate` moves one request's work at a stage to another
instance, `drain` moves everything off one instance (before it is removed, or to balance
load) and stops sending it new work. The move runs on the source worker's own thread,
between two of its steps (it owns the executor): the executor lets the item go with its
state (ar_llm: the request's KV cache, tokens, text stream and sampler; kv_handoff.py),
and the target worker takes it in as new work that is already under way.
"""
from __future__ import annotations

import queue
from concurrent.futures import Future
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omnigraph.runtime.local import _Worker


class Migration:
    instances: dict[str, list[_Worker]]

    def migrate(self, stage: str, request_id: int, to: int | None = None, timeout: float = 30.0) -> bool:
        """Move a request's work at `stage` to instance `to` (default: the least loaded other
        one), with its KV cache where the stage keeps one: it goes on there, its tokens the
        same as if it had stayed. False when it is not at the stage or cannot move now."""
        workers = self._stage_workers(stage)
        if to is not None and not 0 <= to < len(workers):
            raise ValueError(f"instance {to} is not another instance of stage '{stage}' "
                             f"(instances 0..{len(workers) - 1})")
        source = next((w for w in workers if any(i.request_id == request_id for i in w.active)), None)
        if source is None:
            return False
        target = self._target(workers, source, to)
        done: Future[bool] = Future()

        def move() -> None:
            try:
                item = next((i for i in source.active if i.request_id == request_id), None)
                ok = item is not None and source.release(item)
                if ok:
                    target.submit(item)
                done.set_result(ok)
            except Exception as exc:  # the worker goes on; the caller hears why
                done.set_exception(exc)

        source.between_steps(move)
        return done.result(timeout)

    def drain(self, stage: str, instance: int, timeout: float = 30.0) -> int:
        """Stop sending `stage`'s instance new work and move what it holds to the others
        (running requests with their KV); returns how many moved. What cannot move (a batch
        in progress) finishes where it is. `undrain` takes the instance back into service."""
        workers = self._stage_workers(stage)
        if not 0 <= instance < len(workers):
            raise ValueError(f"stage '{stage}' has instances 0..{len(workers) - 1}, not {instance}")
        source = workers[instance]
        if len(workers) < 2:
            raise ValueError(f"stage '{stage}' has one instance: nowhere to move its requests")
        source.draining = True
        done: Future[int] = Future()

        def move_all() -> None:
            moved = 0
            try:
                while True:
                    try:
                        waiting = source.inbox.get_nowait()
                    except queue.Empty:
                        break
                    self._target(workers, source, None).submit(waiting)
                    moved += 1
                for item in list(source.active):
                    if source.release(item):
                        self._target(workers, source, None).submit(item)
                        moved += 1
                done.set_result(moved)
            except Exception as exc:  # the worker goes on; the caller hears why
                done.set_exception(exc)

        source.between_steps(move_all)
        return done.result(timeout)

    def undrain(self, stage: str, instance: int) -> None:
        self._stage_workers(stage)[instance].draining = False

    def _stage_workers(self, stage: str) -> list[_Worker]:
        if stage not in self.instances:
            raise ValueError(f"no stage '{stage}' (stages: {', '.join(self.instances)})")
        return self.instances[stage]

    @staticmethod
    def _target(workers: list[_Worker], source: _Worker, to: int | None) -> _Worker:
        if to is not None:
            if not 0 <= to < len(workers) or workers[to] is source:
                raise ValueError(f"instance {to} is not another instance of stage '{source.node.name}'")
            return workers[to]
        others = [w for w in workers if w is not source and not w.draining]
        if not others:
            raise ValueError(f"stage '{source.node.name}' has no other instance in service")
        return min(others, key=lambda w: w.load())

