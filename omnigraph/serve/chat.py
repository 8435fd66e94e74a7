"""POST /v1/chat/completions: messages in, the pipeline's text (and audio) out, as OpenAI's
chat API has it.

The last message (from the user) fills the pipeline's text input, its image_url and
input_audio parts fill the image and audio inputs; system messages and the earlier turns go
to the LLM stages that read the text input (their `system` and `history`), sampling fields to
every LLM stage, for this request only. With `stream: true` each chunk a stage streams is one
SSE delta as soon as it exists; audio deltas are base64 PCM16 (the time-to-first-audio path).
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
from omnigraph.serve.wire import ApiError, b64, b64decode, data_url, media, sse

AUDIO_TTL_S = 3600


class _Open(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class AudioOut(_Open):
    voice: str | None = None  # the pipeline's voice is its own; accepted for compatibility
    format: Literal["wav", "pcm16"] = "wav"


class StreamOptions(_Open):
    include_usage: bool = False


class ChatRequest(_Open):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOut | None = None
    n: int = Field(1, ge=1, le=1)
    user: str | None = None


def sampling(body: Any) -> dict[str, Any]:
    """The request's sampling fields as ar_llm params."""
    limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    out = {"temperature": body.temperature, "top_p": body.top_p, "max_new_tokens": limit, "seed": body.seed,
           "stop": [body.stop] if isinstance(body.stop, str) else body.stop}
    return {k: v for k, v in out.items() if v is not None}


def _text(content: str | list[dict[str, Any]] | None, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for i, part in enumerate(content):
        if part.get("type") != "text":
            raise ApiError(400, f"{where}.content.{i}: only the last user message may carry {part.get('type')} parts",
                           param=f"{where}.content")
        texts.append(str(part.get("text", "")))
    return "\n".join(texts)


def request_inputs(server: Any, body: ChatRequest) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The pipeline's inputs and per-stage settings for a chat request."""
    s = server.surface
    msgs = body.messages
    if len(msgs) > server.limits.max_messages:
        raise ApiError(400, f"messages: {len(msgs)} messages; the limit is {server.limits.max_messages}",
                       param="messages")
    if msgs[-1].role != "user":
        raise ApiError(400, "messages: the last message must come from the user", param="messages")
    system = "\n\n".join(_text(m.content, f"messages.{i}") for i, m in enumerate(msgs)
                         if m.role in ("system", "developer"))
    history = []
    for i, m in enumerate(msgs[:-1]):
        if m.role == "tool":
            raise ApiError(400, f"messages.{i}: tool messages are not supported", param=f"messages.{i}.role")
        if m.role in ("user", "assistant"):
            history.append({"role": m.role, "content": _text(m.content, f"messages.{i}")})
    inputs: dict[str, Any] = {}
    texts: list[str] = []
    last = msgs[-1].content
    for i, part in enumerate([{"type": "text", "text": last}] if isinstance(last, str) else last or []):
        where = f"messages.{len(msgs) - 1}.content.{i}"
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind in ("image_url", "input_audio"):
            modality = "image" if kind == "image_url" else "audio"
            name = next((n for n, m in s.media_inputs.items() if m == modality and n not in inputs), None)
            if name is None:
                raise ApiError(400, f"{where}: pipeline '{s.name}' takes no (more) {modality} input", param=where)
            inputs[name] = _part_value(part, kind, where, server)
        else:
            raise ApiError(400, f"{where}: unsupported content part type {kind!r}", param=where)
    inputs[s.text_input] = "\n".join(texts)
    missing = [n for n in s.media_inputs if n not in inputs]
    if missing:
        raise ApiError(400, f"pipeline '{s.name}' needs its {', '.join(missing)} input(s): send them as "
                            f"image_url / input_audio parts of the last user message", param="messages")
    settings: dict[str, dict[str, Any]] = {stage: sampling(body) for stage in s.llm_stages}
    if (system or history) and not s.prompt_stages:
        raise ApiError(400, f"pipeline '{s.name}' has no LLM stage reading the prompt to take a system "
                            "prompt or earlier turns; send one user message", param="messages")
    for stage in s.prompt_stages:
        settings[stage].update({"system": system} if system else {})
        settings[stage].update({"history": history} if history else {})
    return inputs, {k: v for k, v in settings.items() if v}


def _part_value(part: dict[str, Any], kind: str, where: str, server: Any) -> Any:
    if kind == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str):
            raise ApiError(400, f"{where}.image_url.url: expected a data: URL", param=where)
        return data_url(url, "image", where, server.limits)
    audio = part.get("input_audio") or {}
    if audio.get("format", "wav") != "wav":
        raise ApiError(400, f"{where}.input_audio.format: only wav is accepted", param=where)
    return media(b64decode(str(audio.get("data", "")), where, server.limits), "audio", where)


