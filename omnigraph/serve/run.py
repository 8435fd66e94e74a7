"""POST /v1/pipelines/{name}/run: the endpoint every pipeline has, whatever its inputs.

JSON body: `{"inputs": {...}, "settings": {stage: {param: value}}, "stream": false}`. Text
and scalar inputs are JSON values; tokens and embeddings nested lists; images and audio
`{"data": base64, "format": "png"|"wav"}` or a data: URL. Multipart: one field per input
(file parts for media), and optional `settings` (JSON) and `stream` fields. Outputs come back
as JSON (media as `{"format", "data"}` base64, tensors as `{"dtype", "shape", "data"}`), or with
`stream: true` as SSE events `chunk`, `output`, `error` and `done`.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from omnigraph.runtime.media import encode_media, pcm16
from omnigraph.runtime.values import Audio
from omnigraph.serve.calls import Call
from omnigraph.serve.wire import ApiError, b64, b64decode, data_url, media, parse, read_json, sse

MEDIA = ("image", "audio")


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: dict[str, Any] = Field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    stream: bool = False


async def run_pipeline(request: Request) -> Response:
    server = request.app.state.server
    name = request.path_params["name"]
    if name != server.surface.name:
        raise ApiError(404, f"no pipeline '{name}' here; this server runs '{server.surface.name}'",
                       code="pipeline_not_found")
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        body = await _multipart(request, server)
    else:
        body = parse(RunRequest, await read_json(request, server.limits))
    inputs = {k: _input(server, k, v) for k, v in body.inputs.items()}
    call = Call(server, "run", inputs, body.settings)
    if body.stream:
        return StreamingResponse(_events(call, server), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    outputs = await call.outputs(request)
    return JSONResponse({"pipeline": name, "outputs": {k: encode(v) for k, v in outputs.items()},
                         "usage": call.usage})


async def _multipart(request: Request, server: Any) -> RunRequest:
    limits = server.limits
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():  # the parser reads it whole: its size is known first
        raise ApiError(411, "a multipart body needs a Content-Length", code="length_required")
    if int(declared) > limits.max_body_bytes:
        raise ApiError(413, f"the body is {declared} bytes; the limit is {limits.max_body_bytes}", code="body_too_large")
    try:
        form = await request.form(max_files=64, max_fields=256, max_part_size=limits.max_media_bytes)
    except Exception as exc:  # noqa: BLE001 - python-multipart's parse errors are the client's
        raise ApiError(400, f"the multipart body cannot be read: {exc}", code="invalid_multipart") from None
    inputs: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    stream = False
    for key, value in form.multi_items():
        if key == "settings":
            settings = _json_field(str(value), "settings")
        elif key == "stream":
            stream = str(value).lower() in ("1", "true", "yes")
        elif hasattr(value, "read"):  # an uploaded file
            data = await value.read()
            if len(data) > limits.max_media_bytes:
                raise ApiError(413, f"{key}: over the limit of {limits.max_media_bytes} bytes", code="media_too_large")
            inputs[key] = _Upload(data)
        else:
            inputs[key] = str(value)
    return parse(RunRequest, {"inputs": inputs, "settings": settings, "stream": stream})


class _Upload(bytes):
    """A file part's bytes, read as the input's modality."""


def _json_field(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"{what}: not valid JSON ({exc})", param=what) from None


def _input(server: Any, name: str, value: Any) -> Any:
    ptype = server.pipe.plan.inputs.get(name)
    if ptype is None:
        raise ApiError(400, f"inputs.{name}: pipeline '{server.surface.name}' has no input '{name}' "
                            f"(its inputs: {', '.join(server.pipe.plan.inputs)})", param=f"inputs.{name}")
    where, modality = f"inputs.{name}", ptype.modality
    if isinstance(value, _Upload):
        return media(bytes(value), modality, where) if modality in MEDIA else bytes(value).decode("utf-8", "replace")
    if modality in MEDIA:
        if isinstance(value, str):
            return data_url(value, modality, where, server.limits)
        if isinstance(value, dict) and isinstance(value.get("data"), str):
            return media(b64decode(value["data"], where, server.limits), modality, where)
        raise ApiError(400, f"{where}: a {modality} is {{\"data\": base64, \"format\": ...}} or a data: URL",
                       param=where)
    if modality in ("tokens", "embedding", "latent") and isinstance(value, list):
        import torch

        try:
            return torch.tensor(value, dtype=torch.long if modality == "tokens" else torch.float32)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ApiError(400, f"{where}: not a rectangular list of numbers ({exc})", param=where) from None
    if modality == "scalar" and isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def encode(value: Any, piece: bool = False) -> Any:
    """An output (or a streamed piece of one) as JSON."""
    if isinstance(value, Audio):
        if piece:
            return {"format": "pcm16", "sample_rate": value.sample_rate, "data": b64(pcm16(value))}
        return {"format": "wav", "sample_rate": value.sample_rate, "data": b64(encode_media(value, "audio")[0])}
    if hasattr(value, "detach"):
        tensor = value.detach().cpu()
        if tensor.dtype.is_floating_point:
            tensor = tensor.float()
        if str(tensor.dtype) == "torch.uint8" and tensor.dim() == 3 and tensor.shape[0] in (1, 3, 4):
            return {"format": "png", "data": b64(encode_media(tensor, "image")[0])}
        return {"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape),
                "data": tensor.tolist()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


async def _events(call: Call, server: Any) -> AsyncIterator[bytes]:
    try:
        async for kind, name, value in call.events():
            if kind == "chunk":
                yield sse({"output": name, "data": encode(value, piece=True)}, event="chunk")
            elif kind == "output":
                yield sse({"output": name, "data": encode(value)}, event="output")
    except ApiError as err:
        yield sse({"message": err.message, "type": err.type, "param": err.param, "code": err.code}, event="error")
        return
    yield sse({"usage": call.usage}, event="done")
