"""A stage's code can do anything; the runtime must still end every request once and keep
serving: exceptions no `except Exception` catches, steps that never return, finished
requests that must not be kept alive, and inputs of the wrong type."""
from __future__ import annotations

import gc
import time
import weakref
from pathlib import Path

import pytest

import omnigraph
from omnigraph.runtime.engine import RequestFailed

pytest.importorskip("torch")

ESCAPE = """
pipeline e(prompt: text) -> (out: text) {
  a = custom(prompt) { model: "py:runtime_stages:escape", outputs: {text: text} }
  return out = a.text
}
"""
NAP = """
pipeline n(prompt: text) -> (out: text) {
  a = custom(prompt) { model: "py:runtime_stages:nap", outputs: {text: text} }
  return out = a.text
}
"""


def _load(tmp_path: Path, text: str, **options) -> omnigraph.Pipeline:
    path = tmp_path / "p.og"
    path.write_text(text)
    return omnigraph.load(path, **options)


@pytest.mark.parametrize("raised", ["SystemExit", "KeyboardInterrupt", "GeneratorExit"])
def test_a_stage_raising_base_exceptions_fails_only_its_requests(tmp_path: Path, raised: str) -> None:
    with _load(tmp_path, ESCAPE) as pipe:
        for _ in range(3):  # the worker survives every time
            with pytest.raises(RequestFailed) as info:
                pipe.run({"prompt": f"please {raised}"}, timeout=30)
            assert info.value.stage == "a" and raised in str(info.value)
            assert pipe.run({"prompt": "fine"}, timeout=30) == {"out": "fine"}
        assert pipe.backend.workers["a"].is_alive()


def test_a_step_past_the_limit_fails_its_requests_and_the_stage_recovers(tmp_path: Path) -> None:
    with _load(tmp_path, NAP, step_timeout=0.3) as pipe:
        stuck = pipe.submit({"prompt": "2.0"})
        with pytest.raises(RequestFailed, match="step timeout") as info:
            stuck.result(timeout=10)  # no request timeout: only the watchdog ends it
        assert info.value.stage == "a"
        blocked = pipe.submit({"prompt": "queued"})  # while the step still runs: fails at once
        with pytest.raises(RequestFailed, match="takes no work until it returns"):
            blocked.result(timeout=1)
        deadline = time.monotonic() + 10
        while pipe.backend.workers["a"].stuck is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pipe.run({"prompt": "after"}, timeout=10) == {"out": "after"}


def test_no_watchdog_when_asked(tmp_path: Path) -> None:
    with _load(tmp_path, NAP, step_timeout=None) as pipe:
        assert pipe.run({"prompt": "0.5"}, timeout=10) == {"out": "0.5"}
        assert pipe.backend.watchdog._thread is None


def test_finished_requests_are_not_held_until_their_deadline(tmp_path: Path) -> None:
    with _load(tmp_path, NAP) as pipe:
        refs = []
        for _ in range(3):
            handles = [pipe.submit({"prompt": f"r{i}"}, timeout=3600) for i in range(1000)]
            for h in handles:
                h.result(timeout=60)
            refs += [weakref.ref(h.request) for h in handles]
            del handles, h
        assert pipe.backend.deadlines.held() == 0
        assert len(pipe.backend.deadlines._heap) <= 64 + 1  # ended entries are dropped from the heap
        gc.collect()
        alive = sum(r() is not None for r in refs)
        assert alive <= 2 * pipe.backend.plan.stages()[0].batching.max_batch  # the last step's items at most


@pytest.mark.parametrize("value,problem", [
    (42, "text is a str"),
    (b"bytes", "text is a str"),
    (None, "text is a str"),
])
def test_inputs_are_type_checked_before_any_stage_runs(tmp_path: Path, value: object, problem: str) -> None:
    with _load(tmp_path, NAP) as pipe:
        handle = pipe.submit({"prompt": value})
        with pytest.raises(RequestFailed, match=f"input 'prompt': {problem}"):
            handle.result(timeout=5)
        assert handle.request.timings == {}  # nothing was dispatched


def test_input_checks_per_modality() -> None:
    import numpy as np
    import torch

    from omnigraph.runtime.values import Audio, input_problem

    assert input_problem("scalar", float("nan")) and input_problem("scalar", "3") and not input_problem("scalar", 3)
    assert input_problem("image", torch.zeros(3, 4)) and not input_problem("image", torch.zeros(3, 4, 4))
    assert input_problem("image", torch.zeros(3, 0, 4))
    assert input_problem("audio", np.zeros(10)) and not input_problem("audio", Audio(np.zeros(10, np.float32), 16000))
    assert input_problem("audio", Audio(np.zeros((2, 10), np.float32), 16000))
    assert not input_problem("tokens", [1, 2, 3]) and input_problem("tokens", ["a"])
    assert input_problem("embedding", "text") and not input_problem("embedding", torch.zeros(4, 8))