async def chat_completions(request: Request) -> Response:
    s = request.app.state.server.surface
    server, body = await accept(request, ChatRequest, s.chat,
                                "does not fit chat completions (it needs one text input and a text or audio output)")
    wants_audio = "audio" in (body.modalities or ["text"])
    if wants_audio and s.audio_output is None:
        raise ApiError(400, f"modalities: pipeline '{s.name}' has no audio output", param="modalities")
    if wants_audio and body.stream and body.audio is not None and body.audio.format != "pcm16":
        raise ApiError(400, "audio.format: streamed audio is pcm16", param="audio.format")
    inputs, settings = request_inputs(server, body)
    try:
        call = Call(server, "chat", inputs, settings)
    except ApiError as err:
        raise _in_chat_terms(err) from None
    reply = _Reply(server, call, body, wants_audio)
    if body.stream:
        return StreamingResponse(reply.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    outputs = await call.outputs(request)
    return JSONResponse(reply.whole(outputs))


_CHAT_FIELD = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "seed": "seed",
               "stop": "stop", "system": "messages", "history": "messages"}


def _in_chat_terms(err: ApiError) -> ApiError:
    """A stage setting's error named by the chat field it came from (`max_tokens`, not
    `thinker.max_new_tokens`)."""
    if err.code != "invalid_setting" or not err.param:
        return err
    param = err.param.split(".")[1] if "." in err.param else err.param
    field = _CHAT_FIELD.get(param, param)
    detail = err.message.split(": ", 1)[-1]
    return ApiError(400, f"{field}: {detail} (stage '{err.param.split('.')[0]}')", param=field, code=err.code)


class _Reply:
    def __init__(self, server: Any, call: Call, body: ChatRequest, wants_audio: bool) -> None:
        self.s, self.call, self.body, self.wants_audio = server.surface, call, body, wants_audio
        self.id = f"chatcmpl-{call.handle.id}"
        self.created = int(time.time())
        self.model = self.s.name
        self.limit = sampling(body).get("max_new_tokens")

    def usage(self) -> dict[str, int]:
        stages = [self.call.usage.get(st, {}) for st in (self.s.prompt_stages or self.s.llm_stages)]
        prompt = sum(u.get("prompt_tokens", 0) for u in stages)
        completion = sum(u.get("completion_tokens", 0) for u in stages)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def finish_reason(self) -> str:
        done = self.usage()["completion_tokens"]
        return "length" if self.limit is not None and done >= self.limit else "stop"

    def whole(self, outputs: dict[str, Any]) -> dict[str, Any]:
        text = outputs.get(self.s.text_output) if self.s.text_output else None
        message: dict[str, Any] = {"role": "assistant", "content": None if self.wants_audio else (text or "")}
        if self.wants_audio:
            audio = outputs[self.s.audio_output]
            fmt = self.body.audio.format if self.body.audio else "wav"
            data = pcm16(audio) if fmt == "pcm16" else encode_media(audio, "audio")[0]
            message["audio"] = {"id": f"audio_{self.call.handle.id}", "data": b64(data),
                                "expires_at": self.created + AUDIO_TTL_S, "transcript": text or ""}
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason()}],
                "usage": self.usage()}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    def _text_delta(self, piece: str) -> dict[str, Any]:
        if self.wants_audio:  # OpenAI's audio replies carry their text as the transcript
            return {"audio": {"id": f"audio_{self.call.handle.id}", "transcript": piece}}
        return {"content": piece}

    async def stream(self) -> AsyncIterator[bytes]:
        yield self._chunk({"role": "assistant", "content": "" if not self.wants_audio else None})
        streamed: set[str] = set()
        try:
            async for kind, name, value in self.call.events():
                if kind == "chunk" and name == self.s.text_output and value:
                    streamed.add(name)
                    yield self._chunk(self._text_delta(str(value)))
                elif kind == "chunk" and name == self.s.audio_output and self.wants_audio:
                    streamed.add(name)
                    yield self._chunk({"audio": {"id": f"audio_{self.call.handle.id}", "data": b64(pcm16(value)),
                                                 "expires_at": self.created + AUDIO_TTL_S,
                                                 "sample_rate": value.sample_rate}})
                elif kind == "output" and name not in streamed:  # outputs that do not stream come whole
                    if name == self.s.text_output and value:
                        yield self._chunk(self._text_delta(str(value)))
                    elif name == self.s.audio_output and self.wants_audio:
                        yield self._chunk({"audio": {"id": f"audio_{self.call.handle.id}", "data": b64(pcm16(value)),
                                                     "sample_rate": value.sample_rate}})
        except ApiError as err:
            yield sse({"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}})
            yield sse("[DONE]")
            return
        yield self._chunk({}, self.finish_reason())
        if self.body.stream_options is not None and self.body.stream_options.include_usage:
            yield sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                       "model": self.model, "choices": [], "usage": self.usage()})
        yield sse("[DONE]")
