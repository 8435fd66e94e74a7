"""The discrete-event simulator, request mixes, the plan glue, calibration and `omnigraph simulate`."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from omnigraph.cli import main
from omnigraph.errors import SpecError
from omnigraph.passes.planner.cost_types import StageWork
from omnigraph.passes.sim.calibrate import deshare
from omnigraph.passes.sim.model import fit_ar, fit_batch, make_requests, plan_graph
from omnigraph.passes.sim.engine import (
    SimEdge, SimPipeline, SimRequest, SimStage, SimulationError, burst_arrivals, poisson_arrivals, simulate,
)
from omnigraph.passes.planner.workload import PRESETS, mean_shape, parse_mix, sample_shapes

TINY = Path(__file__).resolve().parent.parent / "examples" / "tiny"
W = StageWork(tokens=16)


def one_stage(**kw) -> SimPipeline:
    stage = SimStage("s", batch_time=kw.pop("batch_time", lambda ws: 0.01), **kw)
    return SimPipeline([stage], [], {"x": ["s"]}, ["s"])


def requests(arrivals: list[float], stages: tuple[str, ...] = ("s",), work: StageWork = W) -> list[SimRequest]:
    return [SimRequest(i, t, {s: work for s in stages}) for i, t in enumerate(arrivals)]


# -- one queue ------------------------------------------------------------------------------

def test_single_server_matches_queueing_theory() -> None:
    low = simulate(one_stage(), requests(poisson_arrivals(10, 3000, seed=1)))
    assert low.throughput == pytest.approx(10, rel=0.05)  # unsaturated: what arrives
    assert low.stages["s"].utilisation == pytest.approx(10 * 0.01, abs=0.01)  # rho = rate x service

    half = simulate(one_stage(), requests(poisson_arrivals(50, 4000, seed=2)))
    pk_wait = 0.5 * 0.01 / (2 * (1 - 0.5))  # M/D/1 (Pollaczek-Khinchine) mean wait at rho = 0.5
    assert half.stages["s"].mean_queue_wait_s == pytest.approx(pk_wait, rel=0.2)

    over = simulate(one_stage(), requests(poisson_arrivals(300, 2000, seed=3)))
    assert over.throughput == pytest.approx(100, rel=0.02)  # saturated: the capacity, 1 / 10 ms
    assert over.stages["s"].utilisation == pytest.approx(1.0, abs=0.01)


def test_replicas_and_sublinear_batching_raise_throughput() -> None:
    burst = requests(burst_arrivals(120))
    one = simulate(one_stage(), burst).throughput
    assert simulate(one_stage(replicas=3), burst).throughput == pytest.approx(3 * one, rel=0.02)
    sublinear = (lambda ws: 0.01 + 0.001 * len(ws))
    alone = simulate(one_stage(batch_time=sublinear), burst)
    batched = simulate(one_stage(batch_time=sublinear, max_batch=8), burst)
    assert batched.throughput > 4 * alone.throughput
    assert batched.stages["s"].mean_batch == pytest.approx(8)
    linear = (lambda ws: 0.01 * len(ws))  # no gain from batching a linear stage
    assert simulate(one_stage(batch_time=linear, max_batch=8), burst).throughput == pytest.approx(100, rel=0.01)


def test_max_wait_holds_a_lone_job_then_runs_it() -> None:
    report = simulate(one_stage(max_batch=4, max_wait_s=0.002), requests([0.0]))
    assert report.jct.mean == pytest.approx(0.012)  # waited 2 ms for company, then 10 ms
    together = simulate(one_stage(max_batch=4, max_wait_s=0.002), requests([0.0, 0.0005, 0.001, 0.0015]))
    assert together.stages["s"].mean_batch == 4  # a full batch starts at once
    assert max(r.finish_s for r in together.per_request) == pytest.approx(0.0115)


# -- AR stages and streams ----------------------------------------------------------------------

def ar(**kw) -> SimStage:
    return SimStage("llm", mode="ar", max_batch=kw.pop("max_batch", 8),
                    prefill_time=lambda ws: 0.004 + 0.001 * len(ws), step_time=lambda n, ctx: 0.002 + 0.0002 * n, **kw)


def test_ar_continuous_batching_admits_between_steps() -> None:
    pipe = SimPipeline([ar()], [], {"p": ["llm"]}, ["llm"], text_output="llm")
    work = StageWork(tokens=32, decode_steps=49)
    two = simulate(pipe, [SimRequest(0, 0.0, {"llm": work}), SimRequest(1, 0.03, {"llm": work})])
    first, second = two.per_request
    solo = 0.005 + 49 * 0.0022  # prefill + decode steps, alone
    assert first.jct_s > solo  # slowed a little by company...
    assert second.finish_s < first.finish_s + solo * 0.5  # ...but the second never waited for the first to end
    assert second.ttft_s == pytest.approx(0.005, abs=0.0025)  # admitted at the next step boundary
    assert 1 < two.stages["llm"].mean_batch < 2

    burst = [SimRequest(i, 0.0, {"llm": work}) for i in range(32)]
    serial = simulate(SimPipeline([ar(max_batch=1)], [], {"p": ["llm"]}, ["llm"]), burst)
    batched = simulate(pipe, burst)
    assert batched.throughput > 4 * serial.throughput
    assert all(r.ttft_s is not None and r.ttft_s < r.jct_s for r in batched.per_request)


def speaking(stream: bool) -> SimPipeline:
    tts = SimStage("tts", max_batch=8, batch_time=lambda ws: 0.001 + 0.0002 * sum(w.tokens for w in ws))
    return SimPipeline([ar(chunk_tokens=10), tts], [SimEdge("llm", "tts", stream)], {"p": ["llm"]},
                       ["llm", "tts"], text_output="llm", audio_output="tts")


def test_a_stream_edge_starts_the_consumer_on_the_first_chunk() -> None:
    works = {"llm": StageWork(tokens=64, decode_steps=59), "tts": StageWork(tokens=60)}
    reqs = [SimRequest(i, t, works) for i, t in enumerate(poisson_arrivals(5, 40, seed=4))]
    streamed, whole = simulate(speaking(True), reqs), simulate(speaking(False), reqs)
    assert streamed.ttfa.mean < 0.5 * streamed.jct.mean
    assert streamed.ttfa.mean < 0.5 * whole.ttfa.mean
    assert whole.ttfa.mean == pytest.approx(whole.jct.mean)  # without a stream, audio comes all at the end
    assert streamed.stages["tts"].jobs == 6 * len(reqs)  # 60 tokens in chunks of 10


def test_a_lagging_stream_consumer_takes_what_has_come_in() -> None:
    seen: list[int] = []
    slow = SimStage("tts", batch_time=lambda ws: seen.extend(w.tokens for w in ws) or 0.05)
    pipe = SimPipeline([ar(chunk_tokens=10), slow], [SimEdge("llm", "tts", True)], {"p": ["llm"]}, ["tts"],
                       audio_output="tts")
    report = simulate(pipe, [SimRequest(0, 0.0, {"llm": StageWork(tokens=64, decode_steps=59),
                                                 "tts": StageWork(tokens=60)})])
    assert sum(seen) == 60 and len(seen) < 6  # later jobs took two chunks at once
    assert report.ttfa.mean < report.jct.mean


def test_skipped_stages_and_chains() -> None:
    pipe = SimPipeline([SimStage("a", batch_time=lambda ws: 0.01), SimStage("b", batch_time=lambda ws: 0.02)],
                       [SimEdge("a", "b")], {"x": ["a"]}, ["b"])
    full = simulate(pipe, [SimRequest(0, 0.0, {"a": W, "b": W})])
    assert full.jct.mean == pytest.approx(0.03)
    skipped = simulate(pipe, [SimRequest(0, 0.0, {"b": W})])  # a route took another way past `a`
    assert skipped.jct.mean == pytest.approx(0.02) and skipped.stages["a"].jobs == 0
    pipe.handoff_s = 0.001  # the runtime's dispatch and wake-up before each stage sees its work
    handed = simulate(pipe, [SimRequest(0, 0.0, {"a": W, "b": W})])
    assert handed.jct.mean == pytest.approx(0.032) and handed.stages["a"].mean_queue_wait_s == 0


def test_stages_sharing_a_device_slow_each_other() -> None:
    def pipe(capacity: float, shared: bool) -> SimPipeline:
        place = (("cpu",),) if shared else ()
        stages = [SimStage(n, batch_time=lambda ws: 0.01, placement=place) for n in ("a", "b")]
        return SimPipeline(stages, [SimEdge("a", "b")], {"x": ["a"]}, ["b"], device_capacity={"cpu": capacity})

    burst = requests(burst_arrivals(100), ("a", "b"))
    apart = simulate(pipe(1.0, False), burst).throughput
    time_sliced = simulate(pipe(1.0, True), burst).throughput
    wasteful = simulate(pipe(0.5, True), burst).throughput
    assert apart == pytest.approx(100, rel=0.02)  # a pipeline of two 10 ms stages
    assert time_sliced == pytest.approx(50, rel=0.02)  # one device does 20 ms of work per request
    assert wasteful < 0.6 * time_sliced
    alone = simulate(pipe(0.5, True), requests([0.0], ("a", "b")))
    assert alone.jct.mean == pytest.approx(0.02)  # one step at a time runs at full speed


# -- the report ---------------------------------------------------------------------------------

def test_goodput_counts_requests_within_the_slo() -> None:
    reqs = requests(poisson_arrivals(90, 500, seed=5))
    report = simulate(one_stage(), reqs, slo_s=0.03)
    assert 0 < report.goodput < report.throughput
    assert simulate(one_stage(), reqs, slo_s=1e6).goodput == report.throughput
    assert simulate(one_stage(), reqs).goodput == report.throughput
    assert report.jct.p50 <= report.jct.p90 <= report.jct.p99 <= report.jct.max
    assert json.loads(json.dumps(report.to_dict()))["stages"]["s"]["jobs"] == 500


def test_a_time_to_first_audio_target_counts_the_speech_behind_a_timely_reply() -> None:
    from omnigraph.passes.sim.sim_types import RequestReport, Slo, parse_slo

    assert parse_slo("ttft=2,ttfa=4") == Slo(ttft_s=2.0, ttfa_s=4.0) and str(Slo(ttft_s=2, ttfa_s=4)) == "ttft=2,ttfa=4"
    late_speech = RequestReport(0, 0.0, 30.0, ttft_s=0.5, ttfa_s=9.0)
    assert Slo(ttft_s=2.0).met(late_speech) and not Slo(ttft_s=2.0, ttfa_s=4.0).met(late_speech)
    assert Slo(ttfa_s=4.0).met(RequestReport(1, 0.0, 1.0, ttft_s=0.5, ttfa_s=None))  # a request that speaks nothing


def test_same_seed_same_report() -> None:
    pipe = speaking(True)
    works = {"llm": StageWork(tokens=64, decode_steps=39), "tts": StageWork(tokens=40)}
    run = (lambda seed: simulate(pipe, [SimRequest(i, t, works) for i, t in
                                        enumerate(poisson_arrivals(20, 60, seed))]))
    assert run(7).per_request == run(7).per_request
    assert run(7).per_request != run(8).per_request


@pytest.mark.parametrize("bad, message", [
    (lambda: one_stage(replicas=0), "has 0 replicas"),
    (lambda: one_stage(batch_time=lambda ws: 0.0), "returned 0.0"),
    (lambda: one_stage(batch_time=lambda ws: math.nan), "returned nan"),
    (lambda: SimPipeline([SimStage("a", batch_time=lambda ws: 1), SimStage("b", batch_time=lambda ws: 1)],
                         [SimEdge("a", "b"), SimEdge("b", "a")], {"x": ["a"]}, ["b"]), "cycle"),
    (lambda: SimPipeline([SimStage("a", mode="ar")], [], {"x": ["a"]}, ["a"]), "needs prefill_time and step_time"),
])
def test_bad_pipelines_are_refused_by_name(bad, message: str) -> None:
    with pytest.raises(SimulationError, match=message):
        simulate(bad(), [SimRequest(0, 0.0, {"a": W, "b": W} if message == "cycle" else
                                    {"a": W} if "prefill" in message else {"s": W})])


def test_a_runaway_simulation_stops() -> None:
    with pytest.raises(SimulationError, match="did not finish within 50 events"):
        simulate(one_stage(), requests(burst_arrivals(100)), max_events=50)
    with pytest.raises(SimulationError, match="rate"):
        poisson_arrivals(0, 10)


# -- request mixes -------------------------------------------------------------------------------

def test_mixes_parse_and_sample() -> None:
    mix = parse_mix("chat:0.7,long:0.3")
    assert [(s.name, s.weight) for s in mix] == [("chat", 0.7), ("long", 0.3)]
    assert parse_mix(None) == [PRESETS["chat"]]
    draws = sample_shapes(mix, 2000, seed=3)
    assert draws == sample_shapes(mix, 2000, seed=3)
    assert sum(s.name == "long" for s in draws) / 2000 == pytest.approx(0.3, abs=0.04)
    assert mean_shape(parse_mix("chat,long")).prompt_tokens == (256 + 4096) // 2


def test_mix_file(tmp_path: Path) -> None:
    path = tmp_path / "mix.yaml"
    path.write_text("- {preset: chat, weight: 3}\n- {name: doc, prompt_tokens: 4096, reply_tokens: 64}\n")
    chat, doc = parse_mix(str(path))
    assert chat.weight == 3.0 and chat.prompt_tokens == PRESETS["chat"].prompt_tokens
    assert (doc.name, doc.prompt_tokens, doc.reply_tokens, doc.weight) == ("doc", 4096, 64, 1.0)


@pytest.mark.parametrize("text, content, message", [
    ("chta:1", None, "unknown request preset 'chta'"),
    ("chat:0", None, "weight 0 must be a positive number"),
    ("chat:-2,long", None, "weight -2 must be a positive number"),
    ("chat:lots", None, "is not a number"),
    ("mix.yaml", "- {name: doc, prompt_tokns: 10}\n", "unknown request shape field 'prompt_tokns'"),
    ("mix.yaml", "- {name: doc, reply_tokens: 2.5}\n", "whole number"),
    ("mix.yaml", "- {name: doc, weight: 0}\n", "must be a positive number"),
    ("mix.yaml", "name: doc\n", "non-empty list"),
])
def test_bad_mixes_say_what_is_wrong(tmp_path: Path, text: str, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / text).write_text(content)
        text = str(tmp_path / text)
    with pytest.raises(SpecError, match=message) as err:
        parse_mix(text)
    if "chta" in text:
        assert "did you mean 'chat'" in err.value.render()
    if "prompt_tokns" in (content or ""):
        assert "did you mean 'prompt_tokens'" in err.value.render()


# -- fitting measured steps --------------------------------------------------------------------

def test_fits_recover_measured_curves() -> None:
    batch = fit_batch([(b, 0, 0.002 + 0.001 * b) for b in (1, 2, 4, 8) for _ in range(3)])
    assert batch(4) == pytest.approx(0.006) and batch(3) == pytest.approx(0.005)
    assert batch(16) == pytest.approx(0.018)  # continued along the last segment
    rows = [(n, 0, 0.001 + 0.0001 * n) for n in (1, 4, 16) for _ in range(3)]
    rows += [(n, n, 0.003 * n + 0.001 + 0.0001 * n) for n in (1, 4, 16) for _ in range(3)]  # prefill, then a step
    rows += [(4, 0, 0.5)]  # a stall now and then does not move the median
    prefill, step = fit_ar(rows)
    assert step(4, 0.0) == pytest.approx(0.0014)
    assert prefill([W] * 4) == pytest.approx(0.012)


def test_deshare_gives_each_overlapping_step_its_share() -> None:
    steps = {"a": [(1, 1, 2.0, 0.0)], "b": [(1, 1, 2.0, 0.0), (1, 1, 1.0, 5.0)]}
    alone = deshare(steps, capacity=1.0)
    assert alone["a"][0][2] == pytest.approx(1.0)  # two at once on a capacity of 1: half speed each
    assert alone["b"][1][2] == pytest.approx(1.0)  # alone: as measured
    assert deshare(steps, capacity=2.0)["a"][0][2] == pytest.approx(2.0)


# -- from a plan ---------------------------------------------------------------------------------

def _plan(name: str):
    from omnigraph.api import compile_plan

    return compile_plan(TINY / f"{name}.yaml", "cpu-local")


def test_plan_graph_looks_through_routes_and_loops() -> None:
    import random

    bagel = plan_graph(_plan("bagel_route_tiny"))
    assert bagel.routes == {"router": ["understand", "generate"]}
    rng = random.Random(0)
    taken = [tuple(bagel.choose(rng, {})) for _ in range(200)]
    understand, generate = ("vit", "connector", "understand"), ("gen_llm", "dit", "vae")
    assert set(taken) == {understand, generate}
    assert taken.count(understand) / 200 == pytest.approx(0.5, abs=0.1)
    assert set(bagel.choose(rng, {"router": {"generate": 0.0}})) == set(understand)

    loop = plan_graph(_plan("refine_loop_tiny"), loop_iters={"polish": 2})
    assert loop.stages["edit"].iters == 2 and loop.stages["writer"].iters == 1
    assert ("writer", False) in loop.stages["check"].reads and set(loop.outputs) == {"check", "edit"}
    with pytest.raises(SimulationError, match="expected iterations"):
        plan_graph(_plan("refine_loop_tiny"), loop_iters={"polish": 5})


def test_moe_tiny_plan_simulates_with_the_cost_rules() -> None:
    from omnigraph.passes.sim.model import sim_pipeline_from_plan
    from omnigraph.target import load_target

    mix = parse_mix("chat")
    pipe, work_fn = sim_pipeline_from_plan(_plan("moe_tiny"), load_target("cpu-local"), mix)
    modes = {s.name: s.mode for s in pipe.stages}
    assert modes == {"audio_encoder": "batch", "vision_encoder": "batch", "fuse": "batch", "experts": "batch",
                     "thinker": "ar"}
    assert {(e.src, e.dst) for e in pipe.edges} == {("audio_encoder", "fuse"), ("vision_encoder", "fuse"),
                                                   ("fuse", "experts"), ("experts", "thinker")}
    assert pipe.text_output == "thinker" and pipe.outputs == ["thinker"]
    reqs = make_requests(work_fn, mix, poisson_arrivals(5, 50, seed=1))
    assert reqs[0].works["thinker"].decode_steps == 15  # max_new_tokens 16, the first from the prefill
    report = simulate(pipe, reqs)
    assert report.ttft.mean < report.jct.mean
    assert 0 < report.stages["thinker"].utilisation <= 1


def test_cli_simulates_a_plan(tmp_path: Path, capsys) -> None:
    plan = tmp_path / "plan.json"
    assert main(["compile", str(TINY / "moe_tiny.yaml"), "--emit", "plan", "-o", str(plan)]) == 0
    capsys.readouterr()
    assert main(["simulate", str(plan), "--rate", "20", "--requests", "40", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["requests"] == 40 and doc["load"]["arrivals"] == "poisson"
    assert set(doc["stages"]) == {"audio_encoder", "vision_encoder", "fuse", "experts", "thinker"}
    assert doc["jct_s"]["p50"] <= doc["jct_s"]["p99"]

    assert main(["simulate", str(plan), "--burst", "-n", "16", "--slo", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "thinker" in out and "throughput" in out and "goodput" in out and "JCT" in out


def test_cli_user_errors_exit_2(tmp_path: Path, capsys) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(_plan("moe_tiny").to_json())
    assert main(["simulate", str(plan), "--rate", "5", "--mix", "chta:1"]) == 2
    err = capsys.readouterr().err
    assert "unknown request preset 'chta'" in err and "Traceback" not in err
    assert main(["simulate", str(plan)]) == 2
    assert "--rate" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text('{"version": 1}')
    assert main(["simulate", str(tmp_path / "junk.json"), "--burst"]) == 2
    assert "not a runtime plan" in capsys.readouterr().err


# -- the runtime's step records, which calibration reads ------------------------------------------

def test_local_backend_records_every_step(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import omnigraph

    spec = tmp_path / "chain.og"
    spec.write_text("""
