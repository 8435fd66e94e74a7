"""Reaching a Ray cluster, and placement groups shaped by the plan's devices.

A cluster omnigraph starts itself (no --address) listens on 127.0.0.1 only; to serve
other machines, start one deliberately (`ray start --head --node-ip-address=IP`) and
pass its address.

Each plan device ("node1:gpu3") is one placement-group bundle holding one unit of the
device resource: `GPU` for GPU devices, `CPU` for CPU ones, or any custom resource named
with `device_resource` (a test cluster declares `{"omni_gpu": 8}` to stand in for GPUs).
The devices of one plan node form one STRICT_PACK placement group, so they land on one
Ray node: the ranks of a tensor-parallel instance, which the planner keeps inside a node,
stay together. Every rank's actor goes into the bundle of its device and asks for a share
of it (stages the plan colocates on one device split it), and for no CPU of its own.
"""
from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from omnigraph.errors import BackendError
from omnigraph.runtime.plan import RuntimePlan

PLACEMENT_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 5.0
ENV_RESOURCE = "OMNIGRAPH_RAY_DEVICE_RESOURCE"
LOOPBACK = "127.0.0.1"
_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray keeps a loopback node address


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BackendError("the Ray backend needs Ray, which is not installed",
                           hint="pip install 'omnigraph[ray]'") from None
    return ray


def is_gpu_device(name: str) -> bool:
    device = name.rpartition(":")[2].lower()
    return "gpu" in device or "cuda" in device


def plan_devices(plan: RuntimePlan) -> Iterator[tuple[str, int, int, str]]:
    """(stage, instance, rank, device) for every rank of every instance."""
    for node in plan.stages():
        for i, inst in enumerate(node.instances):
            for rank in range(inst.ranks):
                yield node.name, i, rank, inst.devices[rank % len(inst.devices)]


def device_resource(plan: RuntimePlan, explicit: str | None) -> str:
    """The Ray resource one plan device stands for."""
    if explicit or os.environ.get(ENV_RESOURCE):
        return explicit or os.environ[ENV_RESOURCE]
    return "GPU" if any(is_gpu_device(d) for *_, d in plan_devices(plan)) else "CPU"


_groups = itertools.count(1)  # placement-group names stay unique within this process
_started_for = 0  # backends using the cluster this module started (shut down with the last)


def connect(address: str | None, plan: RuntimePlan, resource: str) -> None:
    """Join the cluster at `address` (or the one this process already joined; with neither,
    start a local one that has the plan's devices). Pair each call with `disconnect`."""
    global _started_for
    ray = require_ray()
    if ray.is_initialized():
        _started_for += _started_for > 0
        return
    devices = len({d for *_, d in plan_devices(plan)})
    kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": False, "log_to_driver": True}
    if address is None:
        kwargs.update(loopback_only(ray))
        if resource == "CPU":
            kwargs["num_cpus"] = max(os.cpu_count() or 1, devices)
        elif resource != "GPU":
            kwargs["resources"] = {resource: devices}
    if address not in (None, "auto") and "://" not in address:
        _probe(address)  # Ray itself retries an unreachable address for minutes
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {address}" if address else "on this machine"
        raise BackendError(f"cannot reach a Ray cluster {where}: {str(exc).splitlines()[0] if str(exc) else exc}",
                           hint="start one with `ray start --head` and pass --address HOST:PORT "
                                "(or `auto`), or leave --address out to start a local one") from None
    _started_for = 1 if address is None else 0
    if address is None:
        node_ip = ray.get_runtime_context().gcs_address.rpartition(":")[0]
        if node_ip not in (LOOPBACK, f"[::ffff:{LOOPBACK}]"):
            ray.shutdown()
            _started_for = 0
            raise BackendError(f"the local Ray cluster came up on {node_ip}, not {LOOPBACK}; refusing to run "
                               f"on a cluster other machines can reach",
                               hint="start one yourself (`ray start --head --node-ip-address=...`) and pass "
                                    "--address to expose it deliberately")


