"""Small Python stages for runtime tests (referenced as `py:runtime_stages:NAME`)."""
from __future__ import annotations

import threading
import time


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
