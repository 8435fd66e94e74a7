"""Stages that take turns on a device (issue 20): the planner swaps weights from host memory
when the stages sharing a device do not fit there together, plan-memory counts one swap slot,
the runtime runs swapped stages one at a time per device with the same outputs, and the
simulator charges a load each time a device changes hands."""
from __future__ import annotations

from pathlib import Path

import pytest

from omnigraph.api import compile_plan
from omnigraph.compiler import compile_path

ROOT = Path(__file__).resolve().parent.parent
TWO_EXPERTS = ROOT / "examples/wan22_two_experts.yaml"


def test_two_14b_experts_and_their_encoder_take_turns_on_one_gpu() -> None:
    comp = compile_path(TWO_EXPERTS, target="h100x1")
    ops = {op.label: op for op in comp.module.walk() if getattr(op, "plan", None) is not None}
    assert all(op.plan.swap and op.plan.shared for op in ops.values())
    from omnigraph.passes.planner.stage_options import device_types
    from omnigraph.target import load_target

    usable = device_types(load_target("h100x1"))[0].usable_bytes
    weights = [op.mem.get("weights") for op in ops.values()]
    rest = sum(op.mem.get("arena") + op.mem.get("buffers") for op in ops.values())
    assert sum(weights) + rest > usable >= max(weights) + rest  # side by side they do not fit; taking turns they do
    plan = compile_plan(TWO_EXPERTS, "h100x1")
    assert all(n.resources.swap for n in plan.stages())
    # Where they fit side by side, nothing swaps.
    assert not any(n.resources.swap for n in compile_plan(TWO_EXPERTS, "h100x8").stages())


def test_the_simulator_charges_a_load_whenever_a_device_changes_hands() -> None:
    from omnigraph.passes.planner.cost_types import StageWork
    from omnigraph.passes.sim.engine import SimEdge, SimPipeline, SimRequest, SimStage, simulate

    def pipeline(swap_s: float) -> SimPipeline:
        a = SimStage("a", "batch", 1, 1, batch_time=lambda ws: 1.0, placement=(("gpu0",),), swap_s=swap_s)
        b = SimStage("b", "batch", 1, 1, batch_time=lambda ws: 1.0, placement=(("gpu0",),), swap_s=swap_s)
        return SimPipeline([a, b], [SimEdge("a", "b")], {"x": ["a"]}, ["b"])

    one = [SimRequest(0, 0.0, {"a": StageWork(tokens=1), "b": StageWork(tokens=1)})]
    assert simulate(pipeline(0.0), one).jct.mean == pytest.approx(2.0)
    assert simulate(pipeline(0.5), one).jct.mean == pytest.approx(3.0)  # a loads, then b loads


def test_swapped_stages_run_one_at_a_time_with_the_same_outputs() -> None:
    torch = pytest.importorskip("torch")
    import omnigraph

    plan = compile_plan(ROOT / "examples/tiny/text_to_image_tiny.yaml")
    inputs = [{"prompt": p} for p in ("a red fox", "a blue bird", "a green tree")]
    with omnigraph.load(plan) as pipe:
        want = [pipe.run(i, timeout=120) for i in inputs]
    swapped = plan.model_copy(deep=True)
    for node in swapped.stages():
        node.resources.swap = True
    with omnigraph.load(swapped) as pipe:
        slots = {id(w.slot) for w in pipe.backend.all_workers()}
        assert len(slots) == 1 and None not in {w.slot for w in pipe.backend.all_workers()}
        got = [pipe.run(i, timeout=120) for i in inputs]
        slot = pipe.backend.all_workers()[0].slot
        assert slot.loads >= len(inputs) * len(swapped.stages())  # each request: every stage took its turn
        burst = [h.result(120) for h in [pipe.submit(i, timeout=120) for i in inputs * 3]]  # taking turns, no deadlock
        assert len(burst) == 9
    for a, b in zip(got, want):
        for key in a:
            torch.testing.assert_close(torch.as_tensor(a[key]), torch.as_tensor(b[key]))
