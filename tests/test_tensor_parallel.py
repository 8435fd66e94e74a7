"""Tensor and expert parallelism on LocalBackend (rank 0 here, the other ranks spawned as
processes, gloo between them): tp=2 equals tp=1 within float tolerance for a tiny Llama
and for encoders, ep=2 equals ep=1 for a MoE block, and a rank that dies fails its
instance's requests with an error naming the stage while the other stages keep serving,
and the instance is then rebuilt (new ranks, newly loaded) and serves later requests as
before. (The same on the Ray backend: test_ray_backend.py.)"""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

import omnigraph
from omnigraph.api import compile_plan
from omnigraph.runtime.engine import RequestFailed
from omnigraph.runtime.local import StageLoadError
from omnigraph.runtime.plan import Instance, PortType, RuntimePlan

torch = pytest.importorskip("torch")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LLAMA = """{hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4,
           num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 512, tie_word_embeddings: true}"""


def llm_spec(tmp_path: Path, tp: int, max_new_tokens: int = 12, pp: int = 1) -> Path:
    path = tmp_path / f"llm{tp}_{pp}_{max_new_tokens}.yaml"
    path.write_text(f"""
pipeline: tp_llm
inputs: {{prompt: text}}
outputs:
  reply: {{from: llm.text, modality: text}}
  hidden: {{from: llm.hidden, modality: embedding}}
stages:
  llm:
    kind: ar_llm
    model: "transformers:LlamaForCausalLM"
    inputs: [prompt]
    parallel: {{tp: {tp}, pp: {pp}}}
    params: {{weights: random, max_new_tokens: {max_new_tokens}, chat: false, config: {LLAMA}}}
""")
    return path


def two_cpus(tmp_path: Path) -> str:
    path = tmp_path / "cpu2.yaml"
    path.write_text("""
target: cpu2
nodes:
  - name: node0
    devices:
      - {name: cpu0, type: cpu, memory_gib: 8, peak_tflops: 0.1, mem_bandwidth_gb_s: 10, dtypes: [f32]}
      - {name: cpu1, type: cpu, memory_gib: 8, peak_tflops: 0.1, mem_bandwidth_gb_s: 10, dtypes: [f32]}
    intra_node_gb_s: 20
inter_node_gb_s: 0
""")
    return str(path)


def burst(pipe: omnigraph.Pipeline, inputs: list[dict]) -> list[dict]:
    handles = [pipe.submit(i, timeout=120) for i in inputs]
    return [h.result(timeout=120) for h in handles]


def test_spec_parallel_request_reaches_the_plan(tmp_path: Path) -> None:
    (inst,) = compile_plan(llm_spec(tmp_path, 2)).stages()[0].instances
    assert (inst.tp, inst.ep, inst.ranks, inst.devices) == (2, 1, 2, ["node0:cpu0", "node0:cpu1"])
    (one,) = compile_plan(llm_spec(tmp_path, 1)).stages()[0].instances
    assert (one.tp, one.ranks, one.devices) == (1, 1, ["node0:cpu0"])
    # With a target the planner places the ranks, and keeps the degree the spec asked for.
    (placed,) = compile_plan(llm_spec(tmp_path, 2), two_cpus(tmp_path)).stages()[0].instances
    assert (placed.tp, placed.devices) == (2, ["node0:cpu0", "node0:cpu1"])


def test_tp2_llm_equals_tp1(tmp_path: Path) -> None:
    prompts = [{"prompt": p} for p in ("hello there", "a", "the quick brown fox jumps", "tensor parallel")]
    with omnigraph.load(llm_spec(tmp_path, 1), target=None) as pipe:  # unplanned: f32, like cpu2
        single = [pipe.run(p, timeout=120) for p in prompts]
    with omnigraph.load(llm_spec(tmp_path, 2), target=two_cpus(tmp_path)) as pipe:
        assert pipe.backend.workers["llm"].executor.comm.world == 2
        sharded = [pipe.run(p, timeout=120) for p in prompts]
        together = burst(pipe, prompts)  # continuous batching: requests join and leave mid-decode
    for ref, *others in zip(single, sharded, together):
        for out in others:
            assert out["reply"] == ref["reply"]
            assert out["hidden"].shape == ref["hidden"].shape
            torch.testing.assert_close(out["hidden"], ref["hidden"], atol=1e-4, rtol=1e-4)


