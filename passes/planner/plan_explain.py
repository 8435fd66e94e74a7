"""Why no plan exists, in the user's terms, with the smallest change that would make one.

Called when a stage fits no device, or when the MILP finds no assignment. The answer names
the stage, what it needs per device, what the target has, what other stages already took,
and the fix: a larger TP degree, another device, fp8 weights, or a looser latency target.
"""
from __future__ import annotations

from omnigraph.errors import IRError
from omnigraph.passes.planner.arch_profile import profile_stage
from omnigraph.passes.planner.config_space import infeasibility_fixes
from omnigraph.passes.planner.cost_types import StageCost, StageWork
from omnigraph.passes.planner.plan_problem import Option, PlanProblem, StageChoices, path_latency, pooled_bytes
from omnigraph.passes.stage_graph import FlatStage
from omnigraph.passes.planner.stage_options import DeviceType, pinned_degrees

GIB = 1 << 30


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _where(target: str, dt: DeviceType) -> str:
    return f"on {target} ({dt.count} x {dt.type}, {dt.device.memory_gib:g} GiB each)"


def no_fit(st: FlatStage, works: list[StageWork], target: str, types: list[DeviceType],
           misfits: list[tuple[DeviceType, StageCost]]) -> IRError:
    """A stage that fits on no device of the target in any config."""
    dt = max(types, key=lambda t: t.usable_bytes)  # the roomiest device type it could have had
    if not misfits:  # no config was even tried: the degrees the spec pins need more devices
        pinned = pinned_degrees(st)
        asked = ", ".join(f"{k}={v}" for k, v in pinned.items()) or "its parallel degrees"
        most = max(t.count for t in types)
        return IRError(
            f"stage '{st.name}' asks for {asked}, which no device type of {target} can hold "
            f"(the most devices of one type on a node: {most})",
            hint=f"lower the stage's parallel degrees to fit {most} device(s), plan for a larger "
                 f"target (--target), or run unplanned (--target none)")
    tp1 = min((c for d, c in misfits if d is dt and c.devices == 1), key=lambda c: c.mem_per_device,
              default=min((c for _, c in misfits), key=lambda c: c.mem_per_device))
    profile = profile_stage(st.kind, st.model, st.params)
    work = max(works, key=lambda w: (w.tokens + w.decode_steps, w.repeats))
    fixes = infeasibility_fixes(st.kind, profile, work, dt.device, [dt.domain], dt.count)
    return IRError(
        f"stage '{st.name}' needs {gib(tp1.mem_per_device)} per device at {tp1.config.label()} "
        f"{_where(target, dt)}: {gib(tp1.weight_bytes_per_device)} weights + "
        f"{gib(tp1.kv_bytes_per_device)} KV + {gib(tp1.activation_bytes)} activations, "
        f"{gib(dt.usable_bytes)} usable",
        hint="smallest fix: " + " or ".join(fixes),
    )


def no_plan(problem: PlanProblem, target: str, types: list[DeviceType], swapping: bool = False) -> IRError:
    """Every stage fits somewhere, but not all of them together (or not in time). `swapping`:
    the planner tried taking turns too (weights in host memory): say why that failed as well."""
    if problem.latency_target_s is not None:
        fastest = {st.name: min(st.options, key=lambda o: o.cost.latency_s) for st in problem.stages}
        best = path_latency(problem, fastest)
        if best > problem.latency_target_s:
            slowest = max(fastest.items(), key=lambda kv: kv[1].cost.latency_s)
            return IRError(
                f"no plan meets the latency target of {problem.latency_target_s:g} s on {target}: the "
                f"fastest configs take {best:.3g} s end to end ('{slowest[0]}' alone "
                f"{slowest[1].cost.latency_s:.3g} s at {slowest[1].cost.config.label()})",
                hint=f"smallest fix: a latency target of at least {best * 1.05:.3g} s, or faster devices",
            )
    by_type = {t.type: t for t in types}
    return (_packing(problem, target, by_type, swap=True) if swapping else None) or \
        _packing(problem, target, by_type) or \
        IRError(f"no plan fits the pipeline on {target}: the stages together need more devices "
                f"than it has", hint="smallest fix: more devices, or a smaller max_batch")


def _names(names: list[str], most: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _packing(problem: PlanProblem, target: str, types: dict[str, DeviceType], swap: bool = False) -> IRError | None:
    """Fill the devices stage by stage with each stage's leanest config; name the one that
    overflows (None: this greedy fill finds room for all). With `swap`, stages that may take
    turns hold only what they keep besides their weights, and every device keeps a slot for
    the largest weights that take turns."""
    leanest = {st.name: min(st.options, key=lambda o: (o.devices, o.cost.mem_per_device)) for st in problem.stages}

    def swapped(st: StageChoices) -> int:  # the weights it leaves in host memory
        o = leanest[st.name]
        return o.cost.weight_bytes_per_device if swap and st.swappable and o.devices == 1 else 0

    slot = max((swapped(st) for st in problem.stages), default=0)
    free: dict[str, list[int]] = {t: [dt.usable_bytes - slot] * dt.count for t, dt in types.items()}
    held: dict[tuple[str, int], list[str]] = {}
    for st in problem.stages:
        option = leanest[st.name]
        slots = free[option.device_type]
        dt = types[option.device_type]
        need = (pooled_bytes(st, option) if option.devices == 1 else option.cost.mem_per_device) - swapped(st)
        order = sorted(range(len(slots)), key=lambda i: -slots[i])
        chosen = order[:option.devices]
        if len(chosen) == option.devices and all(slots[i] >= need for i in chosen):
            for i in chosen:
                slots[i] -= need
                held.setdefault((option.device_type, i), []).append(st.name)
            continue
        best = order[0] if order else 0
        left = slots[best] if slots else 0
        after = held.get((option.device_type, best), [])
        if swap:
            return IRError(
                f"stage '{st.name}' needs {gib(need)} per device at {option.cost.config.label()} "
                f"{_where(target, dt)} even with the stages taking turns (weights in host memory, "
                f"{gib(slot)} kept for the one that runs), {gib(left)} left"
                + (f" after {_names(after)}" if after else ""),
                hint="smallest fix: " + " or ".join(_fixes(st.options, option, left, dt)))
        return IRError(
            f"stage '{st.name}' needs {gib(need)} per device at {option.cost.config.label()} "
            f"{_where(target, dt)}, {gib(left)} left" + (f" after {_names(after)}" if after else ""),
            hint="smallest fix: " + " or ".join(_fixes(st.options, option, left, dt)),
        )
    return None


def _fixes(options: tuple[Option, ...], leanest: Option, left: int, dt: DeviceType) -> list[str]:
    fixes = []
    for o in sorted(options, key=lambda o: o.devices):
        if o.devices > leanest.devices and o.cost.mem_per_device <= left:
            fixes.append(f"tp={o.cost.config.tp}" if o.cost.config.tp > 1 else o.cost.config.label())
            break
    fixes.append("a second device" if dt.count == 1 else f"{dt.count + leanest.devices} {dt.type} devices")
    return fixes
