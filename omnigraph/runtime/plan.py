"""RuntimePlan: what the runtime executes. The runtime owns this schema; codegen writes it.

A plan is self-contained: stage instances with their devices, the values each
stage reads (so the channels between instances), batching per stage, routes and
bounded loops, and the pipeline's inputs and outputs. Nodes are listed in
dependency order. It is plain JSON, versioned; a newer version is refused.
Version 2 added `StageNode.program`, set only in a bundle's plan; version 3 added
`Instance.ep`; version 4 added `StageNode.kernels`; version 5 the `checkpoint` program form;
version 6 `StageNode.resources` (the planner's dtype and memory budgets) and `Instance.cores`;
version 7 `StageNode.settings_of` (the prefill half of a split LLM stage, whose `kv` edge feeds
its decode half), `RuntimePlan.family` (plans for other request mixes, switched at run time)
and `Instance.pp` (pipeline stages of an instance's layers; before it, a pp plan ran as one group).
Older plans load as they are: a stage without resources runs as before (its params' dtype,
an unbounded KV pool, the process's threads).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from omnigraph.names import NAME_PATTERN, REF_PATTERN

PLAN_VERSION = 7
# Names in a plan become file names (outputs), process and actor names: a plan from a
# bundle is untrusted, so every one is a plain name (see omnigraph/names.py).
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=200)]
Ref = Annotated[str, StringConstraints(pattern=REF_PATTERN, max_length=401)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PortType(_Model):
    modality: str
    dtype: str | None = None
    shape: list[int | None] | None = None
    stream: bool = False  # delivered in chunks as produced


class Binding(_Model):
    """One input of a node: the value it reads (`input`, `carry`, `node.port`)."""

    port: Name
    source: Ref
    modality: str  # of the value read
    stream: bool = False


class Batching(_Model):
    max_batch: int = Field(8, ge=1)
    max_wait_ms: float = Field(2.0, ge=0)  # how long a worker waits to fill a batch
    queue_capacity: int = Field(256, ge=1)  # bounded: submit blocks when a stage is this far behind


class Instance(_Model):
    """One copy of a stage: its ranks run on `devices` (in rank order), tensor-parallel over
    `tp` of them or, for a moe stage, expert-parallel over `ep`; with `pp` > 1, its layers
    split into `pp` consecutive groups (pipeline stages), each on max(tp, ep) ranks: rank
    r is stage r // max(tp, ep)."""

    devices: list[str] = Field(min_length=1)
    tp: int = Field(1, ge=1)
    ep: int = Field(1, ge=1)
    pp: int = Field(1, ge=1)
    # On a CPU device: the cores this instance computes on (its intra-op threads, and its
    # process's affinity where it has a process of its own); None: the process's default.
    cores: list[Annotated[int, Field(ge=0)]] | None = None

    @property
    def ranks(self) -> int:
        """Processes this instance runs as (one per rank; 1 runs in the backend's own process)."""
        return max(self.tp, self.ep) * self.pp


class StageProgram(_Model):
    """How a bundled stage is loaded instead of from its model reference.

    Paths in `files` are relative to the bundle in its plan.json; the bundle reader
    checks them and makes them absolute before any executor sees them.
      pt2      files.program: a torch.export program (the module, its weights inside)
      weights  files.weights: a state dict for the class `ref`, rebuilt from params.config
      file     files.gguf or files.onnx (+ onnx_config): the model file, copied as it is
      code     Python the stage runs (a custom stage, a plain function); files: its source
      checkpoint  files.checkpoint: a Hugging Face / diffusers checkpoint folder as it was
               (config, safetensors shards, tokenizer and processor files); `ref` its class
    """

    form: Literal["pt2", "weights", "file", "code", "checkpoint"]
    files: dict[str, str] = Field(default_factory=dict)  # role -> path
    ref: str | None = None  # weights: the module class to rebuild
    facts: dict[str, Any] = Field(default_factory=dict)  # what the executor read off the module
    reason: str = ""  # why this form (shown by `omnigraph inspect`)


class StageResources(_Model):
    """What the planner gave one instance of the stage (per device, bytes): the dtype it
    computes and keeps its weights in, and its memory budgets. The KV budget is the paged
    pool an autoregressive stage allocates once, in blocks of `kv_block_tokens` tokens."""

    dtype: Literal["f32", "bf16", "f16", "fp8"] | None = None  # None: the stage's own (params.dtype, else f32)
    weights_bytes: int | None = Field(None, ge=0)
    kv_bytes: int | None = Field(None, ge=0)
    arena_bytes: int | None = Field(None, ge=0)
    kv_block_tokens: int = Field(16, ge=1, le=4096)
    # Its weights stay in host memory and move onto its device for its steps, one swapped
    # stage at a time per device (the planner's choice when they do not fit there together).
    swap: bool = False


