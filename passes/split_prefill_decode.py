"""`split-prefill-decode`: split an LLM stage into prefill and decode instances where it pays.

Splitwise / DistServe: with TTFT and TPOT targets (`--slo ttft=…,tpot=…`), a stage whose
instances both prefill and decode stalls every running decode while a new prompt prefills;
prefill instances that hand the KV cache to decode-only instances keep TPOT flat. Whether
that beats the whole stage on the same replicas is the simulator's call
(sim/split_goodput.py): the split is made only where its goodput is higher.

A split stage `llm` becomes two ops joined by a KV edge (`!omni.kv<…>`, its layout and bytes
per token):

    %kv = omni.stage @llm_prefill "ar_llm" (prompt = %p) -> (kv : !omni.kv<bf16, layers 30, …>)
          {params = {phase = "prefill", …}, parallel = #omni.parallel<… replicas = P>}
    %t:3 = omni.stage @llm "ar_llm" (kv = %kv) -> (text, tokens, hidden) {params = {phase = "decode", …}}

The decode keeps the stage's name, outputs and per-request settings, so nothing that reads
it changes; the prefill gets P of its replicas, the decode the rest. `split` pins a split
by hand (`llm=1:3`: 1 prefill, 3 decode replicas) for stages the user names.

Runs after plan-parallel (the replicas and batch to split) and before place-devices (which
places both halves).
"""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, StringAttr
from xdsl.rewriter import InsertPoint, Rewriter

from omnigraph.dialect.attrs import ParallelAttr, PlanAttr
from omnigraph.dialect.checks import params_of
from omnigraph.dialect.ops import LoopOp, StageOp
from omnigraph.dialect.types import KvType
from omnigraph.dialect.values import to_attr
from omnigraph.errors import IRError
from omnigraph.kinds import KINDS
from omnigraph.passes.compilation import Compilation, CompilerPass
from omnigraph.passes.planner.arch_profile import profile_stage
from omnigraph.passes.planner.cost_rules import stage_cost
from omnigraph.passes.planner.precision import at_dtype
from omnigraph.passes.planner.stage_options import device_types, stage_works
from omnigraph.passes.planner.workload import parse_mix
from omnigraph.passes.sim.model import CostTimes
from omnigraph.passes.sim.sim_types import Slo, SimulationError, parse_slo
from omnigraph.passes.sim.split_goodput import LlmTimes, judge_split
from omnigraph.passes.stage_graph import FlatStage, stage_graph

KV_BLOCK_TOKENS = 16  # the runtime pool's block (StageResources.kv_block_tokens)
PREFILL_SUFFIX = "_prefill"


