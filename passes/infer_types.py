"""`infer-types`: give every edge its element type and shape, and check them.

Lowering types edges by modality alone. This pass walks the pipeline in order and
asks the rule of each stage kind (a table keyed by kind, like the other phases)
for its output types given its input types and parameters. A rule that finds an
input whose shape contradicts the stage's parameters raises a verifier error on
that operand: a type mismatch between stages, caught before anything runs.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import Rewriter

from omnigraph.dialect.checks import OmniVerifyError, describe_value, params_of
from omnigraph import model_ref
from omnigraph.kinds import KINDS
from omnigraph.dialect.ops import InputOp, LoopOp, PipelineOp, PortedOp
from omnigraph.dialect.types import _EdgeType
from omnigraph.modality import DEFAULT_DTYPE, DEFAULT_SHAPE

Dims = tuple[int | None, ...] | None
Out = tuple[str | None, Dims]  # (dtype, shape) of one output; None = modality default
Rule = Callable[["_Stage"], list[Out]]


@dataclass
class _Stage:
    op: PortedOp
    params: dict[str, Any]

    def setting(self, *keys: str) -> int | None:
        """A size parameter, or the same key in the architecture `config` (a checkpoint's own
        config.json when the stage loads one): a positive int."""
        config = self.params.get("config", {}) or self.checkpoint_config
        for key in keys:
            for field, value in ((("params", key), self.params.get(key)),
                                 (("params", "config", key), config.get(key))):
                if value is None:
                    continue
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise OmniVerifyError(f"stage '{self.op.label}' {'.'.join(field[1:])}: expected a "
                                          f"positive integer, got {value!r}", self.op, field=field)
                return value
        return None

    @property
    def checkpoint_config(self) -> dict[str, Any]:
        model = self.op.properties.get("model")
        if model is None or model_ref.location_of(model.data)[1] is None:
            return {}
        from omnigraph.runtime.checkpoint import CheckpointError, open_checkpoint

        try:
            config = open_checkpoint(model.data, KINDS[self.op.kind.data].traits.components).config
        except CheckpointError:
            return {}  # loading says what is wrong; types stay unknown here
        text = config.get("text_config")
        return {**config, **(text if isinstance(text, dict) else {})}

    @property
    def settings(self) -> Any:
        """The stage's parameters with its kind's defaults (kinds.py)."""
        return KINDS[self.op.kind.data].settings(self.params)

    @property
    def float_dtype(self) -> str:
        return self.params.get("dtype") or "f32"

    def inputs(self, port: str) -> list[tuple[int, SSAValue]]:
        return [(i, v) for i, (p, v) in enumerate(zip(self.op.input_names, self.op.operands)) if p == port]

    def expect_last_dim(self, port: str, size: int | None, what: str) -> None:
        """Each input on `port` must have `size` as its last dimension, when both are known."""
        if size is None:
            return
        for i, value in self.inputs(port):
            dims = value.type.dims
            if dims and dims[-1] is not None and dims[-1] != size:
                raise OmniVerifyError(
                    f"stage '{self.op.label}' port '{port}': expects {value.type.mod} [..., {size}] "
                    f"({what}), got {value.type.describe()} from '{describe_value(value)}'", self.op, i)


def _encoder(s: _Stage) -> list[Out]:
    return [(s.float_dtype, (None, s.setting("hidden_size", "d_model", "embed_dim")))]


def _projector(s: _Stage) -> list[Out]:
    s.expect_last_dim("x", s.setting("in_dim"), "the projector's in_dim")
    return [(s.float_dtype, (None, s.setting("out_dim")))]


def _ar_llm(s: _Stage) -> list[Out]:
    hidden = s.setting("hidden_size", "d_model", "n_embd")
    s.expect_last_dim("context", hidden, "the LLM's hidden_size")
    return [("utf8", (None,)), ("i64", (None,)), (s.float_dtype, (None, hidden))]


def _diffusion(s: _Stage) -> list[Out]:
    down = s.settings.downsample
    sizes = []
    for key in ("height", "width"):
        size = getattr(s.settings, key)
        if size < down:  # the latent would have no rows (or columns)
            raise OmniVerifyError(f"stage '{s.op.label}': {key} {size} is smaller than its downsample "
                                  f"factor {down}", s.op, field=("params", key))
        sizes.append(size // down)
    return [("f32", (s.settings.latent_channels, *sizes))]


def _decoder(s: _Stage) -> list[Out]:
    if s.settings.modality != "image":
        return [(None, None)]
    latents = s.op.operands[0].type.dims
    up = s.settings.upsample
    if latents and len(latents) == 3:
        return [("u8", (3, *(d * up if d else None for d in latents[1:])))]
    return [("u8", (3, None, None))]


def _moe(s: _Stage) -> list[Out]:
    x = s.op.operands[0].type
    s.expect_last_dim("x", s.setting("hidden_size"), "the MoE block's hidden_size")
    return [(x.elem or s.float_dtype, x.dims or (None, s.setting("hidden_size")))]


def _audio(s: _Stage) -> list[Out]:
    return [("f32", (None,))]


def _route(s: _Stage) -> list[Out]:
    data = s.op.operands[0].type
    return [(data.elem, data.dims)] * len(s.op.results)


def _declared(s: _Stage) -> list[Out]:
    return [(r.type.elem, r.type.dims) for r in s.op.results]


TYPE_RULES: dict[str, Rule] = {
    "encoder": _encoder,
    "projector": _projector,
    "ar_llm": _ar_llm,
    "diffusion": _diffusion,
    "decoder": _decoder,
    "moe": _moe,
    "vocoder": _audio,
    "tts": _audio,
    "route": _route,
    "custom": _declared,
}


def _refine(value: SSAValue, dtype: str | None, dims: Dims) -> SSAValue:
    """Replace `value`'s type with one that fills what was unknown (never loosens)."""
    old = value.type
    assert isinstance(old, _EdgeType)
    new_dtype = old.elem or dtype or DEFAULT_DTYPE[old.mod]
    new_dims = old.dims if old.dims is not None else (dims if dims is not None else DEFAULT_SHAPE[old.mod])
    new = type(old)(old.mod, new_dtype, new_dims)
    return value if new == old else Rewriter.replace_value_with_new_type(value, new)


def _infer_block(ops: list[Operation]) -> None:
    for op in ops:
        if isinstance(op, InputOp):
            _refine(op.value, None, None)
        elif isinstance(op, PortedOp):
            kind = op.properties["kind"].data if op.name == "omni.stage" else "route"
            outs = TYPE_RULES[kind](_Stage(op, params_of(op)))
            for result, (dtype, dims) in zip(list(op.results), outs):
                _refine(result, dtype, dims)
        elif isinstance(op, LoopOp):
            block = op.body.block
            for init, arg, result in zip(op.inits, list(block.args), list(op.results)):
                _refine(arg, init.type.elem, init.type.dims)
                _refine(result, init.type.elem, init.type.dims)
            _infer_block(list(block.ops))


@dataclass(frozen=True)
class InferTypesPass(ModulePass):
    name = "infer-types"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for pipeline in op.ops:
            if isinstance(pipeline, PipelineOp):
                _infer_block(list(pipeline.block.ops))
