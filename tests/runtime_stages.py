"""Small Python stages for runtime tests (referenced as `py:runtime_stages:NAME`)."""
from __future__ import annotations

import threading
import time

import torch


def upper(in0: str) -> dict:
    return {"text": in0.upper()}


def shout_if(in0: str) -> dict:
    """Fails for inputs containing 'boom': an injected stage exception."""
    if "boom" in in0.lower():
        raise ValueError(f"refusing {in0!r}")
    return {"text": in0 + "!"}


def slow(in0: str) -> dict:
    time.sleep(0.05)
    return {"text": in0}


def critic(in0: str) -> dict:
    """Accepts a draft once it has three exclamation marks."""
    return {"accept": float(in0.count("!") >= 3), "feedback": in0}


def exclaim(in0: str) -> dict:
    return {"text": in0 + "!"}


def describe(in0: str) -> dict:
    return {"text": f"understood: {in0}"}


def draw(in0: str) -> dict:
    return {"text": f"drawn: {in0}"}


class Counter:
    """Counts calls across threads (one instance per stage)."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, in0: str) -> dict:
        with self.lock:
            self.calls += 1
        return {"text": in0}


class TinyVocoder(torch.nn.Module):
    """Codec tokens [B, T] -> samples [B, T * hop]: an embedding and a ConvTranspose1d
    upsampler with random weights (the vocoder executor seeds them). Kernel == stride, so
    frames do not overlap and streamed chunks join to exactly the whole-input audio."""

    sample_rate = 16000

    def __init__(self, vocab: int = 32, channels: int = 8, hop: int = 64) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, channels)
        self.up = torch.nn.ConvTranspose1d(channels, 1, kernel_size=hop, stride=hop)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.up(self.embed(codes).transpose(1, 2))).squeeze(1)


def describe2(in0: str, in1: str) -> dict:
    return {"text": f"understood: {in0} ({in1})"}


def escape(in0: str) -> dict:
    """Raises what no `except Exception` catches, by name: the worker must survive it."""
    for name in ("SystemExit", "KeyboardInterrupt", "GeneratorExit"):
        if name in in0:
            raise {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt,
                   "GeneratorExit": GeneratorExit}[name](f"from the stage: {in0}")
    return {"text": in0}


def nap(in0: str) -> dict:
    """Sleeps `in0` seconds when it is a number (a step that overruns), else returns at once."""
    try:
        time.sleep(float(in0))
    except ValueError:
        pass
    return {"text": in0}
