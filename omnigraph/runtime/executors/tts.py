"""`tts`: text → speech with a Piper voice (VITS, ONNX), model `onnx:PKG_OR_PATH`.

The voice is the .onnx file with its .onnx.json config beside it; piper-tts does
the phonemization (espeak-ng, offline) and runs the model with onnxruntime.

Continuous: the text is a whole string or a stream of chunks (an LLM writing its
answer). Each step polls every active request without waiting and speaks at most
one complete sentence per request, so a request whose text is slow to come, or
long, never holds back another request's audio. Text is held until a sentence
ends (. ! ? or a newline); what is left is spoken when the stream ends.

Within a step, requests go earliest playback deadline first: a request with no audio
yet first (its first sentence is its time to first audio), then by when the audio it
already has would finish playing, had playback started at its first chunk.
"""
from __future__ import annotations

import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnigraph.runtime.executor import Executor, WorkItem
from omnigraph.runtime.executors import audio_io, onnx_session
from omnigraph.runtime.executors.sentences import sentence_ends
from omnigraph.runtime.loaders import voice_files
from omnigraph.runtime.values import Audio

_MAX_CHARS = 400  # text without a sentence end is spoken in pieces of at most this
_SILENCE_S = 0.1  # what empty text becomes: a request always gets some audio


def split_sentences(text: str, final: bool) -> tuple[list[str], str]:
    """The complete sentences in `text`, and the rest to hold for more text (none when `final`)."""
    parts: list[str] = []
    start = 0
    for end in sentence_ends(text):
        if not final and end == len(text.rstrip()) and _may_go_on(text[:end]):
            break  # "costs 3." may go on as "costs 3.50"
        parts.append(text[start:end])
        start = end
    rest = text[start:]
    if final:
        parts.append(rest)
        rest = ""
    else:
        *more, rest = _wrap(rest)  # no sentence end in sight: do not wait forever
        parts.extend(more)
    sentences = [piece.strip() for part in parts for piece in _wrap(part)]
    return [s for s in sentences if s], rest


def _may_go_on(text: str) -> bool:
    """A number just before a final period, with nothing after: the text may be a decimal."""
    stripped = text.rstrip()
    return stripped.endswith(".") and len(stripped) > 1 and stripped[-2].isdigit() and stripped == text


def _wrap(text: str) -> list[str]:
    """`text` in pieces of at most _MAX_CHARS, broken at spaces where there are any."""
    pieces: list[str] = []
    while len(text) > _MAX_CHARS:
        cut = text.rfind(" ", 1, _MAX_CHARS)
        cut = cut if cut > 0 else _MAX_CHARS
        pieces.append(text[:cut])
        text = text[cut:]
    pieces.append(text)
    return pieces


@dataclass
class _Progress:
    """One request's progress through its text."""

    held: str = ""  # text after the last complete sentence
    sentences: deque[str] = field(default_factory=deque)  # complete, not yet spoken
    ended: bool = False  # all the text is in
    samples: int = 0  # audio made so far
    first_at: float | None = None  # time.monotonic() of its first audio


class TtsExecutor(Executor):

    def load(self) -> None:
        from piper import PiperConfig, PiperVoice, SynthesisConfig

        model, config_path = voice_files(self.node.model)
        voice = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        self.sample_rate: int = voice.sample_rate
        asked = self.params.get("sample_rate")
        if asked is not None and asked != self.sample_rate:  # checked before the model loads
            raise ValueError(f"sample_rate {asked} does not match the voice's {self.sample_rate} Hz "
                             f"({model.name}); drop the param or use a {asked} Hz voice")
        self.synthesis = SynthesisConfig(speaker_id=_speaker_id(self.params.get("speaker"), voice),
                                         length_scale=self.params.get("length_scale"),
                                         noise_scale=self.params.get("noise_scale"),
                                         noise_w_scale=self.params.get("noise_w"))
        seed = self.params.get("seed")
        # VITS samples noise (durations, waveform): a seed makes a voice's first words reproducible.
        session = onnx_session.session(model, self.ctx, self.ctx.seed if seed is None else int(seed))
        self.voice = PiperVoice(session=session, config=voice)

    def step(self, items: list[WorkItem]) -> bool:
        return audio_io.step_each(sorted(items, key=self._due), self._advance)

    def _due(self, item: WorkItem) -> float:
        """When the request's listener runs out of audio (see the module docstring)."""
        progress: _Progress | None = item.state.get("tts")
        if progress is None or progress.first_at is None:
            return -math.inf  # sorted() is stable: these keep their arrival order
        return progress.first_at + progress.samples / self.sample_rate

    def _advance(self, item: WorkItem) -> bool:
        progress: _Progress = item.state.setdefault("tts", _Progress())
        pieces, progress.ended = audio_io.take(item, "text")
        progress.held += "".join(str(p) for p in pieces)
        sentences, progress.held = split_sentences(progress.held, final=progress.ended)
        progress.sentences.extend(sentences)
        moved = bool(pieces)
        if progress.sentences:  # one per step: the other requests get their turn
            samples = self.speak(progress.sentences.popleft())
            if len(samples):
                audio_io.send(item, Audio(samples, self.sample_rate))
                progress.samples += len(samples)
                if progress.first_at is None:
                    progress.first_at = time.monotonic()
            moved = True
        if progress.ended and not progress.sentences:
            if progress.samples == 0:
                audio_io.send(item, audio_io.silence(_SILENCE_S, self.sample_rate))
            audio_io.end(item)
            moved = True
        return moved

    def speak(self, text: str) -> np.ndarray:
        """Float32 samples for `text` (empty when it has nothing to say, e.g. "...")."""
        chunks = [c.audio_float_array for c in self.voice.synthesize(text, self.synthesis)]
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def _speaker_id(speaker: int | str | None, voice: Any) -> int | None:
    """The speaker param as the voice's speaker id (None: the voice's default)."""
    if speaker is None:
        return None
    if isinstance(speaker, str) and not speaker.isdigit():
        if speaker not in voice.speaker_id_map:
            known = ", ".join(list(voice.speaker_id_map)[:10]) or "none: it has a single speaker"
            raise ValueError(f"the voice has no speaker '{speaker}' (speakers: {known})")
        return int(voice.speaker_id_map[speaker])
    sid = int(speaker)
    if not 0 <= sid < max(voice.num_speakers, 1):
        raise ValueError(f"speaker {sid} is out of range: the voice has {voice.num_speakers} speaker(s)")
    return sid


