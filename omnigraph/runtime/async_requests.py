"""A request awaited from asyncio: its events as an async iterator, its outputs as an awaitable.

The backends run requests on threads (LocalBackend's workers, Ray's relays); a request tells
whoever listens when it changes (a chunk, an output, its end: Request.notify). Here that
wake-up becomes an asyncio.Event set through the loop, so one event loop serves any number of
streaming requests without a thread or a poll each. A consumer that stops early (a client that
disconnected, a cancelled task) cancels the request: the stages stop working for it.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from omnigraph.runtime.engine import RequestFailed


async def events(handle: Any) -> AsyncIterator[tuple[str, str, Any]]:
    """("chunk", output, piece) as streamed outputs grow, then ("output", name, value) for each
    output and ("done", "", outputs); raises RequestFailed if the request fails."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    req = handle.request

    def wake() -> None:
        loop.call_soon_threadsafe(changed.set)

    with req.lock:
        req.listeners.append(wake)
    finished = False
    try:
        readers: dict[str, Any] = {}
        while True:
            changed.clear()
            events, done = ready_events(req, readers)
            for event in events:
                if event[0] == "error":
                    finished = True
                    raise event[2]
                if event[0] == "done":
                    finished = True
                yield event
            if done:
                return
            await changed.wait()
    finally:
        with req.lock:
            if wake in req.listeners:
                req.listeners.remove(wake)
        if not finished and not req.done:  # the consumer left before the end
            handle.cancel()


def ready_events(req: Any, readers: dict[str, Any]) -> tuple[list[tuple[str, str, Any]], bool]:
    """What a request has for its reader now: new chunks of its streamed outputs, then, once
    it has ended, each output and ("done", "", outputs), or ("error", "", RequestFailed) when
    it failed (for the caller to raise, after the chunks before it); and whether it has
    ended. `readers` persists between calls: one reader per streamed output."""
    with req.lock:
        for name, ch in req.output_streams.items():
            if name not in readers:
                readers[name] = ch.reader()
        done = req.done
    events: list[tuple[str, str, Any]] = []
    for name, reader in readers.items():
        try:
            chunks, _ = reader.poll()
        except Exception:  # a failed stream: the request's error comes with its end
            chunks = []
        events += [("chunk", name, chunk) for chunk in chunks]
    if done:
        error = req.future.exception()
        if error is not None:
            events.append(("error", "", error))
        else:
            outputs = req.future.result()
            events += [("output", name, value) for name, value in outputs.items()]
            events.append(("done", "", outputs))
    return events, done


async def result(handle: Any) -> dict[str, Any]:
    """The request's outputs; cancelling the awaiting task cancels the request. (Not
    asyncio.wrap_future: it would cancel the request's own future, which the engine sets.)"""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[dict[str, Any]] = loop.create_future()

    def copy(done: Any) -> None:
        if outcome.done():
            return
        error = done.exception()
        if error is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(done.result())

    handle.request.future.add_done_callback(lambda f: loop.call_soon_threadsafe(copy, f))
    try:
        return await outcome
    except asyncio.CancelledError:
        handle.cancel()
        raise


__all__ = ["events", "result", "RequestFailed"]
