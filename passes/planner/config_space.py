"""Which parallel configs a stage may take (tp divides the heads, ep the experts, a TP x EP
group inside one NVLink domain, pp only where fewer stages would not hold the weights), and,
for a stage that fits none, the smallest change that would fit it."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from omnigraph.kinds import KINDS, Traits
from omnigraph.passes.planner.cost_rules import GIB, MEMORY_UTILIZATION, OTHER_BATCHES, memory_per_device, usable_bytes
from omnigraph.passes.planner.cost_types import ArchProfile, ParallelConfig, StageWork
from omnigraph.target import Device


def _divisors(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def tp_allowed(profile: ArchProfile, tp: int) -> bool:
    """tp divides the query heads and the KV heads (or is a multiple of them: KV replicated)."""
    if tp == 1:
        return True
    p = profile
    if not p.heads or p.heads % tp:
        return False
    return not p.kv_heads or p.kv_heads % tp == 0 or tp % p.kv_heads == 0


def enumerate_configs(kind: str, profile: ArchProfile, device_counts: Sequence[int], max_devices: int,
                      device: Device, batches: Sequence[int] | None = None,
                      traits: Traits | None = None, pinned_pp: int | None = None) -> list[ParallelConfig]:
    """Every (tp, pp, ep, batch) a stage may run at: tp divides the heads, ep divides the
    experts (MoE only), the TP x EP group fits in one NVLink domain (the largest of
    `device_counts`), pp divides the layers, a replica uses at most `max_devices`.
    Memory is checked by `fits`; but pp > 1 is offered only where half as many stages would
    not hold the weights, since in this model pipelining never beats tensor parallelism (or
    where the spec pins it: `pinned_pp`)."""
    domain = max(1, max(device_counts, default=1))
    p = profile
    traits = traits or (KINDS[kind].traits if kind in KINDS else None)  # only degrees the kind can honour
    tps = range(1, domain + 1) if traits is None or traits.shardable_tp else (1,)
    configs: list[ParallelConfig] = []
    for tp in (t for t in tps if tp_allowed(p, t)):
        eps = [1] + [e for e in _divisors(p.experts, p.experts) if e > 1 and (e % tp == 0 or tp % e == 0)
                     and (traits is None or traits.shardable_ep)]
        for ep in eps:
            group = ParallelConfig(tp=tp, ep=ep).devices
            if group > domain or group > max_devices:
                continue
            pps = _divisors(max(1, p.layers), max_devices // group) if p.layers else [1]
            if pinned_pp is not None:
                pps = [pinned_pp] if pinned_pp * group <= max_devices else []
            for pp in pps if traits is None or traits.shardable_pp else [1]:
                if pp > 1 and pinned_pp is None and _weights_fit(p, ParallelConfig(tp=tp, ep=ep,
                                                                                    pp=_next_lower(p.layers, pp)), device):
                    continue
                for b in batches or (traits.batches if traits is not None and traits.batches else OTHER_BATCHES):
                    configs.append(ParallelConfig(tp=tp, pp=pp, ep=ep, batch=b))
    return configs


def _next_lower(layers: int, pp: int) -> int:
    return max(d for d in _divisors(max(1, layers), pp - 1))


def _weights_fit(profile: ArchProfile, cfg: ParallelConfig, device: Device) -> bool:
    weights, _, _ = memory_per_device("", profile, StageWork(), cfg)
    return weights <= usable_bytes(device)


def infeasibility_fixes(kind: str, profile: ArchProfile, work: StageWork, device: Device,
                        device_counts: Sequence[int], max_devices: int) -> list[str]:
    """The smallest changes that would fit a stage that fits no config of the target, best
    first: a config on more devices, fp8 weights, a bigger device."""
    need = sum(memory_per_device(kind, profile, work, ParallelConfig()))
    fixes: list[str] = []
    domain = max(1, max(device_counts, default=1))
    smallest = _smallest_fit(kind, profile, work, device, domain, max(max_devices, 64))
    if smallest is not None:
        where = "" if smallest.devices <= max_devices else f", the target has {max_devices}"
        fixes.append(f"tp={smallest.tp}" + (f" pp={smallest.pp}" if smallest.pp > 1 else "")
                     + (f" ep={smallest.ep}" if smallest.ep > 1 else "") + f" ({smallest.devices} devices{where})")
    if profile.dtype_bytes > 1:
        fp8 = replace(profile, dtype_bytes=1)
        if _smallest_fit(kind, fp8, work, device, domain, max_devices) is not None:
            fixes.append("dtype: fp8")
    fixes.append(f"a device with at least {need / MEMORY_UTILIZATION / GIB:.0f} GiB")
    return fixes


def infeasibility_hint(kind: str, profile: ArchProfile, work: StageWork, device: Device,
                       device_counts: Sequence[int], max_devices: int) -> str:
    """For a stage no config fits: how much it needs and the smallest change that would fit
    it. "" when batch 1 fits on one device."""
    one = memory_per_device(kind, profile, work, ParallelConfig())
    need = sum(one)
    if need <= usable_bytes(device):
        return ""
    gib = lambda n: f"{n / GIB:.0f} GiB"  # noqa: E731
    fixes = infeasibility_fixes(kind, profile, work, device, device_counts, max_devices)
    return (f"needs {gib(need)} on one device (weights {gib(one[0])}, KV {gib(one[1])}, "
            f"activations {gib(one[2])}); the {device.type} holds {gib(usable_bytes(device))}: use "
            + ", or ".join(fixes))


def _smallest_fit(kind: str, profile: ArchProfile, work: StageWork, device: Device, domain: int,
                  max_devices: int) -> ParallelConfig | None:
    """The fit at batch 1 on the fewest devices (TP before PP: it is faster)."""
    best: ParallelConfig | None = None
    for cfg in enumerate_configs(kind, profile, [domain], max_devices, device, batches=(1,)):
        if sum(memory_per_device(kind, profile, work, cfg)) <= usable_bytes(device):
            if best is None or (cfg.devices, cfg.pp) < (best.devices, best.pp):
                best = cfg
    return best

