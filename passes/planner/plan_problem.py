"""The global planning problem and its solution, independent of how it is solved.

Model (the MILP in plan_milp.py and the brute force in plan_exhaustive.py solve the same one):
each stage picks one option (a parallel config on one device type) and runs either

- *dedicated*: `replicas` groups of `devices` devices each, nothing else on them; or
- *shared* (single-device options only): one instance on every device of that type's shared
  pool, time-sharing it with the other shared stages. Each pool device holds one copy of every
  shared stage, so memory is checked per device exactly, and the pool's compute is split
  between the shared stages in proportion to their load. A type may have several pools (when
  one cannot hold all the small stages, as in a wide fan-in of encoders): each stage is in one.
  A type's pool may instead *ride* on a dedicated stage's replicas (`h100@llm`): no devices of
  its own, one copy of each of its stages on the first device of every replica of that host,
  whose time it takes (a rider running on one device of a tensor-parallel group holds up the
  whole group), and whose memory must hold it beside the host. So a 1 GiB encoder need not
  take a whole GPU beside a TP group.

Throughput X (requests/s) is what every stage sustains at `visits` executions per request,
each stage's utilisation capped at `headroom`. Latency is the longest path through the
stage graph using each chosen option's latency (a stream edge lets the consumer start at the
producer's first output). The goal: maximise X within the devices and the latency target;
among equal X, use fewer devices.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from omnigraph.passes.planner.cost_types import StageCost

EPS = 1e-9


@dataclass(frozen=True)
class Option:
    cost: StageCost
    device_type: str
    dtype: str = ""  # what the stage computes in on this device type ("" : runs as it is)
    # Requests/s the option gets per device when it shares a pool: below cost.throughput when
    # too few requests reach each copy to fill its batch (see plan_parallel's refinement).
    pool_rate: float = 0.0

    @property
    def devices(self) -> int:
        return self.cost.devices

    @property
    def shared_rate(self) -> float:
        return self.pool_rate or self.cost.throughput


@dataclass(frozen=True)
class StageChoices:
    name: str
    visits: float  # executions per request (route branch probability x loop iterations)
    options: tuple[Option, ...]
    preds: tuple[tuple[str, bool], ...] = ()  # (producer stage, stream edge)
    replicas: int | None = None  # the spec pinned this many dedicated replicas (None: the planner's choice)
    in_bytes: int = 0  # the largest hand-off it reads: plan-memory keeps 2 x batch of them per device
    # Its weights may wait in host memory between its batches (not a continuous-batching stage,
    # whose running requests and KV cache keep the device every step).
    swappable: bool = True
    pinned_devices: int = 0  # the spec pins it on this many devices (its replicas tile them); 0: none


@dataclass(frozen=True)
class DevicePool:
    type: str
    count: int
    memory_bytes: int  # usable per device


@dataclass(frozen=True)
class PlanProblem:
    stages: tuple[StageChoices, ...]
    pools: tuple[DevicePool, ...]
    latency_target_s: float | None = None
    headroom: float = 1.0  # highest utilisation a stage may be planned at
    # Device types whose shared pools keep their stages' weights in host memory and load the
    # one that runs into a single slot (its load takes the device's time), over `host_gb_s`.
    swap: frozenset[str] = frozenset()
    host_gb_s: float = 55.0

    def pool(self, device_type: str) -> DevicePool:
        return next(p for p in self.pools if p.type == device_type)

    def swaps(self, st: StageChoices, option: Option) -> bool:
        """Whether `st` at `option`, in a shared pool, keeps its weights in host memory."""
        return st.swappable and option.device_type in self.swap

    def swap_seconds(self, st: StageChoices, option: Option) -> float:
        """Device-seconds a request of `option` spends loading its weights when its pool swaps:
        one load per batch, shared by the batch."""
        if not self.swaps(st, option):
            return 0.0
        load = option.cost.weight_bytes_per_device / (self.host_gb_s * 1e9)
        return load / max(1, option.cost.config.batch)


@dataclass(frozen=True)
class StagePlan:
    option: Option
    replicas: int  # dedicated groups; 0 when shared
    shared: bool
    pool: str = ""  # when shared: its pool's key in PlanSolution.shared_devices ("": the type's first)

    @property
    def devices(self) -> int:
        return 0 if self.shared else self.replicas * self.option.devices

    @property
    def pool_key(self) -> str:
        return self.pool or self.option.device_type


def option_index(options: tuple[Option, ...], option: Option) -> int | None:
    """Where `option` (the same config and cost on the same device type, whatever its pool
    rate) stands among `options`; None when it is not there."""
    return next((i for i, o in enumerate(options) if o.cost == option.cost and o.device_type == option.device_type),
                None)


def rated_as(problem: PlanProblem, solution: PlanSolution) -> dict[str, StagePlan]:
    """The solution's choices, with their options as `problem` rates them."""
    out = {}
    for choice in problem.stages:
        sp = solution.stages[choice.name]
        i = option_index(choice.options, sp.option)
        if i is None:
            raise KeyError(f"stage '{choice.name}': the plan's option is not among the problem's")
        out[choice.name] = replace(sp, option=choice.options[i])
    return out


