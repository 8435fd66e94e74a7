"""Cost and memory rules: a roofline per (stage, parallel config, device), the configs a
stage may take, whether one fits, and what to change when none does.

Per forward: FLOPs = 2 x active matmul params x tokens + attention (4 x layers x tokens x
context x heads x head_dim); bytes = the weights read once (MoE: only the experts the
forward's tokens touch) + KV read/written + activations; time = max(FLOPs / (peak x MFU),
bytes / (bandwidth x MBU)). TP splits weights and FLOPs and adds two all-reduces per
layer; EP splits the experts and adds two all-to-alls per MoE layer; PP splits the layers
and adds a pipeline bubble. AR stages batch continuously: they prefill the requests they
admit, then decode one token per sequence per step, every step reading the weights once for
the whole batch: that is why batching pays. How each kind runs is a table (ROOFLINES); what a
request asks of a stage is work_rules.py. `ReplicaTimes` times one replica's forwards, prefills
and decode steps: `stage_cost` adds them up for the planner, and the simulator (sim/model.py)
charges the same ones step by step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from omnigraph.passes.planner.arena import arena_bytes
from omnigraph.passes.planner.cost_types import ArchProfile, ParallelConfig, StageCost, StageWork
from omnigraph.passes.planner.work_rules import WORK_RULES, stage_work  # noqa: F401  (re-exported)
from omnigraph.runtime.pp_schedule import micro_batches
from omnigraph.target import Device

# --- Efficiency constants: the only tuning knobs of the model. --------------------------
MFU = 0.5  # share of peak FLOP/s large matmuls sustain in inference (0.4-0.7 measured)
MBU = 0.8  # share of HBM bandwidth weight and KV streaming sustains
LINK_EFFICIENCY = 0.8  # share of link bandwidth NCCL collectives reach
MIN_LINK_GB_S = 16.0  # a link given as 0 (undeclared): PCIe Gen4 x16
COLLECTIVE_LATENCY_S = 8e-6  # per collective inside a node
INTER_NODE_LATENCY_S = 25e-6  # per collective or hop across nodes
STEP_OVERHEAD_S = 1e-4  # per forward: launches and scheduling a roofline does not see
ACT_RW_PER_LAYER = 8  # activation traffic per layer, in tokens x hidden x dtype (in/out of qkv, MLP, norms)
PREFILL_CHUNK = 8192  # tokens a chunked prefill runs at once: bounds the activation peak
CONV_REUSE = 3  # conv decoders/vocoders apply each weight at ~3 upsampled positions per input cell
CONV_PEAK_CHANNELS = 256  # conv decoders' live feature maps at the output resolution, in channels
MEMORY_UTILIZATION = 0.92  # of a device's memory the planner may fill (framework, allocator slack)
GIB = 1 << 30
OTHER_BATCHES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Roofline:
    """How a kind runs: step by step with a KV cache, or whole forwards (x repeats)."""

    autoregressive: bool = False
    causal: bool = False  # prefill attention sees half its context on average
    conv_reuse: int = 1  # FLOPs per weight per input cell for layer-less (conv) modules


ROOFLINES: dict[str, Roofline] = {
    "ar_llm": Roofline(autoregressive=True, causal=True),
    "encoder": Roofline(),
    "projector": Roofline(),
    "diffusion": Roofline(),
    "decoder": Roofline(conv_reuse=CONV_REUSE),
    "vocoder": Roofline(conv_reuse=CONV_REUSE),
    "tts": Roofline(conv_reuse=CONV_REUSE),
    "moe": Roofline(),
    "custom": Roofline(),
}


@dataclass(frozen=True)
class _Pass:
    """One forward through the whole model, timed on one device of the replica."""

    seconds: float
    compute_s: float
    memory_s: float
    tp_comm_s: float
    ep_comm_s: float
    bubble_s: float
    flops: float  # in all, over the replica
    bytes: float  # moved by one device


@dataclass(frozen=True)
class _Model:
    """A profile with the cost model's derived sizes."""

    p: ArchProfile
    rule: Roofline

    @property
    def dense_weights(self) -> int:
        """Matmul weights every forward reads (an AR stage never runs its towers per token)."""
        towers = self.p.encoder_params if self.rule.autoregressive else 0
        return max(0, self.p.params - self.p.expert_params - self.p.embedding_params - towers)

    @property
    def active_expert_params(self) -> float:
        p = self.p
        return p.expert_params * p.experts_per_token / p.experts if p.experts else 0.0

    def touched_experts(self, tokens: float) -> float:
        """Expected distinct experts tokens x k draws touch out of E (each layer)."""
        e, k = self.p.experts, self.p.experts_per_token
        if not e:
            return 0.0
        return e * (1.0 - (1.0 - min(k, e) / e) ** max(0.0, tokens))


