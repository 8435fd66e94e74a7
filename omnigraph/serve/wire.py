"""What crosses the wire: bounded JSON bodies, OpenAI's error JSON, base64 media, SSE frames.

Every error a client can cause is an `ApiError` answered as OpenAI answers
(`{"error": {"message", "type", "param", "code"}}`) with its HTTP status; a pipeline error is
mapped by its kind (a bad input 400, a full queue 429 with Retry-After, a deadline 504, a
stage failure 500 naming the stage). The server fetches nothing: media arrive inline.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from omnigraph.runtime.engine import QueueFull, RequestFailed
from omnigraph.runtime.media import decode_media
from omnigraph.runtime.request_settings import SettingsError

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Limits:
    """What one request may bring (bytes of body, messages, bytes of each media item)."""

    max_body_bytes: int = 32 << 20
    max_messages: int = 256
    max_media_bytes: int = 16 << 20
    timeout_s: float | None = 600.0  # a request's deadline inside the pipeline


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",  # noqa: A002
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def api_error(exc: BaseException) -> ApiError:
    """Any error a request can end with, as the status and body a client should see."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, SettingsError):
        return ApiError(400, exc.message, param=exc.field, code="invalid_setting")
    if isinstance(exc, QueueFull):
        return ApiError(429, f"the server is at capacity ({exc}); retry shortly", type="rate_limit_error",
                        code="queue_full", headers={"Retry-After": "1"})
    if isinstance(exc, RequestFailed):
        if exc.reason == "input":
            return ApiError(400, str(exc), code="invalid_input")
        if exc.reason == "timeout":
            return ApiError(504, str(exc), type="timeout_error", code="deadline_exceeded")
        if exc.reason == "cancelled":
            return ApiError(499, str(exc), type="cancelled", code="cancelled")
        where = f"stage '{exc.stage}' failed: " if exc.stage and "stage '" not in str(exc) else ""
        return ApiError(500, where + str(exc), type="server_error", param=exc.stage, code="stage_failed")
    return ApiError(500, f"{type(exc).__name__}: {exc}", type="server_error", code="internal_error")


async def read_json(request: Request, limits: Limits) -> Any:
    """The body as JSON, no larger than the limit (counted as it arrives, whatever the
    Content-Length says)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise ApiError(413, f"the body is {declared} bytes; the limit is {limits.max_body_bytes}",
                       code="body_too_large")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limits.max_body_bytes:
            raise ApiError(413, f"the body is over the limit of {limits.max_body_bytes} bytes", code="body_too_large")
    try:
        return json.loads(bytes(body) or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None


def parse(model: type[M], data: Any) -> M:
    """`data` as `model`; the first problem as a 400 naming its field."""
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        raise ApiError(400, f"{param}: {message}" if param else message, param=param,
                       code="unknown_field" if err["type"] == "extra_forbidden" else "invalid_value") from None


def b64decode(data: str, what: str, limits: Limits) -> bytes:
    if len(data) > limits.max_media_bytes * 4 // 3 + 4:
        raise ApiError(413, f"{what} is over the limit of {limits.max_media_bytes} bytes", code="media_too_large")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{what} is not valid base64", code="invalid_media") from None


def data_url(url: str, modality: str, what: str, limits: Limits) -> Any:
    """An inline `data:` URL as a value of `modality`; any other URL is refused."""
    if not url.startswith("data:"):
        raise ApiError(400, f"{what}: only data: URLs are accepted (the server fetches nothing); "
                            f"send the {modality} inline as base64", code="remote_url_refused")
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise ApiError(400, f"{what}: expected data:<mime>;base64,<data>", code="invalid_media")
    return media(b64decode(payload, what, limits), modality, what)


def media(data: bytes, modality: str, what: str) -> Any:
    try:
        return decode_media(data, modality)
    except Exception as exc:  # noqa: BLE001 - a file PIL or wave cannot read is the client's
        raise ApiError(400, f"{what}: not a readable {modality} file ({exc})", code="invalid_media") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sse(data: Any, event: str | None = None) -> bytes:
    """One Server-Sent Event (JSON data unless a str is given)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {event}\n" if event else "").encode() + f"data: {text}\n\n".encode()