@dataclass(frozen=True)
class SplitPrefillDecodePass(CompilerPass):
    name = "split-prefill-decode"

    slo: str = ""  # "ttft=0.5,tpot=0.05": split where the simulator says goodput under it is higher
    split: str = ""  # "llm=1:3,…": split these stages so, whatever the simulator says
    mix: str = ""  # the request mix plan-parallel planned for
    headroom: float = 0.9  # the utilisation plan-parallel planned at (its option of the same name)

    def run(self, comp: Compilation) -> None:
        pins = parse_split(self.split)
        try:
            slo = parse_slo(self.slo) if self.slo else None
        except SimulationError as exc:
            raise IRError(exc.message) from None
        if not pins and (slo is None or not slo.token_targets):
            return
        target = comp.need_target(self.name) if slo is not None else comp.target
        stages = {st.name: st for st in stage_graph(comp.module)}
        unknown = sorted(set(pins) - set(stages))
        if unknown:
            raise IRError(f"--split names stage '{unknown[0]}', which the pipeline does not have "
                          f"(stages: {', '.join(stages)})")
        works = stage_works(list(stages.values()), parse_mix(self.mix or None)) if slo else {}
        for name, st in stages.items():
            if not KINDS[st.kind].traits.kv_cache or st.params.get("phase", "whole") != "whole":
                if name in pins:
                    raise IRError(f"--split {name}: only a stage that keeps a KV cache (ar_llm) splits", where=f"stage '{name}'")
                continue
            if name in pins:
                _check_pin(st, *pins[name])
                split(st.op, *pins[name], note=f"pinned: prefill {pins[name][0]} + decode {pins[name][1]}")
            elif slo is not None:
                self._judge(st, works[name], slo, target)
        _restate_rate(comp, self.headroom)

    def _judge(self, st: FlatStage, works: list, slo: Slo, target) -> None:  # noqa: ANN001
        op = st.op
        plan, par = op.plan, op.parallel
        if plan is None or par is None:
            return
        problem = _cannot_split(st, plan, par)
        if problem:
            op.properties["plan"] = _with_split(plan, f"kept whole: {problem}")
            return
        dt = next(t for t in device_types(target) if t.type == plan.device_type)
        profile = at_dtype(profile_stage(st.kind, st.model, st.params), plan.dtype or None)
        costs = CostTimes(stage_cost, st.kind, profile, par.get("tp"), dt.device, dt.link_gb_s, False)
        link = min((n.intra_node_gb_s for n in target.nodes), default=dt.link_gb_s)
        times = LlmTimes(costs.prefill, costs.step, profile.kv_bytes_per_token, link or dt.link_gb_s)
        replicas = par.get("replicas")
        verdict = judge_split(st.name, times, replicas, plan.batch, works, parse_mix(self.mix or None), slo,
                              plan.rate * replicas)
        if verdict.prefill:
            split(op, verdict.prefill, replicas - verdict.prefill, note=verdict.describe())
        else:
            op.properties["plan"] = _with_split(plan, verdict.describe())


def _restate_rate(comp: Compilation, headroom: float) -> None:
    """The plan's predicted throughput with its split stages as split: no more than each half's
    replicas sustain at the utilisation the plan is made for (`headroom`)."""
    ops = [op for op in comp.module.walk() if isinstance(op, StageOp) and op.plan is not None and op.parallel]
    rate = min((op.plan.pipeline_rate for op in ops), default=0.0)
    for op in ops:
        if params_of(op).get("phase", "whole") != "whole":
            rate = min(rate, headroom * op.plan.rate * op.parallel.get("replicas") / max(op.plan.visits, 1e-9))
    for op in ops:
        if op.plan.pipeline_rate != rate:
            op.properties["plan"] = PlanAttr(**{**op.plan.as_dict(), "pipeline_rate": rate})


def _cannot_split(st: FlatStage, plan: PlanAttr, par: ParallelAttr) -> str | None:
    """Why this stage is not a candidate (None: it is)."""
    if isinstance(st.op.parent_op(), LoopOp):
        return "it runs inside a loop"
    if plan.shared:
        return "it shares its devices with other stages"
    if par.get("replicas") < 2:
        return "one replica (a split needs a prefill and a decode instance)"
    if par.get("pp") > 1:
        return "pipeline-parallel stages are not split"
    return None


def _check_pin(st: FlatStage, prefill: int, decode: int) -> None:
    """A pinned split must fit the devices the planner gave the stage (when it planned one)."""
    plan, par = st.op.plan, st.op.parallel
    if plan is None or par is None:
        return  # unplanned: one instance per half, wherever the stage would run
    where = f"stage '{st.name}'"
    if isinstance(st.op.parent_op(), LoopOp):
        raise IRError(f"--split {st.name}: a stage inside a loop is not split", where=where)
    if plan.shared:
        raise IRError(f"--split {st.name}: the plan colocates '{st.name}' with other stages on a shared device; "
                      "a split needs devices of its own", where=where, hint="plan for a larger target")
    if prefill + decode > par.get("replicas"):
        raise IRError(f"--split {st.name}={prefill}:{decode} needs {prefill + decode} replicas; the plan gives "
                      f"'{st.name}' {par.get('replicas')} on this target", where=where,
                      hint=f"split at most {par.get('replicas')} replicas, e.g. "
                           f"{st.name}=1:{max(1, par.get('replicas') - 1)}, or plan for a larger target")