pipeline chain(prompt: text) -> (out: text) {
  a = custom(prompt) { model: "py:runtime_stages:upper", outputs: {text: text} }
  b = custom(a.text) { model: "py:runtime_stages:shout_if", outputs: {text: text} }
  return out = b.text
}
""")
    with omnigraph.load(spec) as pipe:
        for h in [pipe.submit({"prompt": f"r{i}"}) for i in range(12)]:
            h.result(timeout=30)
        timings = pipe.backend.stage_timings()
        assert set(timings) == {"a", "b"}
        for rows in timings.values():
            assert sum(r.batch for r in rows) == 12  # each request ran in exactly one step of each stage
            assert all(1 <= r.batch <= 8 and r.seconds >= 0 for r in rows)
            assert [r.started for r in rows] == sorted(r.started for r in rows)
        pipe.backend.clear_stage_timings()
        assert pipe.backend.stage_timings() == {"a": [], "b": []}


def test_a_stage_waits_its_own_hand_off_and_calibration_measures_it() -> None:
    from omnigraph.api import compile_plan
    from omnigraph.passes.sim.calibrate import MeasuredRun, stage_handoffs

    a = SimStage("a", "batch", 1, 1, batch_time=lambda ws: 1.0, handoff_s=0.25)
    pipe = SimPipeline([a], [], {"x": ["a"]}, ["a"], handoff_s=0.0)
    report = simulate(pipe, [SimRequest(0, 0.0, {"a": StageWork(tokens=1)})])
    assert report.jct.mean == pytest.approx(1.25)
    plan = compile_plan(Path(__file__).resolve().parent.parent / "examples/tiny/vision_chat_tiny.yaml")
    fill = next(n for n in plan.stages() if n.name == "vision").batching.max_wait_ms / 1000
    run = MeasuredRun("r", [0.0], 1.0, 1.0, waits={"vision": [fill + 0.001, fill + 0.003, 5.0], "llm": [0.002]})
    got = stage_handoffs(plan, [run])  # a queueing wait (5 s) is not a hand-off; the fill window is modelled
    assert got["vision"] == pytest.approx(0.002) and got["llm"] == pytest.approx(0.002)