class StageKernels(_Model):
    """A stage's generated Triton kernels: per entry point (`forward`, `denoise_step`, …) a
    kernel file, plain Python + triton, that runs the entry's fused graph (fused_stage.py);
    and the safetensors of the graph's constant tensors, where it has any."""

    files: dict[str, str]  # entry -> kernel file
    constants: dict[str, str] = Field(default_factory=dict)  # entry -> safetensors


class StageNode(_Model):
    type: Literal["stage"] = "stage"
    name: Name
    kind: Name
    model: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: list[Binding]
    outputs: dict[Name, PortType]
    instances: list[Instance] = Field(min_length=1)
    batching: Batching = Field(default_factory=Batching)
    resources: StageResources = Field(default_factory=StageResources)
    program: StageProgram | None = None  # bundles only
    kernels: StageKernels | None = None  # when compiled with fusion (compile_plan(kernels_dir=…))
    # The stage whose per-request settings this one reads: a split LLM's prefill half reads
    # those addressed to the stage the spec named (its decode half keeps that name).
    settings_of: Name | None = None


class RouteNode(_Model):
    type: Literal["route"] = "route"
    name: Name
    inputs: list[Binding]  # data, key
    cases: list[Name] = Field(min_length=1)
    default: Name | None = None
    outputs: dict[Name, PortType]


class LoopNode(_Model):
    type: Literal["loop"] = "loop"
    name: Name
    max_iters: int = Field(ge=1)
    carry: list[Binding]  # port = carried name, source = initial value
    body: list[Annotated[StageNode | RouteNode, Field(discriminator="type")]] = Field(min_length=1)
    until: Ref
    next: dict[Name, Ref]
    outputs: dict[Name, PortType]


Node = StageNode | RouteNode | LoopNode


SERVES_TIE = 0.03  # a variant serving a mix within this of the one planned for it ties (best_for)


class PlanVariant(_Model):
    """One plan of a family (`compile --mixes`): the same stages, instances and batches chosen
    for another operating point (a request mix). The runtime switches between them as the
    load shifts (runtime/replan.py); the plan's own nodes are the first variant's."""

    name: Name
    mix: str  # the request mix it was planned for
    rate: float = Field(ge=0)  # requests/s it sustains on that mix (the planner's prediction)
    simulated_rate: float | None = Field(None, ge=0)  # what the simulator served of it
    # The simulator's check: requests/s it serves of each family mix, run saturated (its capacity
    # there). An operating point is served by the variant that serves it best (which need not be
    # the one planned for it, where the planner's model and the simulator differ).
    serves: dict[str, float] = Field(default_factory=dict)
    instances: dict[Name, list[Instance]]  # per stage
    max_batch: dict[Name, int] = Field(default_factory=dict)  # per stage, where it differs


class RuntimePlan(_Model):
    version: int = PLAN_VERSION
    pipeline: Name
    target: str | None = None
    inputs: dict[Name, PortType]
    outputs: dict[Name, Ref]  # output name -> value it returns
    output_types: dict[Name, PortType]
    nodes: list[Annotated[Node, Field(discriminator="type")]]
    # Directories searched for `py:` modules (the spec's own folder), after sys.path.
    module_paths: list[str] = Field(default_factory=list)
    family: list[PlanVariant] = Field(default_factory=list)  # plans for other mixes (compile --mixes)

    def best_for(self, mix: str) -> PlanVariant:
        """The variant the simulator found serving `mix` best; the one planned for it where none
        serves it by more than SERVES_TIE more (a tie is the simulation's noise, not a reason to
        leave the plan made for that traffic)."""
        planned = next((v for v in self.family if v.mix == mix), None)
        checked = [v for v in self.family if mix in v.serves]
        if not checked:
            if planned is None:
                raise ValueError(f"plan '{self.pipeline}' has no variant for mix '{mix}'")
            return planned
        best = max(checked, key=lambda v: v.serves[mix])
        if planned is not None and mix in planned.serves and \
                best.serves[mix] <= planned.serves[mix] * (1 + SERVES_TIE):
            return planned
        return best

    def variant(self, name: str) -> PlanVariant:
        found = next((v for v in self.family if v.name == name), None)
        if found is None:
            raise ValueError(f"plan '{self.pipeline}' has no variant '{name}' "
                             f"(variants: {', '.join(v.name for v in self.family) or 'none'})")
        return found

    def to_json(self) -> str:
        """The plan as JSON (every field written, so readers need no defaults)."""
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RuntimePlan:
        """Parse a plan, refusing one written by a newer omnigraph."""
        import json

        version = json.loads(text).get("version")
        if not isinstance(version, int) or version > PLAN_VERSION:
            raise ValueError(f"plan format version {version!r} is not supported (this runtime reads "
                             f"versions up to {PLAN_VERSION}); upgrade omnigraph")
        return cls.model_validate_json(text)

    def stages(self) -> list[StageNode]:
        """Every stage, loop bodies included."""
        out: list[StageNode] = []
        for node in self.nodes:
            if isinstance(node, StageNode):
                out.append(node)
            elif isinstance(node, LoopNode):
                out.extend(n for n in node.body if isinstance(n, StageNode))
        return out
