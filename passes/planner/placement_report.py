"""The placement report: a planned module summarised, per stage what was chosen and why it
costs what it does (not the RuntimePlan, which `compile --emit plan` writes for the runtime).

Read back from the IR attributes the planning passes wrote, so the report shows exactly
what the runtime plan will run; `omnigraph plan` prints it (`--json`: this dictionary,
`"report": "placement"`), benchmarks compare it.
"""
from __future__ import annotations

from typing import Any

from xdsl.dialects.builtin import ModuleOp

from omnigraph.dialect.values import from_attr
from omnigraph.passes.planner.plan_problem import ride_host
from omnigraph.passes.stage_graph import pipeline_of, stage_graph


def placement_report(module: ModuleOp) -> dict[str, Any]:
    pipe = pipeline_of(module)
    rows: list[dict[str, Any]] = []
    rate = gap = 0.0
    for st in stage_graph(module):
        if st.op.plan is None or st.op.parallel is None:
            continue
        p = st.op.plan.as_dict()
        rate, gap = p["pipeline_rate"], p["gap"]
        par = st.op.parallel.as_dict()
        mem = st.op.mem.as_dict() if st.op.mem is not None else {}
        cost = from_attr(st.op.cost) if st.op.cost is not None else {}
        rows.append({
            "stage": st.name, "kind": st.kind, "config": _label(par, p["batch"]),
            "tp": par["tp"], "pp": par["pp"], "ep": par["ep"], "replicas": par["replicas"],
            "batch": p["batch"], "shared": p["shared"], "device_type": p["device_type"], "pool": p["pool"],
            # A shared stage riding on another stage's replicas (on their devices, in their time).
            "rides_on": ride_host(p["pool"]) if p["shared"] else None,
            "devices": [d.data for d in st.op.place.devices.data] if st.op.place is not None else [],
            "memory": mem,
            # The contract the runtime keeps (`run --stats` reports the same): the dtype it
            # computes in, its CPU cores, and its KV pool (bytes per instance).
            "dtype": p["dtype"] or None,
            "cores": st.op.cores.as_list() if st.op.cores is not None else None,
            "kv_budget": mem.get("kv") if mem.get("kv") else None,
            "latency_s": p["latency_s"], "first_output_s": p["first_output_s"],
            "rate_per_replica": p["rate"], "visits": p["visits"],
            "split": p["split"] or None,  # split-prefill-decode's decision (and why), when it judged
            "swap": p["swap"],  # its weights in host memory, loaded onto its shared device when it runs
            # How its size was known: meta (counted on an instance), file (a weights file's
            # header), config (formulas over its sizes) or guess (nothing to go on).
            "params": cost.get("params"), "counted": cost.get("source", "config"), "note": cost.get("note", ""),
        })
    if not rows:
        return {"report": "placement", "pipeline": pipe.sym_name.data, "target": None, "stages": []}
    _utilisation(rows, rate)
    # The busiest devices; within a shared pool, the stage that takes most of its time.
    bottleneck = max(rows, key=lambda r: (round(r["utilisation"], 6), r["load_share"]))["stage"]
    return {
        "report": "placement",
        "pipeline": pipe.sym_name.data,
        "target": pipe.target.data if pipe.target else None,
        "throughput_rps": rate,
        # The MILP's proven distance from the best plan under its model (0: proven best; a
        # wide graph's search may stop at its time budget before it proves more).
        "optimality_gap": gap,
        "bottleneck": bottleneck,
        "devices_used": len({d for r in rows for d in r["devices"]}),
        "guessed": [r["stage"] for r in rows if r["counted"] == "guess"],
        "stages": rows,
    }


def _label(par: dict[str, int], batch: int) -> str:
    parts = [f"tp{par['tp']}"] + [f"{k}{par[k]}" for k in ("pp", "ep") if par[k] > 1]
    return "·".join(parts) + f" b{batch}"


def _utilisation(rows: list[dict[str, Any]], rate: float) -> None:
    """Busy fraction of each stage's devices at the planned rate (a shared pool: all of it; a
    stage that riders ride on: its own work and theirs)."""
    pools: dict[str, float] = {}
    for r in rows:
        if r["shared"]:
            key = r["pool"] or r["device_type"]
            pools[key] = pools.get(key, 0.0) + rate * r["visits"] / r["rate_per_replica"]
    for r in rows:
        load = rate * r["visits"] / r["rate_per_replica"]  # device-seconds per second it needs
        if r["shared"]:
            key = r["pool"] or r["device_type"]
            r["utilisation"] = pools[key] / max(1, r["replicas"])
            r["load_share"] = load / pools[key]
        else:
            riders = sum(v for key, v in pools.items() if ride_host(key) == r["stage"])
            r["utilisation"] = (load + riders) / r["replicas"]
            r["load_share"] = load / (load + riders) if riders else 1.0
