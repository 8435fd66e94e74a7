"""A Ray cluster omnigraph starts by itself listens on loopback only (issue: it listened on
every interface). Checked against a stand-in for the `ray` module, so it needs no cluster:
what matters is what omnigraph asks Ray for, and that it refuses a cluster that came up
anywhere else. (Run for real, the Ray tests' cluster lives in a loopback-only namespace.)"""
from __future__ import annotations

import os
import types
from pathlib import Path

import pytest

from omnigraph.errors import BackendError
from omnigraph.runtime import ray_cluster
from omnigraph.runtime.plan import RuntimePlan


class FakeRay(types.SimpleNamespace):
    def __init__(self, node_ip: str) -> None:
        constants = types.SimpleNamespace(ENABLE_RAY_CLUSTER=True)
        super().__init__(_private=types.SimpleNamespace(ray_constants=constants), calls=[], shut=False,
                         node_ip=node_ip, started=False)

    def is_initialized(self) -> bool:
        return self.started

    def init(self, address=None, **kwargs):  # noqa: ANN001, ANN201 - Ray's signature
        self.calls.append({"address": address, **kwargs, "env": os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")})
        self.started = True

    def get_runtime_context(self):  # noqa: ANN201
        return types.SimpleNamespace(gcs_address=f"{self.node_ip}:6379")

    def shutdown(self) -> None:
        self.shut = True


@pytest.fixture()
def plan() -> RuntimePlan:
    from omnigraph.api import compile_plan

    return compile_plan(Path(__file__).resolve().parent.parent / "examples" / "speak.yaml")


def _connect(monkeypatch: pytest.MonkeyPatch, plan: RuntimePlan, node_ip: str, address: str | None = None) -> FakeRay:
    fake = FakeRay(node_ip)
    monkeypatch.setattr(ray_cluster, "require_ray", lambda: fake)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    monkeypatch.setattr(ray_cluster, "_started_for", 0)
    if address is not None:
        monkeypatch.setattr(ray_cluster, "_probe", lambda a: None)
    ray_cluster.connect(address, plan, "CPU")
    return fake


def test_a_cluster_it_starts_binds_to_loopback(monkeypatch: pytest.MonkeyPatch, plan: RuntimePlan) -> None:
    fake = _connect(monkeypatch, plan, "127.0.0.1")
    [call] = fake.calls
    assert call["address"] is None and call["_node_ip_address"] == "127.0.0.1"
    assert call["env"] == "0"  # Ray keeps a loopback address instead of swapping in the external one
    assert fake._private.ray_constants.ENABLE_RAY_CLUSTER is False
    assert call["include_dashboard"] is False


def test_a_cluster_that_came_up_on_another_address_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                             plan: RuntimePlan) -> None:
    with pytest.raises(BackendError, match="not 127.0.0.1"):
        _connect(monkeypatch, plan, "192.0.2.7")


def test_joining_a_cluster_changes_nothing_of_it(monkeypatch: pytest.MonkeyPatch, plan: RuntimePlan) -> None:
    fake = _connect(monkeypatch, plan, "10.0.0.5", address="10.0.0.5:6379")
    [call] = fake.calls
    assert "_node_ip_address" not in call and call["env"] is None  # exposing a cluster is the user's choice
