"""Servers for the serve tests: real uvicorn on a free loopback port, in a thread, stopped
(drained) at the end; and a tiny random Llama pipeline that loads in a second."""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import omnigraph
from omnigraph.serve.server import ServeOptions, Serving
from omnigraph.serve.wire import Limits

TINY_LLM = """
pipeline: tiny_chat
inputs: {{prompt: text}}
outputs:
  reply: {{from: llm.text, modality: text}}
stages:
  llm:
    kind: ar_llm
    model: "transformers:LlamaForCausalLM"
    inputs: [prompt]
    params:
      weights: random
      max_new_tokens: {tokens}
      stream_chunk: token
      config: {{hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4,
               num_key_value_heads: 2, vocab_size: 300, max_position_embeddings: 4096}}
"""


def tiny_llm(tmp: Path, tokens: int = 16) -> Path:
    path = tmp / f"tiny_chat_{tokens}.yaml"
    path.write_text(TINY_LLM.format(tokens=tokens))
    return path


@contextlib.contextmanager
def serving(load: Callable[[], Any], *, api_key: str | None = None, limits: Limits | None = None,
            grace_s: float = 10.0) -> Iterator[Serving]:
    server = Serving(load, ServeOptions(port=0, api_key=api_key, grace_s=grace_s, limits=limits or Limits()))
    thread = server.start_thread()
    try:
        yield server
    finally:
        server.stop()
        thread.join(timeout=60)


def spec_server(spec: Path | str, **kw: Any) -> Any:
    max_inflight = kw.pop("max_inflight", 256)
    return serving(lambda: omnigraph.load(spec, max_inflight=max_inflight), **kw)


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return check()


class Gate:
    """A load function that waits until opened (to see the server while it loads)."""

    def __init__(self, load: Callable[[], Any]) -> None:
        self.load, self.event = load, threading.Event()

    def __call__(self) -> Any:
        self.event.wait(60)
        return self.load()
