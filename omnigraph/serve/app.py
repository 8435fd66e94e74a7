"""The Starlette app: routes, API-key check, OpenAI-shaped errors, health, models, metrics.

The app exists before the pipeline is loaded: `/health` answers 503 ("loading") until the
load is done, and every other endpoint too, so an orchestrator can wait on it.
"""
from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from omnigraph.serve.chat import chat_completions
from omnigraph.serve.media import images, speech
from omnigraph.serve.metrics import CONTENT_TYPE, Metrics
from omnigraph.serve.run import run_pipeline
from omnigraph.serve.surface import Surface, surface
from omnigraph.serve.wire import ApiError, Limits, api_error

OPEN_PATHS = ("/health",)  # reachable without the API key


@dataclass
class Server:
    """What the routes share: the pipeline (None while loading), its surface, limits, metrics."""

    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    pipe: Any = None
    surface: Surface | None = None
    load_error: str | None = None
    draining: bool = False
    started: float = field(default_factory=time.time)
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = Metrics(lambda: self.pipe)

    def ready(self, pipe: Any) -> None:
        self.surface = surface(pipe.plan)
        self.pipe = pipe

    def check_model(self, model: str | None) -> None:
        assert self.surface is not None
        if model not in (None, "", self.surface.name):
            raise ApiError(404, f"model '{model}' is not served here; this server serves '{self.surface.name}'",
                           param="model", code="model_not_found")


class _Guard:
    """Before any route: the API key, then readiness (loading, draining). Pure ASGI, so a
    streamed response is not buffered."""

    def __init__(self, app: ASGIApp, server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        error = None
        if self.server.api_key is not None and path not in OPEN_PATHS:
            given = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.server.api_key}".encode()):
                error = ApiError(401, "a valid API key is needed: Authorization: Bearer KEY",
                                 type="authentication_error", code="invalid_api_key")
        if error is None and path != "/health" and self.server.pipe is None:
            error = ApiError(503, self.server.load_error or "the pipeline is still loading", type="server_error",
                             code="loading", headers={"Retry-After": "5"})
        if error is None and self.server.draining and path not in ("/health", "/metrics"):
            error = ApiError(503, "the server is shutting down", type="server_error", code="draining")
        if error is not None:
            await error.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def health(request: Request) -> Response:
    server: Server = request.app.state.server
    if server.pipe is None:
        return JSONResponse({"status": "failed" if server.load_error else "loading", "error": server.load_error},
                            status_code=503)
    return JSONResponse({"status": "draining" if server.draining else "ok", "pipeline": server.surface.name})


async def models(request: Request) -> Response:
    server: Server = request.app.state.server
    return JSONResponse({"object": "list", "data": [{"id": server.surface.name, "object": "model",
                                                     "created": int(server.started), "owned_by": "omnigraph"}]})


async def metrics(request: Request) -> Response:
    return Response(request.app.state.server.metrics.render(), media_type=CONTENT_TYPE)


async def _error(request: Request, exc: Exception) -> Response:
    return api_error(exc).response()


async def _not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    return ApiError(status, f"no route {request.method} {request.url.path}",
                    code="not_found" if status == 404 else "method_not_allowed").response()


def build_app(server: Server) -> Starlette:
    routes = [
        Route("/health", health), Route("/metrics", metrics), Route("/v1/models", models),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/audio/speech", speech, methods=["POST"]),
        Route("/v1/images/generations", images, methods=["POST"]),
        Route("/v1/pipelines/{name}/run", run_pipeline, methods=["POST"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_Guard, server=server)],
                    exception_handlers={ApiError: _error, Exception: _error, 404: _not_found, 405: _not_found})
    app.state.server = server
    return app
