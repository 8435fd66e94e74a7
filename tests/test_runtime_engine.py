"""The LocalBackend's dataflow with plain Python stages: wiring, routes, loops,
failures, timeouts, cancellation. (Model-backed executors are tested elsewhere.)"""
from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest

import omnigraph
from omnigraph.runtime.engine import RequestFailed

pytest.importorskip("torch")


def pipeline(tmp_path: Path, text: str) -> omnigraph.Pipeline:
    path = tmp_path / "p.og"
    path.write_text(text)
    return omnigraph.load(path)


CHAIN = """
pipeline chain(prompt: text) -> (out: text) {
  a = custom(prompt) { model: "py:runtime_stages:upper", outputs: {text: text} }
  b = custom(a.text) { model: "py:runtime_stages:shout_if", outputs: {text: text} }
  return out = b.text
}
"""


def test_chain_runs(tmp_path: Path) -> None:
    with pipeline(tmp_path, CHAIN) as p:
        assert p.run({"prompt": "hi"}) == {"out": "HI!"}


def test_stage_failure_under_load_ends_every_request_once(tmp_path: Path) -> None:
    with pipeline(tmp_path, CHAIN) as p:
        handles = [p.submit({"prompt": "boom" if i % 7 == 0 else f"r{i}"}) for i in range(50)]
        ok = failed = 0
        for i, h in enumerate(handles):
            try:
                assert h.result(timeout=30) == {"out": f"R{i}!"}
                ok += 1
            except RequestFailed as exc:
                assert i % 7 == 0 and exc.stage == "b" and "stage 'b' failed" in str(exc)
                failed += 1
        assert (ok, failed) == (42, 8)
        assert p.run({"prompt": "after"}) == {"out": "AFTER!"}  # still serving


def test_missing_input_is_an_error(tmp_path: Path) -> None:
    with pipeline(tmp_path, CHAIN) as p:
        with pytest.raises(RequestFailed, match="missing input"):
            p.run({"promt": "x"})


def test_timeout_and_cancel(tmp_path: Path) -> None:
    text = """
pipeline s(prompt: text) -> (out: text) {
  a = custom(prompt) { model: "py:runtime_stages:slow", outputs: {text: text} }
  b = custom(a.text) { model: "py:runtime_stages:slow", outputs: {text: text} }
  return out = b.text
}
"""
    with pipeline(tmp_path, text) as p:
        with pytest.raises(RequestFailed, match="timed out"):
            p.run({"prompt": "x"}, timeout=0.01)
        h = p.submit({"prompt": "y"})
        h.cancel()
        with pytest.raises(RequestFailed, match="cancelled"):
            h.result(timeout=5)
        assert p.run({"prompt": "z"}, timeout=10) == {"out": "z"}


def test_route_takes_one_branch(tmp_path: Path) -> None:
    text = """
pipeline r(prompt: text, mode: text) -> (answer: text, picture: text) {
  pick = route(data = prompt, key = mode) { cases: [understand, generate] }
  u = custom(pick.understand) { model: "py:runtime_stages:describe", outputs: {text: text} }
  g = custom(pick.generate) { model: "py:runtime_stages:draw", outputs: {text: text} }
  return answer = u.text, picture = g.text
}
"""
    with pipeline(tmp_path, text) as p:
        assert p.run({"prompt": "cat", "mode": "understand"}) == {"answer": "understood: cat"}
        assert p.run({"prompt": "cat", "mode": "generate"}) == {"picture": "drawn: cat"}
        with pytest.raises(RequestFailed, match="route 'pick'"):
            p.run({"prompt": "cat", "mode": "dance"})


def test_bounded_loop(tmp_path: Path) -> None:
    text = """
pipeline l(prompt: text) -> (answer: text) {
  loop polish(draft = prompt) max 5 {
    check = custom(draft) { model: "py:runtime_stages:critic", outputs: {accept: scalar, feedback: text} }
    edit = custom(check.feedback) { model: "py:runtime_stages:exclaim", outputs: {text: text} }
    until check.accept
    next draft = edit.text
  }
  return answer = polish.draft
}
"""
    with pipeline(tmp_path, text) as p:
        assert p.run({"prompt": "hi"}) == {"answer": "hi!!!"}
        assert p.run({"prompt": "done!!!"}) == {"answer": "done!!!"}


def test_many_concurrent_requests(tmp_path: Path) -> None:
    with pipeline(tmp_path, CHAIN) as p:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: p.run({"prompt": f"q{i}"}), range(40)))
        assert results == [{"out": f"Q{i}!"} for i in range(40)]


def test_route_skips_stages_only_the_other_branch_needs(tmp_path: Path) -> None:
    """`look` reads the pipeline input directly, but only the understand branch uses it."""
    text = """
pipeline r(prompt: text, mode: text) -> (answer: text, picture: text) {
  pick = route(data = prompt, key = mode) { cases: [understand, generate] }
  look = custom(prompt) { model: "py:runtime_stages:Counter", outputs: {text: text} }
  u = custom(pick.understand, look.text) { model: "py:runtime_stages:describe2", outputs: {text: text} }
  g = custom(pick.generate) { model: "py:runtime_stages:draw", outputs: {text: text} }
  return answer = u.text, picture = g.text
}
"""
    with pipeline(tmp_path, text) as p:
        counter = p.backend.workers["look"].executor.fn
        assert p.run({"prompt": "cat", "mode": "generate"}) == {"picture": "drawn: cat"}
        assert counter.calls == 0
        assert p.run({"prompt": "cat", "mode": "understand"}) == {"answer": "understood: cat (cat)"}
        assert counter.calls == 1