def pooled_bytes(st: StageChoices, o: Option) -> int:
    """What a shared stage holds on each pool device, as plan-memory will count it."""
    return o.cost.mem_per_device + 2 * o.cost.config.batch * st.in_bytes


def pool_key(device_type: str, index: int) -> str:
    """A device type's shared pools: `h100` (the first), then `h100#1`, `h100#2`, …"""
    return device_type if index == 0 else f"{device_type}#{index}"


def ride_key(device_type: str, host: str) -> str:
    """The key of a pool riding on stage `host`'s replicas: `h100@llm`."""
    return f"{device_type}@{host}"


def ride_host(key: str) -> str | None:
    """The stage a pool rides on (None: a pool with devices of its own)."""
    return key.partition("@")[2] or None


@dataclass
class PlanSolution:
    throughput: float
    stages: dict[str, StagePlan]
    # Devices per shared pool (keys: pool_key); for a pool riding on a stage (ride_key), the
    # copies it runs: one per replica of its host, on devices the host already counts.
    shared_devices: dict[str, int]
    latency_s: float
    solver: str
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    swap: bool = False  # its shared pools swap their stages' weights from host memory
    # How far below the best plan the model allows this one may be, as the solver proved it
    # (0: proven best; more when a wide graph's search stopped at its time budget).
    gap: float = 0.0

    @property
    def devices_used(self) -> int:
        return sum(p.devices for p in self.stages.values()) + sum(
            n for key, n in self.shared_devices.items() if ride_host(key) is None)


def path_latency(problem: PlanProblem, chosen: dict[str, Option]) -> float:
    """Longest path, in stage order (stages are topologically sorted)."""
    finish: dict[str, float] = {}
    for st in problem.stages:
        cost = chosen[st.name].cost
        start = 0.0
        for pred, stream in st.preds:
            if pred not in finish:
                continue
            if stream:  # start at the producer's first chunk, end no sooner than it does
                pcost = chosen[pred].cost
                start = max(start, finish[pred] - pcost.latency_s + pcost.first_output_s)
                start = max(start, finish[pred] - cost.latency_s)
            else:
                start = max(start, finish[pred])
        finish[st.name] = start + cost.latency_s
    return max(finish.values(), default=0.0)


def throughput_of(problem: PlanProblem, plan: dict[str, StagePlan], shared_devices: dict[str, int]) -> float:
    """The X a fixed assignment sustains (the model's definition, used to check solvers)."""
    x = float("inf")
    load: dict[str, float] = {}  # device-seconds per request each shared pool must give
    for st in problem.stages:
        sp = plan[st.name]
        mu = sp.option.cost.throughput * problem.headroom
        if sp.shared:
            rate = sp.option.shared_rate * problem.headroom
            load[sp.pool_key] = load.get(sp.pool_key, 0.0) + st.visits * (1 / rate + problem.swap_seconds(st, sp.option))
        else:
            x = min(x, sp.replicas * mu / st.visits)
    visits = {st.name: st.visits for st in problem.stages}
    for key, per_request in load.items():
        host = ride_host(key)
        if host is None:
            x = min(x, shared_devices.get(key, 0) / per_request)
        else:  # the host's replicas give their time to its own work and the riders'
            hp = plan[host]
            x = min(x, hp.replicas / (visits[host] / (hp.option.cost.throughput * problem.headroom) + per_request))
    return 0.0 if x == float("inf") else x