def _link(link_gb_s: float) -> float:
    return max(link_gb_s, MIN_LINK_GB_S) * 1e9 * LINK_EFFICIENCY


def _forward(m: _Model, cfg: ParallelConfig, device: Device, link_gb_s: float, inter_node: bool,
             seqs: float, new_tokens: int, context: float, kv_read_tokens: float,
             hop_gb_s: float = 0.0, hop_inter: bool = False) -> _Pass:
    """`seqs` sequences of `new_tokens` each, attending `context` keys per token on average,
    reading `kv_read_tokens` cached tokens in all, on the replica `cfg` describes.

    PP as the runtime runs it (runtime/pp_schedule.py): a forward of few new tokens (a decode
    step) goes through whole, a long one as up to MICRO_BATCHES micro-batches; each pipeline
    stage holds layers / pp and the pipeline fills and drains once (the bubble). Collectives
    go over `link_gb_s` (the TP/EP group's, inside a node), hidden states between the stages
    over `hop_gb_s` (0: the same link; `hop_inter`: it crosses nodes)."""
    link = _link(link_gb_s)
    latency = INTER_NODE_LATENCY_S if inter_node else COLLECTIVE_LATENCY_S
    if cfg.pp == 1:
        return _stage_pass(m, cfg, device, link, latency, seqs, new_tokens, context, kv_read_tokens)
    micro = micro_batches(max(1, math.ceil(seqs - 1e-9)), new_tokens)
    one = _stage_pass(m, cfg, device, link, latency, seqs / micro, new_tokens, context, kv_read_tokens / micro)
    hop = (seqs / micro * new_tokens * m.p.hidden * m.p.dtype_bytes / (_link(hop_gb_s) if hop_gb_s else link)
           + (INTER_NODE_LATENCY_S if hop_inter else latency))
    slot = one.seconds + hop
    n = micro + cfg.pp - 1
    return _Pass(n * slot, one.compute_s * n, one.memory_s * n, one.tp_comm_s * n, one.ep_comm_s * n,
                 (cfg.pp - 1) * slot, one.flops * micro, one.bytes * micro)