def loopback_only(ray: Any) -> dict[str, Any]:
    """What makes a cluster this process starts listen on 127.0.0.1 alone: its node address,
    and Ray's switch that otherwise replaces a loopback address by the machine's external
    one (read by Ray at import, and by the processes it starts, from the environment)."""
    os.environ[_CLUSTER_SWITCH] = "0"
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if constants is not None and hasattr(constants, "ENABLE_RAY_CLUSTER"):
        constants.ENABLE_RAY_CLUSTER = False
    return {"_node_ip_address": LOOPBACK}


def disconnect() -> None:
    """A backend is done with the cluster: the last one shuts down a cluster started here."""
    global _started_for
    if _started_for > 0:
        _started_for -= 1
        if _started_for == 0:
            require_ray().shutdown()


def _probe(address: str) -> None:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=PROBE_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        reason = "not HOST:PORT" if isinstance(exc, ValueError) else exc.strerror or type(exc).__name__
        raise BackendError(f"cannot reach a Ray cluster at {address}: {reason}",
                           hint="start one with `ray start --head` (it prints the address to use), "
                                "or leave --address out to start a local one") from None


@dataclass
class Placement:
    """Where each plan device lives: a placement group and a bundle index in it."""

    resource: str
    groups: dict[str, Any]  # plan node -> placement group
    bundle: dict[str, tuple[str, int]]  # device -> (plan node, bundle index)
    share: dict[str, float]  # device -> fraction of it each rank on it asks for

    def options(self, device: str) -> dict[str, Any]:
        """ray.remote options that put an actor on `device`."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        node, index = self.bundle[device]
        share = self.share[device]
        opts: dict[str, Any] = {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=self.groups[node], placement_group_bundle_index=index)}
        if self.resource == "GPU":
            opts.update(num_cpus=0, num_gpus=share)
        elif self.resource == "CPU":
            opts.update(num_cpus=share)
        else:
            opts.update(num_cpus=0, resources={self.resource: share})
        return opts

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for group in self.groups.values():
            try:
                remove_placement_group(group)
            except Exception:  # the cluster may already be gone
                pass


def place(plan: RuntimePlan, resource: str) -> Placement:
    """One STRICT_PACK placement group per plan node, one bundle per device, ready."""
    ray = require_ray()
    from ray.util.placement_group import placement_group

    ranks_on: dict[str, int] = {}
    for *_, device in plan_devices(plan):
        ranks_on[device] = ranks_on.get(device, 0) + 1
    for variant in plan.family[1:]:  # a plan switch starts a variant's actors before the old ones go
        for found in variant.instances.values():
            for inst in found:
                for rank in range(inst.ranks):
                    device = inst.devices[rank % len(inst.devices)]
                    ranks_on[device] = ranks_on.get(device, 0) + 1
    nodes: dict[str, list[str]] = {}
    for device in ranks_on:
        nodes.setdefault(device.rpartition(":")[0] or "node0", []).append(device)
    groups, bundle = {}, {}
    for node, devices in nodes.items():
        groups[node] = placement_group([{resource: 1} for _ in devices], strategy="STRICT_PACK",
                                       name=f"omnigraph-{plan.pipeline}-{node}-{os.getpid()}-{next(_groups)}")
        bundle.update({d: (node, i) for i, d in enumerate(devices)})
    placement = Placement(resource, groups, bundle,
                          {d: int(10_000 / n) / 10_000 for d, n in ranks_on.items()})  # Ray counts in 1e-4 units
    for node, group in groups.items():
        ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            placement.remove()
            have = ray.cluster_resources().get(resource, 0)
            raise BackendError(f"the Ray cluster cannot place plan node '{node}': it needs "
                               f"{len(nodes[node])} x {resource} on one Ray node (the cluster has {have:g} "
                               f"in all)", hint="add nodes, or pass --device-resource NAME for the resource "
                                                "that stands for a plan device")
    return placement