def parse_split(text: str) -> dict[str, tuple[int, int]]:
    """`llm=1:3,talker=1:1` -> {stage: (prefill replicas, decode replicas)}."""
    out: dict[str, tuple[int, int]] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, counts = part.partition("=")
        p, _, d = counts.partition(":")
        if not (p.strip().isdigit() and d.strip().isdigit()) or int(p) < 1 or int(d) < 1:
            raise IRError(f"--split {part!r}: write STAGE=PREFILL:DECODE with replica counts of at least 1, "
                          "e.g. llm=1:3")
        out[name.strip()] = (int(p), int(d))
    return out


def kv_type(op: StageOp) -> KvType:
    """The KV edge of an LLM stage: its layers, KV heads and head size at its planned dtype."""
    st = op.plan
    profile = profile_stage(op.kind.data, op.model.data if op.model else None, params_of(op))
    if not (profile.layers and profile.kv_heads and profile.head_dim):
        raise IRError(f"stage '{op.label}': its model's KV layout is not known (layers, KV heads, head size)",
                      where=f"stage '{op.label}'")
    dtype = (st.dtype if st is not None and st.dtype else None) or params_of(op).get("dtype") or "f32"
    return KvType(dtype, profile.layers, profile.kv_heads, profile.head_dim, KV_BLOCK_TOKENS)


def split(op: StageOp, prefill: int, decode: int, note: str) -> StageOp:
    """Lower `op` into a prefill op (inserted before it) and `op` itself as the decode, joined
    by a KV edge; `prefill` and `decode` replicas. Returns the prefill op."""
    name = op.label
    params = params_of(op)
    siblings = {o.label for o in op.parent_block().ops if isinstance(o, StageOp)} if op.parent_block() else set()
    pre_name = name + PREFILL_SUFFIX
    while pre_name in siblings:
        pre_name += "_"
    reads_hidden = any(use.operation is not op for use in op.results[op.output_names.index("hidden")].uses)
    pre = StageOp.build_stage(
        pre_name, op.kind.data, list(zip(op.input_names, op.operands)), [("kv", kv_type(op))],
        model=op.model.data if op.model else None,
        params=_params({**params, "phase": "prefill", "prefill_hidden": reads_hidden}))
    for prop in ("cost", "place", "cores", "mem"):
        if prop in op.properties:
            pre.properties[prop] = op.properties[prop]
    par, plan = op.parallel, op.plan
    if par is not None:
        pre.properties["parallel"] = _with_replicas(par, prefill)
        op.properties["parallel"] = _with_replicas(par, decode)
    if plan is not None:  # each half's rate: the whole replica's, had it only that part to do
        first, total = max(plan.first_output_s, 1e-9), max(plan.latency_s, 1e-9)
        pre.properties["plan"] = _with_split(plan, f"prefill of '{name}': {note}", plan.rate * total / first,
                                             first)
        op.properties["plan"] = _with_split(plan, f"decode of '{name}': {note}",
                                            plan.rate * total / max(total - first, 1e-9), total)
    pre.results[0].name_hint = f"{pre_name}_kv"
    Rewriter.insert_op(pre, InsertPoint.before(op))
    op.operands = [pre.results[0]]
    op.properties["in_ports"] = ArrayAttr([StringAttr("kv")])
    op.properties["params"] = _params({**params, "phase": "decode"})
    return pre


def _params(values: dict) -> DictionaryAttr:  # noqa: ANN001
    return DictionaryAttr({k: to_attr(v) for k, v in values.items()})


def _with_replicas(par: ParallelAttr, replicas: int) -> ParallelAttr:
    return ParallelAttr(tp=par.get("tp"), pp=par.get("pp"), dp=par.get("dp"), ep=par.get("ep"), replicas=replicas)


def _with_split(plan: PlanAttr, note: str, rate: float | None = None, latency: float | None = None) -> PlanAttr:
    values = {**plan.as_dict(), "split": note}
    if rate is not None:
        values.update(rate=rate, latency_s=latency)
    return PlanAttr(**values)


__all__ = ["SplitPrefillDecodePass", "kv_type", "parse_split", "split"]