def moe_plan(parallel: bool) -> RuntimePlan:
    """moe_tiny with the encoders' and the MoE block's outputs exposed, its encoders at tp=2
    and its experts at ep=2 when `parallel`."""
    plan = compile_plan(EXAMPLES / "tiny" / "moe_tiny.yaml")
    for name, source in (("audio_tokens", "audio_encoder.embeds"), ("image_tokens", "vision_encoder.embeds"),
                         ("mixed", "experts.y")):
        plan.outputs[name] = source
        plan.output_types[name] = PortType(modality="embedding")
    if parallel:
        for node in plan.stages():
            if node.kind == "encoder":
                node.instances = [Instance(devices=["node0:cpu0", "node0:cpu1"], tp=2)]
            elif node.kind == "moe":
                node.instances = [Instance(devices=["node0:cpu0", "node0:cpu1"], ep=2)]
    return plan


def test_tp2_encoders_and_ep2_experts_equal_single_rank() -> None:
    from omnigraph.runtime.values import Audio

    rng = np.random.default_rng(0)
    inputs = [{"prompt": f"q{i}", "image": torch.from_numpy(rng.integers(0, 255, (3, 32, 32), dtype=np.uint8)),
               "audio": Audio(rng.uniform(-0.5, 0.5, 16000).astype(np.float32), 16000)} for i in range(3)]
    with omnigraph.load(moe_plan(False)) as pipe:
        single = [pipe.run(i, timeout=120) for i in inputs]
    with omnigraph.load(moe_plan(True)) as pipe:
        experts = pipe.backend.workers["experts"].executor.inner.model
        assert len(experts.block.experts) == 2  # 4 experts, 2 on each rank
        sharded = burst(pipe, inputs)
    for ref, out in zip(single, sharded):
        for name in ("audio_tokens", "image_tokens", "mixed"):
            torch.testing.assert_close(out[name], ref[name], atol=1e-4, rtol=1e-4)
        assert out["reply"] == ref["reply"]


def test_stages_that_cannot_shard_are_named(tmp_path: Path) -> None:
    plan = compile_plan(EXAMPLES / "tiny" / "text_to_image_tiny.yaml")
    unet = next(s for s in plan.stages() if s.name == "unet")
    unet.instances = [Instance(devices=["node0:cpu0", "node0:cpu1"], tp=2)]
    with pytest.raises(StageLoadError, match=r"stage 'unet'.*diffusion stages are not tensor-parallel"):
        omnigraph.load(plan)
    plan = compile_plan(llm_spec(tmp_path, 1))
    plan.stages()[0].instances = [Instance(devices=["a:cpu0", "a:cpu1"], ep=2)]
    with pytest.raises(StageLoadError, match=r"stage 'llm'.*no experts"):
        omnigraph.load(plan)


def test_a_dead_rank_fails_its_instance_and_the_rest_serves(tmp_path: Path) -> None:
    path = tmp_path / "route.yaml"
    path.write_text(f"""
pipeline: tp_route
inputs: {{prompt: text, mode: text}}
outputs:
  answer: {{from: llm.text, modality: text}}
  echo: {{from: echo.text, modality: text}}
stages:
  pick: {{kind: route, inputs: {{data: prompt, key: mode}}, params: {{cases: [think, echo]}}}}
  llm:
    kind: ar_llm
    model: "transformers:LlamaForCausalLM"
    inputs: [pick.think]
    parallel: {{tp: 2}}
    params: {{weights: random, max_new_tokens: 200, chat: false, config: {LLAMA}}}
  echo: {{kind: custom, model: "py:runtime_stages:upper", inputs: [pick.echo], outputs: {{text: text}}}}
""")
    with omnigraph.load(path, target=None) as pipe:  # tp=2 on one CPU: only unplanned
        assert pipe.run({"prompt": "warm", "mode": "think"}, timeout=120)["answer"]
        ended: list[int] = []
        pipe.backend.engine.on_end.append(lambda r: ended.append(r.id))
        handles = [pipe.submit({"prompt": f"q{i}", "mode": "think"}, timeout=120) for i in range(6)]
        leader = pipe.backend.workers["llm"].executor
        wait_until(lambda: len(leader.mirror.views) == len(handles))  # all of them are decoding
        os.kill(leader.followers.procs[0].pid, signal.SIGKILL)
        for h in handles:
            with pytest.raises(RequestFailed) as err:
                h.result(timeout=120)
            assert err.value.stage == "llm" and "stage 'llm' failed: RankFailed: " in str(err.value)
        assert sorted(ended) == sorted(h.id for h in handles)  # each ended, once
        assert pipe.run({"prompt": "still here", "mode": "echo"}, timeout=30) == {"echo": "STILL HERE"}
        assert pipe.run({"prompt": "again", "mode": "think"}, timeout=120)["answer"]  # on the rebuilt instance
        assert leader.rebuilds == 1


