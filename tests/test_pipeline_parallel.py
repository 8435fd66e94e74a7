"""Pipeline parallelism (issue 20) on LocalBackend: a tiny Llama's layers split over pp ranks
(processes, gloo between them), alone and with tensor parallelism inside each stage (tp=2 x
pp=2: 4 processes), gives the greedy tokens and hidden states of pp=1; the batch runs in
micro-batches; a rank killed mid-request fails those requests naming the stage and the
instance is rebuilt."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

import omnigraph
from omnigraph.api import compile_plan
from omnigraph.runtime.engine import RequestFailed

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from omnigraph.runtime.tp.pipeline import MICRO_BATCHES_ENV, layer_range  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_tensor_parallel import llm_spec  # noqa: E402

PROMPTS = [{"prompt": p} for p in ("hello there", "a", "the quick brown fox jumps", "pipeline parallel", "x y z")]


def burst(pipe: omnigraph.Pipeline) -> list[dict]:
    return [h.result(timeout=120) for h in [pipe.submit(p, timeout=120) for p in PROMPTS]]


def same(outs: list[dict], refs: list[dict]) -> None:
    for out, ref in zip(outs, refs):
        assert out["reply"] == ref["reply"]
        torch.testing.assert_close(out["hidden"], ref["hidden"], atol=1e-4, rtol=1e-4)


def test_layers_split_into_consecutive_even_stages() -> None:
    assert [list(layer_range(4, 2, s)) for s in range(2)] == [[0, 1], [2, 3]]
    assert [list(layer_range(5, 3, s)) for s in range(3)] == [[0, 1], [2, 3], [4]]


def test_a_pinned_pp_reaches_the_plan_as_rank_groups(tmp_path: Path) -> None:
    (inst,) = compile_plan(llm_spec(tmp_path, 2, pp=2)).stages()[0].instances
    assert (inst.tp, inst.pp, inst.ranks, len(inst.devices)) == (2, 2, 4, 4)
    placed = compile_plan(llm_spec(tmp_path, 1, pp=2), "h100x8").stages()[0].instances
    assert placed and all((i.pp, len(i.devices)) == (2, 2) for i in placed)  # the planner's replicas, each pp=2


@pytest.mark.parametrize(("tp", "pp"), [(1, 2), (2, 2)])
def test_pipeline_stages_give_the_tokens_of_one_rank(tmp_path: Path, tp: int, pp: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with omnigraph.load(llm_spec(tmp_path, 1), target=None) as pipe:
        single = [pipe.run(p, timeout=120) for p in PROMPTS]
    monkeypatch.setenv(MICRO_BATCHES_ENV, "3")  # these short rows would run whole: cut them anyway
    with omnigraph.load(llm_spec(tmp_path, tp, pp=pp), target=None) as pipe:
        leader = pipe.backend.workers["llm"].executor
        assert type(leader.inner.calls).__name__ == "PipelineCalls"
        same([pipe.run(p, timeout=120) for p in PROMPTS], single)
        same(burst(pipe), single)  # five rows a step: micro-batches through the stages


def test_a_dead_pipeline_rank_fails_its_requests_and_the_instance_is_rebuilt(tmp_path: Path) -> None:
    with omnigraph.load(llm_spec(tmp_path, 1, max_new_tokens=200), target=None) as pipe:
        single = [pipe.run(p, timeout=120) for p in PROMPTS[:2]]
    with omnigraph.load(llm_spec(tmp_path, 1, max_new_tokens=200, pp=2), target=None) as pipe:
        leader = pipe.backend.workers["llm"].executor
        handles = [pipe.submit(p, timeout=120) for p in PROMPTS[:2]]
        deadline = time.monotonic() + 60
        while len(leader.mirror.views) < len(handles) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(leader.followers.procs[0].pid, signal.SIGKILL)
        for h in handles:
            with pytest.raises(RequestFailed, match=r"stage 'llm' failed: RankFailed: ") as err:
                h.result(timeout=120)
            assert err.value.stage == "llm"
        same([pipe.run(p, timeout=120) for p in PROMPTS[:2]], single)
        assert leader.rebuilds == 1
