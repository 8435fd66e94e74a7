"""One HTTP request's pipeline request: submitted without blocking the event loop, its events
awaited, its metrics recorded, and cancelled when the client goes away."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request

from omnigraph.runtime import async_requests
from omnigraph.runtime.engine import QueueFull, RequestFailed
from omnigraph.serve.metrics import Tracker
from omnigraph.serve.wire import M, ApiError, api_error, parse, read_json

DISCONNECT_POLL_S = 0.25  # how often a non-streaming call checks that its client is still there


async def accept(request: Request, model: type[M], fits: bool, does_not: str) -> tuple[Any, M]:
    """An OpenAI-shaped endpoint's start: it must fit the pipeline (else 404 saying why and
    pointing to the run endpoint), its body must parse, and its `model` name this pipeline."""
    server = request.app.state.server
    name = server.surface.name
    if not fits:
        raise ApiError(404, f"pipeline '{name}' {does_not}; use POST /v1/pipelines/{name}/run", code="not_supported")
    body = parse(model, await read_json(request, server.limits))
    server.check_model(getattr(body, "model", None))
    return server, body


def outcome(exc: BaseException) -> str:
    if isinstance(exc, QueueFull):
        return "queue_full"
    if isinstance(exc, RequestFailed):
        return {"input": "bad_request", "timeout": "timeout", "cancelled": "cancelled"}.get(exc.reason, "stage_failed")
    if isinstance(exc, ApiError):
        return "bad_request" if exc.status < 500 else "error"
    return "error"


class Call:
    def __init__(self, server: Any, endpoint: str, inputs: dict[str, Any],
                 settings: dict[str, dict[str, Any]] | None = None) -> None:
        self.server = server
        self.tracker = Tracker(server.metrics, endpoint)
        self.modality = {n: t.modality for n, t in server.pipe.plan.output_types.items()}
        try:
            self.handle = server.pipe.submit(inputs, timeout=server.limits.timeout_s, settings=settings, block=False)
        except Exception as exc:
            self.tracker.end(outcome(exc))
            raise api_error(exc) from None

    @property
    def usage(self) -> dict[str, dict[str, int]]:
        return self.handle.request.usage

    async def events(self) -> AsyncIterator[tuple[str, str, Any]]:
        """The request's events; an error ends the iteration as an ApiError. Leaving early
        (a client gone: the task is cancelled) cancels the request."""
        try:
            async for kind, name, value in async_requests.events(self.handle):
                if kind == "chunk":
                    self.tracker.chunk(self.modality.get(name, ""))
                elif kind == "done":
                    self.tracker.end("ok", self.handle, value)
                yield kind, name, value
        except asyncio.CancelledError:
            self.tracker.end("cancelled")
            raise
        except Exception as exc:
            self.tracker.end(outcome(exc))
            raise api_error(exc) from None

    async def outputs(self, request: Request) -> dict[str, Any]:
        """All outputs, awaited; the request is cancelled if the client disconnects first."""
        waiter = asyncio.ensure_future(self._outputs())
        try:
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=DISCONNECT_POLL_S)
                if done:
                    return waiter.result()
                if await request.is_disconnected():
                    waiter.cancel()
                    raise ApiError(499, "the client disconnected", type="cancelled", code="cancelled")
        finally:
            if not waiter.done():
                waiter.cancel()

    async def _outputs(self) -> dict[str, Any]:
        outputs: dict[str, Any] = {}
        async for kind, _, value in self.events():
            if kind == "done":
                outputs = value
        return outputs
