"""Prefill/decode disaggregation and live migration (issue 18): the KV edge in the IR, the
split as the planner's choice under TTFT/TPOT targets (judged by the simulator), and the
runtime giving the same greedy tokens split, migrated or drained as whole."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import omnigraph  # noqa: E402
from omnigraph.compiler import compile_path  # noqa: E402
from omnigraph.dialect import KvType  # noqa: E402
from omnigraph.dialect.textio import print_module  # noqa: E402
from omnigraph.errors import OmnigraphError  # noqa: E402
from omnigraph.passes.sim.sim_types import SimulationError, Slo, parse_slo  # noqa: E402
from omnigraph.passes.sim.split_goodput import LlmTimes, judge_split  # noqa: E402
from omnigraph.passes.planner.cost_types import RequestShape, StageWork  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_ar_llm import prompts, write_tiny  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPLIT = {"split-prefill-decode": {"split": "llm=1:1"}}


def tiny(tmp_path: Path, params: str = "max_new_tokens: 24, stream_chunk: token") -> Path:
    return write_tiny(tmp_path, params)


def greedy(plan: omnigraph.RuntimePlan, inputs: list[torch.Tensor], **settings: dict) -> list[list[int]]:
    with omnigraph.load(plan) as pipe:
        handles = [pipe.submit({"prompt": p}, settings=settings or None) for p in inputs]
        return [h.result()["ids"].tolist() for h in handles]


# -- the IR -----------------------------------------------------------------------------------
def test_kv_type_prints_parses_and_sizes_a_token() -> None:
    from xdsl.parser import Parser

    from omnigraph.dialect.textio import make_context

    t = KvType("bf16", 30, 3, 64, 16)
    assert str(t) == "!omni.kv<bf16, layers 30, heads 3, dim 64, block 16>"
    assert Parser(make_context(), str(t)).parse_attribute() == t
    assert t.bytes_per_token == 2 * 30 * 3 * 64 * 2


def test_a_pinned_split_lowers_the_stage_into_two_ops_joined_by_a_kv_edge(tmp_path: Path) -> None:
    comp = compile_path(tiny(tmp_path), plan_options=SPLIT)
    text = print_module(comp.module)
    prefill = next(line for line in text.splitlines() if "@llm_prefill" in line)
    decode = next(line for line in text.splitlines() if "@llm " in line)
    assert '"ar_llm" (prompt = %prompt' in prefill and "-> (kv : !omni.kv<f32, layers 2, heads 2, dim 16, block 16>)" in prefill
    assert 'phase = "prefill"' in prefill and "prefill_hidden = false" in prefill
    assert "(kv = %llm_prefill_kv" in decode and 'phase = "decode"' in decode
    assert "-> (text :" in decode


def test_a_spec_cannot_set_the_planners_phase(tmp_path: Path) -> None:
    with pytest.raises(OmnigraphError, match="'phase' is the planner's choice") as info:
        omnigraph.compile_plan(tiny(tmp_path, 'max_new_tokens: 4, phase: "decode"'))
    assert "tiny.og:" in str(info.value)


def test_bad_split_and_slo_options_are_explained(tmp_path: Path) -> None:
    with pytest.raises(OmnigraphError, match="STAGE=PREFILL:DECODE"):
        omnigraph.compile_plan(tiny(tmp_path), None, plan_options={"split-prefill-decode": {"split": "llm=1"}})
    with pytest.raises(OmnigraphError, match="does not have"):
        omnigraph.compile_plan(tiny(tmp_path), None, plan_options={"split-prefill-decode": {"split": "talker=1:1"}})
    with pytest.raises(OmnigraphError, match="needs 3 replicas"):  # this machine gives the LLM one
        omnigraph.compile_plan(tiny(tmp_path), "cpu-local", plan_options={"split-prefill-decode": {"split": "llm=1:2"}})
    with pytest.raises(SimulationError, match="unknown target 'ttfb'"):
        parse_slo("ttfb=1")
    with pytest.raises(SimulationError, match="positive"):
        parse_slo("tpot=-1")
    assert parse_slo("ttft=0.5,tpot=0.05") == Slo(ttft_s=0.5, tpot_s=0.05)
    assert parse_slo("5") == Slo(e2e_s=5.0)


# -- the planner's choice -------------------------------------------------------------------------
def _times(prefill_per_token: float) -> LlmTimes:
    """A synthetic LLM: prefill costs its tokens, a decode step 5 ms plus a little per sequence."""
    return LlmTimes(prefill=lambda works: 1e-3 + prefill_per_token * sum(w.tokens for w in works),
                    step=lambda n, ctx: 5e-3 + 1e-4 * n, kv_bytes_per_token=100_000, link_gb_s=400)


def test_the_split_is_chosen_where_prefills_stall_decodes_and_never_where_it_loses() -> None:
    mix = [RequestShape(name="long", prompt_tokens=4096, reply_tokens=256)]
    works = [StageWork(tokens=4096, decode_steps=255)]
    tight = judge_split("llm", _times(2e-5), 4, 16, works, mix, Slo(ttft_s=2.0, tpot_s=0.0065), 20.0)
    assert tight.prefill > 0 and tight.gain > 1.05, tight.describe()
    loose = judge_split("llm", _times(2e-5), 4, 16, works, mix, Slo(ttft_s=10.0, tpot_s=1.0), 20.0)
    assert loose.prefill == 0, loose.describe()  # whole: every replica decodes, so more capacity
    assert loose.goodput[0] >= max(loose.goodput.values())


def test_compile_with_tpot_targets_splits_the_thinker_only_when_tight() -> None:
    spec = ROOT / "examples/qwen2_5_omni.yaml"

    def decision(slo: str) -> str:
        comp = compile_path(spec, target="h100x8", plan_options={"plan-parallel": {"mix": "long"},
                                                                 "split-prefill-decode": {"slo": slo, "mix": "long"}})
        return next(op.plan.split for op in comp.module.walk()
                    if getattr(op, "label", "").startswith("thinker") and getattr(op, "plan", None) is not None)

    assert decision("ttft=4,tpot=0.05").startswith("kept whole")
    assert "x the whole stage's goodput" in decision("ttft=4,tpot=0.007")


def test_the_simulator_replays_a_split_plan(tmp_path: Path) -> None:
    from omnigraph.passes.planner.workload import parse_mix
    from omnigraph.passes.sim.model import simulate_plan
    from omnigraph.target import load_target

    spec = ROOT / "examples/qwen2_5_omni.yaml"
    # Since small stages ride on TP groups, the whole plan's thinker runs tp2 (two groups, the
    # encoders on them) and keeps a 7 ms TPOT at this load (p99 4.8 ms); at 4.5 ms it misses
    # for one request in ten, which the split, its decodes never waiting on a prefill, does not.
    slo = parse_slo("ttft=4,tpot=0.0045")
    opts = {"plan-parallel": {"mix": "long"}}
    whole = omnigraph.compile_plan(spec, "h100x8", plan_options=opts)
    split = omnigraph.compile_plan(spec, "h100x8", plan_options={**opts, "split-prefill-decode": {"slo": str(slo),
                                                                                                  "mix": "long"}})
    assert [n.name for n in split.stages() if n.params.get("phase") == "prefill"] == ["thinker_prefill"]
    reports = [simulate_plan(p, load_target("h100x8"), parse_mix("long"), rate=3.0, requests=150, slo=slo)
               for p in (whole, split)]
    assert reports[1].tpot.p99 < reports[0].tpot.p99  # decodes no longer wait on prefills
    assert reports[1].goodput > reports[0].goodput


# -- the runtime ------------------------------------------------------------------------------------
def test_split_stage_gives_the_whole_stages_greedy_tokens(tmp_path: Path) -> None:
    path = tiny(tmp_path)
    whole, split = omnigraph.compile_plan(path), omnigraph.compile_plan(path, None, plan_options=SPLIT)
    pre = next(n for n in split.stages() if n.name == "llm_prefill")
    assert pre.settings_of == "llm" and list(pre.outputs) == ["kv"]
    assert greedy(split, prompts()) == greedy(whole, prompts())
    # Per-request settings addressed to the stage the spec named reach its decode half.
    assert [len(t) for t in greedy(split, prompts()[:2], llm={"max_new_tokens": 3})] == [3, 3]


def test_a_drained_instance_hands_its_running_requests_over_with_their_kv(tmp_path: Path) -> None:
    plan = omnigraph.compile_plan(tiny(tmp_path, "max_new_tokens: 32, stream_chunk: token"))
    expected = greedy(plan, prompts())
    two = plan.model_copy(deep=True)
    two.nodes[0].instances = [two.nodes[0].instances[0]] * 2
    with omnigraph.load(two) as pipe:
        handles = [pipe.submit({"prompt": p}) for p in prompts()]
        for kind, _, _ in handles[-1].events():
            if kind == "chunk":
                break
        moved = pipe.backend.drain("llm", 0)
        assert moved >= 1
        assert [h.result()["ids"].tolist() for h in handles] == expected
        assert pipe.backend.instances["llm"][0].load() == 0
        # Drained: new work goes to the other instance until it is taken back.
        h = pipe.submit({"prompt": prompts()[0]})
        assert h.result()["ids"].tolist() == expected[0]
        pipe.backend.undrain("llm", 0)
        with pytest.raises(ValueError, match="not another instance"):
            pipe.backend.migrate("llm", h.id, to=7)


def test_one_request_migrates_mid_generation_with_the_same_tokens(tmp_path: Path) -> None:
    plan = omnigraph.compile_plan(tiny(tmp_path, "max_new_tokens: 40, stream_chunk: token"))
    expected = greedy(plan, prompts()[3:4])
    two = plan.model_copy(deep=True)
    two.nodes[0].instances = [two.nodes[0].instances[0]] * 2
    with omnigraph.load(two) as pipe:
        h = pipe.submit({"prompt": prompts()[3]})
        chunks = 0
        for kind, _, _ in h.events():
            chunks += kind == "chunk"
            if chunks == 3:
                break
        workers = pipe.backend.instances["llm"]
        source = next(i for i, w in enumerate(workers) if any(x.request_id == h.id for x in w.active))
        assert pipe.backend.migrate("llm", h.id, to=1 - source)
        assert [h.result()["ids"].tolist()] == expected
        assert not pipe.backend.migrate("llm", h.id)  # it ended: nothing to move


def test_a_split_plan_predicts_what_its_halves_sustain() -> None:
    spec = ROOT / "examples/qwen2_5_omni.yaml"
    opts = {"plan-parallel": {"mix": "long"}}
    whole = compile_path(spec, target="h100x8", plan_options=opts)
    split = compile_path(spec, target="h100x8", plan_options={
        **opts, "split-prefill-decode": {"slo": "ttft=4,tpot=0.007", "mix": "long"}})

    def rate(comp) -> float:  # noqa: ANN001
        return next(op.plan.pipeline_rate for op in comp.module.walk() if getattr(op, "plan", None) is not None)

    from omnigraph.dialect.checks import params_of

    halves = [op for op in split.module.walk()
              if getattr(op, "plan", None) is not None and params_of(op).get("phase", "whole") != "whole"]
    assert len(halves) == 2 and len({op.plan.pipeline_rate for op in split.module.walk()
                                     if getattr(op, "plan", None) is not None}) == 1
    assert rate(split) <= min(0.9 * op.plan.rate * op.parallel.get("replicas") for op in halves) + 1e-9
    assert rate(split) <= rate(whole)  # raw throughput; the split pays in goodput under the targets