def _stage_pass(m: _Model, cfg: ParallelConfig, device: Device, link: float, latency: float,
                seqs: float, new_tokens: int, context: float, kv_read_tokens: float) -> _Pass:
    """One pipeline stage (layers / pp) running a forward, on one device of its TP/EP group."""
    p = m.p
    tokens = seqs * new_tokens
    bpe = p.dtype_bytes
    dp = max(1, cfg.ep // cfg.tp)  # EP wider than TP: the extra ranks split the batch
    group = max(cfg.tp, cfg.ep) if p.experts else cfg.tp
    layers = max(1, p.layers)
    reuse = m.rule.conv_reuse if p.layers == 0 else 1

    dense_flops = 2.0 * m.dense_weights * tokens * reuse
    attn_flops = 4.0 * p.layers * tokens * context * p.heads * p.head_dim
    expert_flops = 2.0 * m.active_expert_params * tokens
    flops_dev = ((dense_flops + attn_flops) / (cfg.tp * dp) + expert_flops / group) / cfg.pp

    # Every rank's tokens reach the experts (all-to-all): the replica's tokens decide which are read.
    expert_bytes = p.expert_params / p.experts * m.touched_experts(tokens) * bpe if p.experts else 0.0
    kv_split = min(cfg.tp, p.kv_heads) if p.kv_heads else cfg.tp
    kv_bytes = (kv_read_tokens + tokens) * p.kv_bytes_per_token / (kv_split * dp)
    act_bytes = ACT_RW_PER_LAYER * layers * tokens * max(1, p.hidden) * bpe / (cfg.tp * dp)
    rows = tokens * p.hidden * bpe if p.embedding_params else 0  # embedding lookups: a row a token
    bytes_dev = (m.dense_weights * bpe / cfg.tp + expert_bytes / group + kv_bytes + act_bytes + rows) / cfg.pp

    compute_s = flops_dev / (device.peak_tflops * 1e12 * MFU)
    memory_s = bytes_dev / (device.mem_bandwidth_gb_s * 1e9 * MBU)
    stage_layers = layers / cfg.pp
    msg = tokens / dp * p.hidden * bpe
    tp_comm = 0.0
    if cfg.tp > 1:  # two ring all-reduces per layer (after attention, after the MLP)
        tp_comm = 2 * stage_layers * (2 * (cfg.tp - 1) / cfg.tp * msg / link + latency)
    ep_comm = 0.0
    if cfg.ep > 1 and p.experts:  # dispatch + combine: an all-to-all of k copies, twice per MoE layer
        ep_comm = 2 * stage_layers * (msg * p.experts_per_token * (cfg.ep - 1) / cfg.ep / link + latency)
    seconds = max(compute_s, memory_s) + tp_comm + ep_comm + STEP_OVERHEAD_S
    return _Pass(seconds, compute_s, memory_s, tp_comm, ep_comm, 0.0,
                 dense_flops + attn_flops + expert_flops, bytes_dev)


@dataclass(frozen=True)
class ReplicaTimes:
    """One replica of a stage (`cfg`'s tp, pp, ep) on `device`: the seconds of its forwards, the
    one source of step times. `stage_cost` adds them up into a request's latency and a replica's
    rate; the simulator charges them run by run (sim/model.py CostTimes)."""

    kind: str
    profile: ArchProfile
    cfg: ParallelConfig
    device: Device
    link_gb_s: float
    inter_node: bool = False
    hop_gb_s: float = 0.0  # between pipeline stages (0: link_gb_s)
    hop_inter: bool = False  # the pipeline's stages are on different nodes

    @property
    def model(self) -> _Model:
        return _Model(self.profile, ROOFLINES.get(self.kind, Roofline()))

    def run(self, seqs: float, new_tokens: int, context: float, kv_read_tokens: float) -> _Pass:
        return _forward(self.model, self.cfg, self.device, self.link_gb_s, self.inter_node, seqs, new_tokens,
                        context, kv_read_tokens, self.hop_gb_s, self.hop_inter)

    def prefill(self, seqs: float, prompt: int) -> _Pass:
        """`seqs` prompts of `prompt` tokens prefilled together (causal: half the context on average)."""
        return self.run(seqs, prompt, (prompt + 1) / 2, 0)

    def step(self, running: int, context: float) -> _Pass:
        """One decode step: a token for each of `running` sequences, attending `context` keys each."""
        return self.run(running, 1, context, running * context)

    def forward(self, seqs: int, tokens: int) -> _Pass:
        """A whole forward over `seqs` inputs of `tokens` tokens (non-AR kinds)."""
        ctx = tokens if not self.model.rule.causal else (tokens + 1) / 2
        return self.run(seqs, tokens, ctx, 0)


def admitted_together(batch: int, decode_steps: int) -> float:
    """Requests a continuous-batching stage running `batch` sequences admits (and prefills
    together) at a time: waiting requests fill the slots the last step freed, m = batch /
    (decode_steps + 1) a step on average at random steps, so a step that admits any admits
    m / (1 - e^-m) (a Poisson count's mean, given it is not 0). A long decode admits about one
    at a time, each paying a prefill of its own; a prefill-only stage takes a whole batch."""
    m = max(1, batch) / (max(0, decode_steps) + 1)
    return min(float(max(1, batch)), m / -math.expm1(-m))


def stage_cost(kind: str, profile: ArchProfile, work: StageWork, cfg: ParallelConfig, device: Device,
               link_gb_s: float, inter_node: bool = False, hop_gb_s: float = 0.0, hop_inter: bool = False) -> StageCost:
    """The roofline cost of `work` on one replica running `cfg` (batch `cfg.batch`).

    `link_gb_s` carries the TP/EP collectives (`inter_node`: they cross nodes, a higher
    latency per collective), `hop_gb_s` the hidden states between PP stages (0: the same link;
    `hop_inter`: they cross nodes). AR stages batch continuously, as the ar_llm executor
    and the simulator run them: `batch` sequences decode together, and those that end are
    replaced by waiting ones, admitted (and prefilled together) `admitted_together` at a time.
    A replica turns its batch over every `decode_steps` steps, with batch / admitted prefills
    cutting in: that cycle is a request's latency (its steps, its prefill and those of the
    others joining meanwhile), batch / latency its throughput; its first output comes after
    its prefill and a step. Other kinds run `repeats` forwards over the whole batch:
    throughput batch / latency, first output at the end."""
    times = ReplicaTimes(kind, profile, cfg, device, link_gb_s, inter_node, hop_gb_s, hop_inter)
    b = max(1, cfg.batch)
    prompt = max(0, work.tokens)
    if times.model.rule.autoregressive:
        admitted = admitted_together(b, work.decode_steps)
        prefill = times.prefill(admitted, prompt)
        ctx = prompt + (work.decode_steps + 1) / 2  # the average context over the decode
        step = times.step(b, ctx)
        prefills = b / admitted  # per turnover of the batch
        latency = prefills * prefill.seconds + work.decode_steps * step.seconds
        first = prefill.seconds + step.seconds
        parts = [(prefill, prefills), (step, work.decode_steps)]
        extra = {"prefill_s": prefill.seconds, "decode_step_s": step.seconds, "admitted": admitted}
        live_tokens = min(b * prompt, PREFILL_CHUNK)  # memory: a whole batch may come in at once
    else:
        fwd = times.forward(b, prompt)
        latency = first = fwd.seconds * max(1, work.repeats)
        parts = [(fwd, max(1, work.repeats))]
        extra = {"forward_s": fwd.seconds}
        live_tokens = b * prompt
    breakdown = {
        name: sum(getattr(pa, attr) * n for pa, n in parts)
        for name, attr in (("compute_s", "compute_s"), ("memory_s", "memory_s"), ("tp_comm_s", "tp_comm_s"),
                           ("ep_comm_s", "ep_comm_s"), ("pp_bubble_s", "bubble_s"), ("flops", "flops"),
                           ("bytes", "bytes"))
    }
    breakdown.update(extra)
    weights, kv, act = memory_per_device(kind, profile, work, cfg, live_tokens)
    return StageCost(
        config=cfg, devices=cfg.devices, mem_per_device=weights + kv + act, weight_bytes_per_device=weights,
        kv_bytes_per_device=kv, activation_bytes=act, latency_s=latency, first_output_s=first,
        throughput=b / latency if latency > 0 else float(b), breakdown=breakdown,
    )


def memory_per_device(kind: str, profile: ArchProfile, work: StageWork, cfg: ParallelConfig,
                      live_tokens: int | None = None) -> tuple[int, int, int]:
    """(weights, KV cache, activation peak) bytes on each device of the replica.

    Weights: dense / (tp x pp), experts / (max(tp, ep) x pp). KV: `batch` sequences of
    prefill + decode tokens, split over min(tp, kv_heads) ranks (never less than a head per
    rank) and over pp. Activations: the peak forward (a prefill chunk, a batch of latents).
    """
    p = profile
    bpe = p.dtype_bytes
    b = max(1, cfg.batch)
    dp = max(1, cfg.ep // cfg.tp)
    group = max(cfg.tp, cfg.ep) if p.experts else cfg.tp
    dense = (p.params - p.expert_params) * bpe / (cfg.tp * cfg.pp)
    weights = int(dense + p.expert_params * bpe / (group * cfg.pp))
    kv = 0
    if p.kv_heads and ROOFLINES.get(kind, Roofline()).autoregressive:
        seq = work.tokens + work.decode_steps + 1
        kv = int(math.ceil(b / dp) * seq * p.kv_bytes_per_token / (min(cfg.tp, p.kv_heads) * cfg.pp))
    if live_tokens is None:
        live_tokens = min(b * work.tokens, PREFILL_CHUNK) if ROOFLINES.get(kind, Roofline()).autoregressive \
            else b * work.tokens
    if p.layers:  # one block's intermediates, packed by liveness (the arena plan-memory lays out)
        act = int(arena_bytes(p, int(math.ceil(live_tokens / dp)))[0] / cfg.tp)
    else:  # conv modules: feature maps at the output resolution
        act = int(b * work.out_tokens * CONV_PEAK_CHANNELS * bpe)
    return weights, kv, act


def usable_bytes(device: Device) -> int:
    return int(device.memory_gib * GIB * MEMORY_UTILIZATION)


def fits(cost: StageCost, device: Device) -> bool:
    return cost.mem_per_device <= usable_bytes(device)
