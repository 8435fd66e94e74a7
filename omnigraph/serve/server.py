"""Run the app under uvicorn: bind first (so /health answers while the pipeline loads), load
in the background, serve; on SIGINT/SIGTERM stop taking requests, let those in flight finish
within the grace period (the rest are cancelled), close the pipeline, exit 0.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from omnigraph.serve.app import Server, build_app
from omnigraph.serve.wire import Limits


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    grace_s: float = 30.0
    limits: Limits = field(default_factory=Limits)
    announce: Callable[[str, Server], None] | None = None  # told the URL once the pipeline is loaded


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        from omnigraph.errors import OmnigraphError

        raise OmnigraphError(f"cannot listen on {host}:{port}: {exc.strerror}",
                             hint="choose another --port (0 picks a free one)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Serving:
    """A server bound and starting: `url` is known at once; run() serves until stopped."""

    def __init__(self, load: Callable[[], Any], options: ServeOptions) -> None:
        import uvicorn

        self.options = options
        self.state = Server(limits=options.limits, api_key=options.api_key)
        self.sock = _bind(options.host, options.port)
        host, port = self.sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        self.loaded = threading.Event()
        self._load = load
        app = build_app(self.state)
        app.router.lifespan_context = self._lifespan
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=int(options.grace_s) or None,
                                lifespan="on", access_log=False)
        self.uvicorn = _uvicorn_server(config, self.state)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[None]:
        task = asyncio.ensure_future(asyncio.to_thread(self._load_pipeline))
        try:
            yield
        finally:
            task.cancel()
            pipe = self.state.pipe
            if pipe is not None:
                await asyncio.to_thread(pipe.close)

    def _load_pipeline(self) -> None:
        try:
            pipe = self._load()
        except BaseException as exc:  # noqa: BLE001 - reported, and the server stops
            self.state.load_error = f"{type(exc).__name__}: {exc}"
            self.uvicorn.failed = exc
            self.uvicorn.should_exit = True
            self.loaded.set()
            return
        self.state.ready(pipe)
        self.loaded.set()
        if self.options.announce is not None:
            self.options.announce(self.url, self.state)

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM (or stop()); raises what the load raised, if it failed."""
        self.uvicorn.run(sockets=[self.sock])
        if self.uvicorn.failed is not None:
            raise self.uvicorn.failed

    def stop(self) -> None:
        self.state.draining = True
        self.uvicorn.should_exit = True

    def start_thread(self, wait: bool = True) -> threading.Thread:
        """Serve from a thread (tests, benchmarks): returns once the pipeline is loaded (or at
        once, with wait=False)."""
        thread = threading.Thread(target=self._run_quietly, name="omnigraph-serve", daemon=True)
        thread.start()
        if not wait:
            return thread
        self.loaded.wait()
        if self.state.load_error:
            thread.join(timeout=30)
            raise RuntimeError(self.state.load_error)
        return thread

    def _run_quietly(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # noqa: BLE001 - start_thread reports the load error
            print(f"omnigraph serve: {exc}", file=sys.stderr)


def _uvicorn_server(config: Any, state: Server) -> Any:
    """A uvicorn.Server that marks the app draining as soon as a signal arrives (new requests
    on open connections get 503 while those in flight finish)."""
    import uvicorn

    class Draining(uvicorn.Server):
        failed: BaseException | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            state.draining = True
            super().handle_exit(sig, frame)

    return Draining(config)
