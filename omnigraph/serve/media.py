"""POST /v1/audio/speech (text to audio) and /v1/images/generations (text to image), in the
shapes of OpenAI's APIs.

Speech: `response_format: wav` answers the whole file once the voice is done; `pcm` streams
the raw 16-bit samples as the voice makes them, and `stream_format: sse` sends them as
`speech.audio.delta` events; both start playing at the first sentence.
"""
from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from omnigraph.runtime.media import encode_media, pcm16
from omnigraph.serve.calls import Call, accept
from omnigraph.serve.wire import ApiError, b64, sse


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    input: str = Field(min_length=1)
    voice: str | None = None  # the pipeline's voice is its own; accepted for compatibility
    instructions: str | None = None
    response_format: Literal["wav", "pcm"] = "wav"
    speed: float = Field(1.0, ge=1.0, le=1.0)
    stream_format: Literal["audio", "sse"] = "audio"


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    prompt: str = Field(min_length=1)
    n: int = Field(1, ge=1, le=1)
    response_format: Literal["b64_json"] = "b64_json"
    size: str | None = None
    user: str | None = None


async def speech(request: Request) -> Response:
    s = request.app.state.server.surface
    server, body = await accept(request, SpeechRequest, s.speech, "does not turn text alone into audio")
    call = Call(server, "speech", {s.text_input: body.input})
    if body.stream_format == "sse":
        return StreamingResponse(_sse(call, s.audio_output), media_type="text/event-stream")
    if body.response_format == "pcm":
        rate = await _first_rate(call, s.audio_output)
        return StreamingResponse(_pcm(call, s.audio_output, rate), media_type="audio/pcm",
                                 headers={"X-Sample-Rate": str(rate.pop("rate"))})
    outputs = await call.outputs(request)
    data, mime = encode_media(outputs[s.audio_output], "audio")
    return Response(data, media_type=mime)


async def _first_rate(call: Call, port: str) -> dict[str, Any]:
    """Wait for the first audio (its sample rate goes in a header), keeping it for the body."""
    events = call.events()
    async for kind, name, value in events:
        if name == port and kind in ("chunk", "output"):
            return {"rate": value.sample_rate, "first": value, "events": events}
    raise ApiError(500, "the pipeline ended without audio", type="server_error")


async def _pcm(call: Call, port: str, state: dict[str, Any]) -> AsyncIterator[bytes]:
    yield pcm16(state["first"])
    async for kind, name, value in state["events"]:  # after a first chunk, the rest (its whole is not resent)
        if kind == "chunk" and name == port:
            yield pcm16(value)


async def _sse(call: Call, port: str) -> AsyncIterator[bytes]:
    streamed = False
    try:
        async for kind, name, value in call.events():
            if name != port:
                continue
            if kind == "chunk" or (kind == "output" and not streamed):
                streamed = streamed or kind == "chunk"
                yield sse({"type": "speech.audio.delta", "audio": b64(pcm16(value)),
                           "sample_rate": value.sample_rate})
    except ApiError as err:
        yield sse({"type": "error", "error": {"message": err.message, "type": err.type, "code": err.code}})
        return
    yield sse({"type": "speech.audio.done", "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}})


async def images(request: Request) -> Response:
    s = request.app.state.server.surface
    server, body = await accept(request, ImageRequest, s.images, "does not turn text alone into an image")
    shape = server.pipe.plan.output_types[s.image_output].shape or []
    made = f"{shape[-1]}x{shape[-2]}" if len(shape) >= 2 and shape[-1] and shape[-2] else None
    if body.size is not None and made is not None and body.size != made:
        raise ApiError(400, f"size: this pipeline makes {made} images", param="size")
    call = Call(server, "images", {s.text_input: body.prompt})
    outputs = await call.outputs(request)
    data = b64(encode_media(outputs[s.image_output], "image")[0])
    return JSONResponse({"created": int(time.time()), "data": [{"b64_json": data}]})