def test_a_dead_rank_is_replaced_and_later_requests_are_served(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    prompts = [{"prompt": p} for p in ("hello there", "a", "the quick brown fox jumps", "tensor parallel")]
    with omnigraph.load(llm_spec(tmp_path, 1, max_new_tokens=200), target=None) as pipe:
        single = [pipe.run(p, timeout=120) for p in prompts]
    with omnigraph.load(llm_spec(tmp_path, 2, max_new_tokens=200), target=two_cpus(tmp_path)) as pipe:
        leader = pipe.backend.workers["llm"].executor
        before = [pipe.run(p, timeout=120) for p in prompts]
        ranks = list(leader.followers.procs)
        ended: list[int] = []
        pipe.backend.engine.on_end.append(lambda r: ended.append(r.id))
        handles = [pipe.submit(p, timeout=120) for p in prompts]
        wait_until(lambda: len(leader.mirror.views) == len(handles))  # all of them are decoding
        os.kill(ranks[0].pid, signal.SIGKILL)
        for h in handles:  # the requests under way fail, naming the stage and the rank
            with pytest.raises(RequestFailed, match=r"stage 'llm' failed: RankFailed: ") as err:
                h.result(timeout=120)
            assert err.value.stage == "llm"
        after = [pipe.run(p, timeout=120) for p in prompts]  # the instance is rebuilt, then serves them
        together = burst(pipe, prompts)
        ids = [h.id for h in handles]
        assert sorted(i for i in ended if i in ids) == sorted(ids)  # each ended, once
        assert leader.rebuilds == 1 and leader.broken is None and leader.comm.world == 2
        assert not ranks[0].is_alive() and all(p not in ranks for p in leader.followers.procs)
        ranks += leader.followers.procs
    for ref, *others in zip(single, before, after, together):
        for out in others:
            assert out["reply"] == ref["reply"]
            torch.testing.assert_close(out["hidden"], ref["hidden"], atol=1e-4, rtol=1e-4)
    err_text = capfd.readouterr().err
    assert "omnigraph: stage 'llm': tensor-parallel rank 1 of 2 " in err_text
    assert "rebuilding its 2 ranks" in err_text
    assert not [p for p in ranks if p.is_alive()]  # closing the backend ended every rank, the rebuilt ones too
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("omnigraph-llm-rank")]


def test_an_instance_that_cannot_be_rebuilt_stays_failed_saying_so(tmp_path: Path,
                                                                    capfd: pytest.CaptureFixture) -> None:
    with omnigraph.load(llm_spec(tmp_path, 2), target=two_cpus(tmp_path)) as pipe:
        leader = pipe.backend.workers["llm"].executor
        assert pipe.run({"prompt": "warm"}, timeout=120)["reply"]
        attempts: list[int] = []

        def broken_start(started):  # every rebuild fails, as a model that no longer loads would
            attempts.append(1)
            raise OSError("no space left on device")

        leader._start = broken_start
        os.kill(leader.followers.procs[0].pid, signal.SIGKILL)
        leader.followers.procs[0].join(30)
        gave_up = (r"stage 'llm' failed: RankFailed: the tensor-parallel instance of stage 'llm' is down: rebuilding "
                   r"its 2 ranks failed 3 times in a row; last cause: rebuilding failed: OSError: no space left")
        for _ in range(2):  # the first request finds the rank dead and the rebuilds failing; the next, a failed stage
            with pytest.raises(RequestFailed, match=gave_up):
                pipe.run({"prompt": "again"}, timeout=60)
        assert len(attempts) == 3
    err_text = capfd.readouterr().err
    assert "omnigraph: stage 'llm': tensor-parallel rank 1 of 2 died" in err_text
    assert "omnigraph: the tensor-parallel instance of stage 'llm' is down" in err_text
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("omnigraph-llm-rank")]


def wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
