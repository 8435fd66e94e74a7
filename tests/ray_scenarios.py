"""Scenarios run inside the test session's Ray cluster (see ray_harness.py).

Run as a script (under `unshare -n`), it starts Ray — fixed CPUs, a custom resource
`omni_gpu` standing in for GPUs — and answers each request line with one JSON line.
Each scenario returns what it observed; the tests assert on it.
"""
from __future__ import annotations

import itertools
import json
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
MARK = "@@omnigraph-ray@@"
RESOURCE = "omni_gpu"
SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {}
WAIT_S = 120.0  # every wait on a request is bounded


def scenario(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    SCENARIOS[fn.__name__] = fn
    return fn


# -- helpers ---------------------------------------------------------------------------
def fresh_ids() -> None:
    """Request ids seed sampling: give both backends the same ones."""
    import omnigraph.runtime.engine as engine

    engine._ids = itertools.count(1)


def image(seed: int = 0) -> Any:
    import numpy as np
    import torch

    return torch.from_numpy(np.random.default_rng(seed).integers(0, 255, (3, 40, 48), dtype=np.uint8))


def audio() -> Any:
    import numpy as np

    from omnigraph.runtime.values import Audio

    t = np.arange(16000) / 16000
    return Audio((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)


EXAMPLE_INPUTS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "speak": lambda: [{"prompt": "The capital of France is"}, {"prompt": "Name a colour."}],
    "tiny/vision_chat_tiny": lambda: [{"prompt": "What is this?", "image": image(0)},
                                      {"prompt": "Describe it.", "image": image(1)}],
    "tiny/moe_tiny": lambda: [{"prompt": "What do you hear?", "audio": audio(), "image": image(2)}],
    "tiny/refine_loop_tiny": lambda: [{"prompt": "Say hello."}, {"prompt": "Name a city."}],
    "tiny/bagel_route_tiny": lambda: [{"prompt": "What is this?", "image": image(3), "mode": "understand"},
                                      {"prompt": "a red fox", "image": image(3), "mode": "generate"}],
    "tiny/text_to_image_tiny": lambda: [{"prompt": "a lighthouse at dusk"}],
}


def differ(a: Any, b: Any) -> str | None:
    """How two outputs differ, or None when they are the same."""
    import numpy as np
    import torch

    from omnigraph.runtime.values import Audio

    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
            return f"{type(b).__name__} {getattr(b, 'shape', '')} vs tensor {tuple(a.shape)} {a.dtype}"
        return None if torch.equal(a, b) else f"tensors differ by up to {(a.double() - b.double()).abs().max():.3g}"
    if isinstance(a, Audio):
        same = isinstance(b, Audio) and a.sample_rate == b.sample_rate and np.array_equal(a.samples, b.samples)
        return None if same else "audio differs"
    return None if a == b else f"{b!r} vs {a!r}"


def run_all(pipe: Any, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [pipe.submit(i).result(WAIT_S) for i in inputs]  # one at a time: the same order of work


def tiny_llm_spec(tmp: Path, *, tp: int = 1, tokens: int = 16, extra: str = "", pp: int = 1) -> Path:
    path = tmp / f"llm_tp{tp}_pp{pp}_{tokens}.yaml"
    path.write_text(f"""
pipeline: tiny_llm
inputs: {{prompt: text}}
outputs: {{reply: {{from: llm.text, modality: text}}}}
stages:
  llm:
    kind: ar_llm
    model: "transformers:LlamaForCausalLM"
    inputs: [prompt]
    parallel: {{tp: {tp}, pp: {pp}}}
    params:
      weights: random
      max_new_tokens: {tokens}
      chat: false
      stream_chunk: token
      config: {{hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4,
               num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 512, tie_word_embeddings: true}}
{extra}""")
    return path


def chain_spec(tmp: Path) -> Path:
    path = tmp / "chain.og"
    path.write_text("""
pipeline chain(prompt: text) -> (out: text) {
  a = custom(prompt) { model: "py:runtime_stages:slow", outputs: {text: text} }
  b = custom(a.text) { model: "py:runtime_stages:slow", outputs: {text: text} }
  return out = b.text
}
""")
    return path


def ray_backend(plan: Any) -> Any:
    from omnigraph.runtime.ray_backend import RayBackend

    return RayBackend(plan, device_resource_name=RESOURCE)


# -- scenarios -------------------------------------------------------------------------
@scenario
def example(name: str) -> dict[str, Any]:
    """The example's outputs on RayBackend and on LocalBackend, same requests, same ids."""
    from omnigraph.api import compile_plan
    from omnigraph.runtime.local import LocalBackend

    plan = compile_plan(EXAMPLES / f"{name}.yaml")
    inputs = EXAMPLE_INPUTS[name]()
    fresh_ids()
    with LocalBackend(plan) as local:
        expected = run_all(local, inputs)
    fresh_ids()
    with ray_backend(plan) as remote:
        got = run_all(remote, inputs)
    mismatches = []
    for i, (want, have) in enumerate(zip(expected, got)):
        if set(want) != set(have):
            mismatches.append(f"request {i}: outputs {sorted(have)} vs {sorted(want)}")
        for key in want.keys() & have.keys():
            why = differ(want[key], have[key])
            if why:
                mismatches.append(f"request {i} output {key}: {why}")
    return {"requests": len(inputs), "outputs": sum(len(o) for o in got), "mismatches": mismatches}


@scenario
def stream_backpressure(capacity: int = 4, tokens: int = 64) -> dict[str, Any]:
    """A caller that stops reading a streamed output holds back the producing actor."""
    from omnigraph.api import compile_plan
    from omnigraph.runtime.local import LocalBackend

    with tempfile.TemporaryDirectory() as tmp:
        plan = compile_plan(tiny_llm_spec(Path(tmp), tokens=tokens))
    plan.stages()[0].batching.queue_capacity = capacity
    with LocalBackend(plan) as local:
        expected = local.run({"prompt": "go"}, timeout=WAIT_S)["reply"]
    with ray_backend(plan) as remote:
        handle = remote.submit({"prompt": "go"}, timeout=WAIT_S)
        channel = handle.request.output_streams["reply"]
        reader = channel.reader()  # the caller, not reading yet: the LLM is still prefilling
        time.sleep(1.5)  # the window fills and the actor stops decoding this request
        buffered = len(channel.chunks())
        steps = len(remote.stage_timings()["llm"])
        time.sleep(0.5)
        steps_paused = len(remote.stage_timings()["llm"]) - steps
        chunks: list[str] = []
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            new, ended = reader.poll(wait=1.0)
            chunks.extend(new)
            if ended:
                break
        reply = handle.result(WAIT_S)["reply"]
    return {"buffered_while_paused": buffered, "decode_steps_while_paused": steps_paused, "chunks": len(chunks),
            "joined_is_reply": "".join(chunks) == reply, "same_as_local": reply == expected}


@scenario
def kill_stage_actor(requests: int = 50) -> dict[str, Any]:
    """Kill stage b's actor with `requests` in flight: each ends once; the backend recovers."""
    import ray

    from omnigraph.api import compile_plan
    from omnigraph.runtime.engine import RequestFailed

    with tempfile.TemporaryDirectory() as tmp:
        plan = compile_plan(chain_spec(Path(tmp)))
    with ray_backend(plan) as remote:
        ends: Counter[int] = Counter()
        remote.engine.on_end.append(lambda r: ends.update([r.id]))
        handles = [remote.submit({"prompt": f"r{i}"}, timeout=WAIT_S) for i in range(requests)]
        inst = remote.instances["b"][0]
        deadline = time.monotonic() + WAIT_S
        while (sum(h.request.done for h in handles) < 3 or inst.load < 2) and time.monotonic() < deadline:
            time.sleep(0.005)
        in_flight, at_b = sum(not h.request.done for h in handles), inst.load
        ray.kill(inst.leader)
        ok, wrong, failed = 0, [], []
        for i, h in enumerate(handles):
            try:
                out = h.result(WAIT_S)["out"]
                ok += out == f"r{i}"
                if out != f"r{i}":
                    wrong.append(out)
            except RequestFailed as exc:
                failed.append({"stage": exc.stage, "message": str(exc)})
        after = remote.run({"prompt": "after"}, timeout=WAIT_S)
        time.sleep(0.2)  # a second ending would come late: give it the chance to show
        return {"in_flight_at_kill": in_flight, "at_b_when_killed": at_b, "ok": ok, "wrong": wrong, "failed": failed,
                "endings": [ends[h.id] for h in handles], "after": after, "retried": inst.retried,
                "rebuilds": inst.rebuilds}


@scenario
def timeout_and_cancel() -> dict[str, Any]:
    from omnigraph.api import compile_plan
    from omnigraph.runtime.engine import RequestFailed

    with tempfile.TemporaryDirectory() as tmp:
        plan = compile_plan(chain_spec(Path(tmp)))
    out: dict[str, Any] = {}
    with ray_backend(plan) as remote:
        try:
            remote.run({"prompt": "x"}, timeout=0.01)
        except RequestFailed as exc:
            out["timeout"] = str(exc)
        handle = remote.submit({"prompt": "y"})
        handle.cancel()
        try:
            handle.result(WAIT_S)
        except RequestFailed as exc:
            out["cancel"] = str(exc)
        out["after"] = remote.run({"prompt": "z"}, timeout=WAIT_S)
    return out


@scenario
def load_error() -> dict[str, Any]:
    from omnigraph.api import compile_plan
    from omnigraph.runtime.local import StageLoadError

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bad.og"
        path.write_text("""
pipeline bad(prompt: text) -> (out: text) {
  a = custom(prompt) { model: "py:runtime_stages:upper", outputs: {text: text} }
  b = custom(a.text) { model: "py:no_such_module_here:fn", outputs: {text: text} }
  return out = b.text
}
""")
        plan = compile_plan(path)
    try:
        ray_backend(plan).close()
    except StageLoadError as exc:
        return {"stage": exc.stage, "message": str(exc)}
    return {"stage": None, "message": "loaded"}


@scenario
def tensor_parallel(requests: int = 4) -> dict[str, Any]:
    """A tp=2 ar_llm on Ray: its placement, its outputs against tp=1 on LocalBackend, and a
    rank actor killed mid-burst."""
    import ray
    from ray.util import placement_group_table

    from omnigraph.api import compile_plan
    from omnigraph.runtime.engine import RequestFailed
    from omnigraph.runtime.local import LocalBackend

    with tempfile.TemporaryDirectory() as tmp:
        one = compile_plan(tiny_llm_spec(Path(tmp), tp=1, tokens=24))
        two = compile_plan(tiny_llm_spec(Path(tmp), tp=2, tokens=24))
    prompts = [{"prompt": f"question {i}"} for i in range(requests)]
    with LocalBackend(one) as local:
        expected = run_all(local, prompts)
    with ray_backend(two) as remote:
        got = run_all(remote, prompts)
        inst = remote.instances["llm"][0]
        group = remote.placement.groups["node0"]
        table = placement_group_table(group)
        where = [ray.get(inst.leader.where.remote()), *ray.get([f.where.remote() for f in inst.followers])]
        handles = [remote.submit({"prompt": f"burst {i}"}, timeout=WAIT_S) for i in range(8)]
        ray.kill(inst.followers[0])
        ended: list[str] = []
        for h in handles:
            try:
                h.result(WAIT_S)
                ended.append("ok")
            except RequestFailed as exc:
                ended.append(f"failed in {exc.stage}: {exc}")
        after = remote.run(prompts[0], timeout=WAIT_S)
        rebuilds = inst.rebuilds
    return {"rebuilds": rebuilds, "same_as_tp1": [g == e for g, e in zip(got, expected)], "devices": two.stages()[0].instances[0].devices,
            "bundles": {str(k): v for k, v in table["bundles"].items()}, "strategy": table["strategy"],
            "group": group.id.hex(), "bundle_nodes": sorted(set(table["bundles_to_node_id"].values())),
            "where": where, "burst": ended, "after_same": after == expected[0]}


@scenario
def split_prefill_decode(requests: int = 4) -> dict[str, Any]:
    """A split LLM stage on Ray (the prefill actor hands each request's KV to the decode actor
    through the object store) against the whole stage on LocalBackend."""
    from omnigraph.api import compile_plan
    from omnigraph.runtime.local import LocalBackend

    with tempfile.TemporaryDirectory() as tmp:
        whole = compile_plan(tiny_llm_spec(Path(tmp), tokens=24))
        split = compile_plan(tiny_llm_spec(Path(tmp), tokens=24), None,
                             plan_options={"split-prefill-decode": {"split": "llm=1:1"}})
    prompts = [{"prompt": f"question {i}"} for i in range(requests)]
    with LocalBackend(whole) as local:
        expected = run_all(local, prompts)
    with ray_backend(split) as remote:
        got = [h.result(WAIT_S) for h in [remote.submit(p) for p in prompts]]
        stages = sorted(remote.instances)
    return {"stages": stages, "same_as_whole": [g == e for g, e in zip(got, expected)]}


@scenario
def pipeline_parallel(requests: int = 4) -> dict[str, Any]:
    """A pp=2 ar_llm on Ray (a rank actor per pipeline stage) against pp=1 on LocalBackend."""
    from omnigraph.api import compile_plan
    from omnigraph.runtime.local import LocalBackend

    with tempfile.TemporaryDirectory() as tmp:
        one = compile_plan(tiny_llm_spec(Path(tmp), tokens=24))
        two = compile_plan(tiny_llm_spec(Path(tmp), tokens=24, pp=2))
    prompts = [{"prompt": f"question {i}"} for i in range(requests)]
    with LocalBackend(one) as local:
        expected = run_all(local, prompts)
    with ray_backend(two) as remote:
        got = [h.result(WAIT_S) for h in [remote.submit(p) for p in prompts]]
        inst = remote.instances["llm"][0]
        ranks = 1 + len(inst.followers)
    return {"ranks": ranks, "same_as_pp1": [g == e for g, e in zip(got, expected)]}


@scenario
def plan_switch(requests: int = 12) -> dict[str, Any]:
    """A plan family on Ray: one LLM instance -> two -> one under a stream of requests; none
    lost or failed, the same text as one instance alone."""
    import threading

    from omnigraph.api import compile_plan
    from omnigraph.runtime.plan import PlanVariant
    from omnigraph.runtime.replan import switch

    with tempfile.TemporaryDirectory() as tmp:
        plan = compile_plan(tiny_llm_spec(Path(tmp), tokens=24))
    inst = plan.nodes[0].instances[0]
    plan.family = [PlanVariant(name="one", mix="chat", rate=1, instances={"llm": [inst]}),
                   PlanVariant(name="two", mix="long", rate=1, instances={"llm": [inst, inst]})]
    prompts = [{"prompt": f"question {i % 4}"} for i in range(requests)]
    with ray_backend(plan) as remote:
        expected = [remote.submit(p).result(WAIT_S) for p in prompts[:4]]
        handles: list[Any] = []

        def stream() -> None:
            for p in prompts:
                handles.append(remote.submit(p))
                time.sleep(0.05)

        feeder = threading.Thread(target=stream)
        feeder.start()
        switch(remote, plan.variant("two"))
        counts = [len(remote.instances["llm"])]
        switch(remote, plan.variant("one"))
        counts.append(len(remote.instances["llm"]))
        feeder.join()
        got = [h.result(WAIT_S) for h in handles]
    return {"instances": counts, "requests": len(got),
            "same": [g == expected[i % 4] for i, g in enumerate(got)], "variant": remote.variant}


@scenario
def serve_over_ray(requests: int = 3) -> dict[str, Any]:
    """`omnigraph serve` on the Ray backend, on loopback: chat (whole and streamed) and the run
    endpoint answer what LocalBackend answers; a client that leaves mid-stream cancels."""
    import httpx

    from omnigraph.api import compile_plan
    from omnigraph.runtime.pipeline import Pipeline
    from omnigraph.serve.server import ServeOptions, Serving

    plan = compile_plan(tiny_llm_spec(Path(tempfile.mkdtemp()), tokens=400))
    prompts = [f"question {i}" for i in range(requests)]
    with Pipeline(plan) as local:
        expected = [local.run({"prompt": p}, settings={"llm": {"max_new_tokens": 8}})["reply"] for p in prompts]
    serving = Serving(lambda: Pipeline(plan, backend="ray", device_resource=RESOURCE), ServeOptions(port=0))
    thread = serving.start_thread()
    try:
        chat = f"{serving.url}/v1/chat/completions"
        whole = [httpx.post(chat, json={"messages": [{"role": "user", "content": p}], "max_tokens": 8},
                            timeout=WAIT_S).json()["choices"][0]["message"]["content"] for p in prompts]
        with httpx.stream("POST", chat, json={"messages": [{"role": "user", "content": prompts[0]}],
                                              "max_tokens": 8, "stream": True}, timeout=WAIT_S) as resp:
            deltas = [json.loads(line[6:]) for line in resp.iter_lines()
                      if line.startswith("data: {")]
        streamed = "".join(d["choices"][0]["delta"].get("content") or "" for d in deltas if d["choices"])
        run = httpx.post(f"{serving.url}/v1/pipelines/tiny_llm/run", timeout=WAIT_S,
                         json={"inputs": {"prompt": prompts[1]}, "settings": {"llm": {"max_new_tokens": 8}}}).json()
        with httpx.stream("POST", chat, json={"messages": [{"role": "user", "content": "long"}], "stream": True},
                          timeout=WAIT_S) as resp:
            next(resp.iter_lines())  # in flight; then the client goes away
        backend = serving.state.pipe.backend
        deadline = time.monotonic() + 60
        while backend.inflight() and time.monotonic() < deadline:
            time.sleep(0.05)
        metrics = httpx.get(f"{serving.url}/metrics").text
        return {"same_whole": whole == expected, "same_streamed": streamed == expected[0],
                "same_run": run["outputs"]["reply"] == expected[1], "inflight_after_disconnect": backend.inflight(),
                "cancel_counted": 'outcome="cancelled"} 1.0' in metrics}
    finally:
        serving.stop()
        thread.join(timeout=60)


def main() -> None:
    import ray

    ray.init(num_cpus=2, resources={RESOURCE: 8}, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    print(MARK + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["scenario"] == "exit":
            break
        try:
            answer = SCENARIOS[request["scenario"]](**request.get("args", {}))
        except Exception:
            answer = {"error": traceback.format_exc()}
        print(MARK + json.dumps(answer, default=str), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
