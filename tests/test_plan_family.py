"""Plan families and online re-planning (issue 18): one plan per request mix, checked by the
simulator; switching plans under a steady stream of requests loses and fails none; the
replanner's hysteresis; the simulator replaying a switch."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import omnigraph  # noqa: E402
from omnigraph.errors import OmnigraphError  # noqa: E402
from omnigraph.runtime.plan import SERVES_TIE, Instance, PlanVariant, RuntimePlan  # noqa: E402
from omnigraph.runtime.replan import ReplanPolicy, Replanner, score, switch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_ar_llm import prompts, write_tiny  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def tiny_family(tmp_path: Path, tokens: int = 24) -> RuntimePlan:
    """The tiny LLM with a family of two variants: one instance, and two."""
    plan = omnigraph.compile_plan(write_tiny(tmp_path, f"max_new_tokens: {tokens}, stream_chunk: token"))
    inst = plan.nodes[0].instances[0]
    plan.family = [PlanVariant(name="one", mix="chat", rate=1, instances={"llm": [inst]}),
                   PlanVariant(name="two", mix="long", rate=1, instances={"llm": [inst, inst]})]
    return plan


def test_compile_mixes_plans_one_variant_per_mix_checked_by_the_simulator(tmp_path: Path) -> None:
    from omnigraph.plan_family import compile_family, split_mixes

    plan = compile_family(ROOT / "examples/vision_chat.yaml", "h100x8", split_mixes("chat,long"))
    assert [v.name for v in plan.family] == ["chat", "long"]
    chat, long = plan.family
    assert {len(chat.instances["llm"]), len(long.instances["llm"])} != {len(chat.instances["llm"])}  # they differ
    assert all(set(v.serves) == {"chat", "long"} and all(r > 0 for r in v.serves.values()) for v in plan.family)
    # `serves` is what a variant serves run saturated: its own mix at least at the rate it was
    # planned for (a run offered less serves the offer, whichever the plan, and ranks nothing)
    assert all(v.serves[v.mix] >= v.rate for v in plan.family)
    assert plan.best_for("long").serves["long"] >= max(v.serves["long"] for v in plan.family) / (1 + SERVES_TIE)
    assert RuntimePlan.from_json(plan.to_json()).family == plan.family
    with pytest.raises(OmnigraphError, match="two mixes or more"):
        split_mixes("chat")


def test_a_switch_under_a_steady_stream_loses_and_fails_nothing(tmp_path: Path) -> None:
    plan = tiny_family(tmp_path)
    ps = prompts()
    with omnigraph.load(plan) as pipe:
        expected = [pipe.run({"prompt": p})["ids"].tolist() for p in ps]
        sent = []
        stop = threading.Event()

        def stream() -> None:
            for i in range(10_000):  # bounded; stopped long before
                if stop.is_set():
                    return
                sent.append((i % len(ps), pipe.submit({"prompt": ps[i % len(ps)]})))
                time.sleep(0.01)

        feeder = threading.Thread(target=stream)
        feeder.start()
        time.sleep(0.4)
        assert switch(pipe.backend, plan.variant("two")) == 0
        assert len(pipe.backend.instances["llm"]) == 2 and pipe.backend.variant == "two"
        time.sleep(0.4)
        switch(pipe.backend, plan.variant("one"))  # the instance it drops hands its requests on
        assert len(pipe.backend.instances["llm"]) == 1 and len(plan.nodes[0].instances) == 1
        time.sleep(0.2)
        stop.set()
        feeder.join()
        assert len(sent) > 20
        assert [h.result(60)["ids"].tolist() for _, h in sent] == [expected[i] for i, _ in sent]


def test_the_replanner_switches_only_after_a_better_variant_wins_hold_windows(tmp_path: Path) -> None:
    plan = tiny_family(tmp_path)
    with omnigraph.load(plan) as pipe:
        r = Replanner(pipe.backend, ReplanPolicy(window_s=3600, hold=2, margin=0.2))
        assert score(plan.variant("two"), {"llm": 1.5}) > score(plan.variant("one"), {"llm": 1.5})
        assert r.step({"llm": 1.5}) is None  # one window: not yet
        assert r.step({"llm": 0.01}) is None  # idle: nothing decides, the streak resets
        assert r.step({"llm": 1.5}) is None
        done = r.step({"llm": 1.5})
        assert done is not None and (done.frm, done.to) == ("one", "two")
        assert len(pipe.backend.instances["llm"]) == 2
        assert r.step({"llm": 1.5}) is None  # already there
        assert pipe.run({"prompt": prompts()[0]})["ids"].numel() > 0


def test_replan_is_refused_without_a_family_or_on_ray(tmp_path: Path) -> None:
    plan = tiny_family(tmp_path)
    with pytest.raises(OmnigraphError, match="family"):
        omnigraph.load(plan.model_copy(update={"family": []}), replan="")
    with pytest.raises(OmnigraphError, match="unknown setting 'windw'"):
        omnigraph.load(plan, replan="windw=3")
    with omnigraph.load(plan, replan="window=60,hold=2") as pipe:
        assert pipe.replanner is not None and pipe.backend.variant == "one"


def test_the_simulator_replays_a_plan_switch() -> None:
    from omnigraph.passes.planner.cost_types import StageWork
    from omnigraph.passes.sim.engine import SimPipeline, SimRequest, SimStage, simulate
    from omnigraph.passes.sim.switching import PlanSwitch

    stage = SimStage("enc", "batch", 1, 1, batch_time=lambda ws: 0.1)
    pipeline = SimPipeline([stage], [], {"x": ["enc"]}, ["enc"])
    requests = [SimRequest(i, i * 0.05, {"enc": StageWork(tokens=1)}) for i in range(100)]  # 20/s into 10/s
    alone = simulate(pipeline, requests)
    grown = simulate(pipeline, requests, switches=[PlanSwitch(1.0, {"enc": ((), ())}, load_s=0.5)])
    assert grown.makespan_s < alone.makespan_s * 0.75  # a second replica from t=1.5 s
    assert alone.makespan_s == pytest.approx(10.0, rel=0.02)


def test_a_variant_serving_a_mix_within_the_noise_of_the_planned_one_does_not_take_it_over() -> None:
    inst = Instance(devices=["node0:gpu0"])
    one, two = {"llm": [inst]}, {"llm": [inst, inst]}
    plan = RuntimePlan(pipeline="p", inputs={}, outputs={}, output_types={}, nodes=[], family=[
        PlanVariant(name="chat", mix="chat", rate=1, instances=one, serves={"chat": 10.0, "long": 1.0}),
        PlanVariant(name="long", mix="long", rate=1, instances=two, serves={"chat": 10.2, "long": 2.0}),
    ])
    assert plan.best_for("chat").name == "chat"  # 2% more is a tie
    plan.family[1].serves["chat"] = 11.0
    assert plan.best_for("chat").name == "long" and plan.best_for("long").name == "long"
    with pytest.raises(ValueError, match="no variant for mix 'image'"):
        plan.best_for("image")


def test_the_simulator_times_a_switched_in_replica_in_its_own_config() -> None:
    from omnigraph.passes.planner.cost_types import StageWork
    from omnigraph.passes.sim.engine import SimPipeline, SimRequest, SimStage, simulate
    from omnigraph.passes.sim.switching import PlanSwitch

    slow = SimStage("enc", "batch", 1, 1, batch_time=lambda ws: 0.1, placement=(("d0",),))
    fast = SimStage("enc", "batch", 1, 1, batch_time=lambda ws: 0.025, placement=(("d0",),))
    pipeline = SimPipeline([slow], [], {"x": ["enc"]}, ["enc"])
    requests = [SimRequest(i, i * 0.05, {"enc": StageWork(tokens=1)}) for i in range(100)]  # 20/s into 10/s
    alone = simulate(pipeline, requests)
    kept = simulate(pipeline, requests, switches=[PlanSwitch(1.0, {"enc": (("d0",),)}, load_s=5.0)])
    assert kept.makespan_s == alone.makespan_s  # same devices, same config: the replica stays
    moved = simulate(pipeline, requests, switches=[PlanSwitch(1.0, {"enc": (("d1",),)}, load_s=5.0)])
    assert moved.makespan_s == pytest.approx(alone.makespan_s, abs=0.1)  # d0 serves on while d1 loads
    faster = simulate(pipeline, requests, switches=[PlanSwitch(1.0, {"enc": (("d0",),)}, load_s=0.5,
                                                               specs={"enc": fast})])
    assert faster.makespan_s < alone.makespan_s * 0.6  # reloaded in the new config, 40/s from t=1.5 s


def test_following_a_family_into_another_config_serves_as_that_variant_does() -> None:
    from omnigraph.plan_family import as_plan, compile_family, simulate_shift

    plan = compile_family(ROOT / "examples/vision_chat.yaml", "h100x8", ["chat", "long"], check=False)
    tp3 = Instance(devices=["node0:gpu2", "node0:gpu3", "node0:gpu4"], tp=3)
    wide = plan.family[1].model_copy(update={"instances": {**plan.family[1].instances, "llm": [tp3]},
                                             "max_batch": {**plan.family[1].max_batch, "llm": 8},
                                             "serves": {"long": 1e9}})
    plan.family[1] = wide
    phases = [("long", 50.0, 2.0)]
    followed = simulate_shift(plan, "h100x8", phases, follow=True)  # switches to `wide` at t=0
    static = simulate_shift(as_plan(plan, wide), "h100x8", phases, follow=False)
    assert followed.makespan_s == pytest.approx(static.makespan_s, rel=1e-9)
    assert followed.jct.p50 == pytest.approx(static.jct.p50, rel=1e-9)


def test_the_command_line_plans_a_family_and_explains_misuse(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from omnigraph.cli import main

    spec = str(ROOT / "examples/vision_chat.yaml")
    out = tmp_path / "family.json"
    assert main(["compile", spec, "--target", "h100x8", "--mixes", "chat,long", "--emit", "plan", "-o", str(out)]) == 0
    assert [v.name for v in RuntimePlan.from_json(out.read_text()).family] == ["chat", "long"]
    assert main(["compile", spec, "--target", "h100x8", "--mixes", "chat", "--emit", "plan"]) == 2
    assert "two mixes or more" in capsys.readouterr().err
    assert main(["compile", spec, "--mixes", "chat,long", "--emit", "ir"]) == 2
    assert "--target and --emit plan" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["compile", spec, "--target", "h100x8", "--slo", "ttft=1,tpot=fast"])
    assert exit_.value.code == 2 and "tpot must be seconds" in capsys.readouterr().err


def test_a_variant_that_cannot_load_leaves_the_plan_serving(tmp_path: Path) -> None:
    plan = tiny_family(tmp_path)
    broken = plan.variant("two").model_copy(deep=True)
    broken.instances["llm"][1] = broken.instances["llm"][1].model_copy(update={"devices": ["node0:gpu7"],
                                                                               "tp": 3})  # tp 3 of 4 heads
    with omnigraph.load(plan) as pipe:
        with pytest.raises(Exception):
            switch(pipe.backend, broken)
        assert len(pipe.backend.instances["llm"]) == 1 and pipe.backend.variant == "one"
        assert pipe.run({"prompt": prompts()[0]})["ids"].numel() > 0
