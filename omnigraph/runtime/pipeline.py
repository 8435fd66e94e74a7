"""A loaded pipeline: a RuntimePlan running on a backend (this process, or a Ray cluster).

`omnigraph.load(...)` (api.py) compiles or opens what it is given and returns one of these;
bundles run through it with the runtime alone.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from omnigraph.errors import OmnigraphError
from omnigraph.runtime import async_requests
from omnigraph.runtime.local import LoadHook, LocalBackend, RequestHandle
from omnigraph.runtime.plan import RuntimePlan
from omnigraph.runtime.request_settings import validate_settings
from omnigraph.runtime.watchdog import DEFAULT_STEP_TIMEOUT_S


BACKENDS = ("local", "ray")


class Pipeline:
    """A loaded pipeline, ready to serve requests (on this machine, or on a Ray cluster)."""

    def __init__(self, plan: RuntimePlan, *, on_load: LoadHook | None = None, max_inflight: int = 256,
                 backend: str = "local", address: str | None = None, device_resource: str | None = None,
                 step_timeout: float | None = DEFAULT_STEP_TIMEOUT_S, replan: str | None = None) -> None:
        self.plan = plan
        policy = _replan_policy(plan, backend, replan)
        self.backend: Any = _backend(plan, backend, address, device_resource, on_load=on_load,
                                     max_inflight=max_inflight, step_timeout=step_timeout)
        self.on_close: list[Callable[[], None]] = []  # e.g. deleting an unpacked bundle
        self.replanner: Any = None  # switches between the plan's family as the load shifts (replan.py)
        if policy is not None:
            from omnigraph.runtime.replan import Replanner

            self.replanner = Replanner(self.backend, policy).start()

    def submit(self, inputs: dict[str, Any], *, timeout: float | None = None,
               settings: dict[str, dict[str, Any]] | None = None, block: bool = True) -> RequestHandle:
        """Start a request. `settings` give stages params for this request only, by stage
        (`{"thinker": {"temperature": 0.7, "max_new_tokens": 64}}`: what the stage's kind lets a
        request set), checked before it starts (SettingsError names the field). While
        `max_inflight` requests run, this blocks, or with block=False raises QueueFull."""
        checked = validate_settings(self.plan, settings)
        return self.backend.submit(inputs, timeout=timeout, settings=checked, block=block)

    def run(self, inputs: dict[str, Any], *, timeout: float | None = None,
            settings: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        return self.submit(inputs, timeout=timeout, settings=settings).result()

    def stream(self, inputs: dict[str, Any], *, timeout: float | None = None,
               settings: dict[str, dict[str, Any]] | None = None) -> Iterator[tuple[str, str, Any]]:
        """Events as they happen: ("chunk", output, piece), ("output", name, value), ("done", "", outputs)."""
        return self.submit(inputs, timeout=timeout, settings=settings).events()

    # -- asyncio: what the server is built on; never blocks the loop (a full pipeline raises QueueFull)
    async def arun(self, inputs: dict[str, Any], *, timeout: float | None = None,
                   settings: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """The outputs, awaited; cancelling the task cancels the request."""
        handle = self.submit(inputs, timeout=timeout, settings=settings, block=False)
        return await async_requests.result(handle)

    async def astream(self, inputs: dict[str, Any], *, timeout: float | None = None,
                      settings: dict[str, dict[str, Any]] | None = None) -> AsyncIterator[tuple[str, str, Any]]:
        """The events of `stream`, as an async iterator; leaving it early cancels the request."""
        handle = self.submit(inputs, timeout=timeout, settings=settings, block=False)
        async for event in async_requests.events(handle):
            yield event

    def stats(self) -> dict[str, Any]:
        """Requests in flight, and per stage: seconds spent computing, items held, and each
        instance's placement (device, dtype, cores, KV budget) with its own counters (the KV
        pool's blocks and peak, prefix-cache hits, preemptions)."""
        busy = self.backend.stats()
        held = getattr(self.backend, "stage_load", dict)()
        return {"in_flight": self.backend.inflight(),
                "stages": {name: {"busy_s": round(busy.get(name, 0.0), 6), "items": held.get(name),
                                  "instances": instances}
                           for name, instances in self.backend.contract().items()}}

    def close(self) -> None:
        if self.replanner is not None:
            self.replanner.close()
        self.backend.close()
        while self.on_close:
            self.on_close.pop()()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _replan_policy(plan: RuntimePlan, backend: str, replan: str | None) -> Any:
    """The policy `replan` asks for (None: the plan stays as compiled), checked before loading."""
    if replan is None:
        return None
    from omnigraph.runtime.replan import ReplanPolicy

    if len(plan.family) < 2:
        raise OmnigraphError("--replan needs a plan family to switch between",
                             hint="plan one per request mix: --target T --mixes chat,image,long")
    try:
        return ReplanPolicy.parse(replan)
    except ValueError as exc:
        raise OmnigraphError(str(exc)) from None


def _backend(plan: RuntimePlan, backend: str, address: str | None, device_resource: str | None,
             **options: Any) -> Any:
    if backend == "local":
        if address is not None or device_resource is not None:
            raise OmnigraphError("--address and --device-resource are options of the Ray backend",
                                 hint="add --backend ray")
        return LocalBackend(plan, **options)
    if backend == "ray":
        from omnigraph.runtime.ray_backend import RayBackend

        return RayBackend(plan, address=address, device_resource_name=device_resource, **options)
    raise OmnigraphError(f"unknown backend '{backend}'", hint="backends: " + ", ".join(BACKENDS))
