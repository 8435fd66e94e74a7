"""Verifier rules of the omni ops: what every stage graph must satisfy.

Each failure raises ``OmniVerifyError`` naming the op (and the operand, for edge
errors) so that callers can point at the spec line it came from.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xdsl.ir import Block, Operation, SSAValue
from xdsl.utils.exceptions import VerifyException

from pydantic import ValidationError

from omnigraph import model_ref
from omnigraph.kinds import KINDS, MODEL_SCHEMES, SAME_AS_INPUT, StageKind
from omnigraph.names import is_name, shown
from omnigraph.dialect.types import _EdgeType
from omnigraph.dialect.values import from_attr

if TYPE_CHECKING:
    from omnigraph.dialect.ops import LoopOp, OutputOp, PipelineOp, PortedOp


class OmniVerifyError(VerifyException):
    """A verifier failure with the op, and the operand index for edge errors.

    ``field`` is a path below the op's spec entry (``("parallel", "tp")``) for errors in
    its attributes; a caller points at it where the spec has it.
    """

    def __init__(self, message: str, op: Operation, operand: int | None = None,
                 field: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.op = op
        self.operand = operand
        self.field = field


def describe_value(value: SSAValue) -> str:
    """Where a value comes from, in spec terms: `thinker.text`, `prompt`, `polish.draft`."""
    owner = value.owner
    if isinstance(owner, Block):
        loop = owner.parent_op()
        names = getattr(loop, "carry_names", None)
        return names[value.index] if names else f"%{value.name_hint or value.index}"
    name = owner.properties.get("port_name") or owner.properties.get("sym_name")
    label = name.data if name is not None else owner.name
    if owner.name == "omni.input":
        return label
    ports = getattr(owner, "output_names", None) or getattr(owner, "carry_names", None)
    return f"{label}.{ports[value.index]}" if ports else label


def params_of(op: Operation) -> dict[str, Any]:
    attr = op.properties.get("params")
    return from_attr(attr) if attr is not None else {}


def check_names(op: Operation, what: str, names: list[str]) -> None:
    """IR text may name anything (a quoted symbol with a newline or a bidi control); names
    become plan keys and file names."""
    for name in names:
        if not is_name(name):
            raise OmniVerifyError(f"{what}: '{shown(name)}' is not a plain name (letters, digits and _)", op)


def check_ported_op(op: PortedOp) -> None:
    where = f"{'stage' if op.name == 'omni.stage' else 'route'} '{shown(op.label)}'"
    ins, outs = op.input_names, op.output_names
    check_names(op, where, [op.label, *ins, *outs])
    if len(ins) != len(op.operands):
        raise OmniVerifyError(f"{where}: {len(ins)} input port names for {len(op.operands)} inputs", op)
    if len(outs) != len(op.results):
        raise OmniVerifyError(f"{where}: {len(outs)} output port names for {len(op.results)} outputs", op)
    kind_name = op.properties["kind"].data if op.name == "omni.stage" else "route"
    kind = KINDS.get(kind_name)
    if kind is None:
        raise OmniVerifyError(f"{where}: unknown stage kind '{kind_name}'", op)
    params = params_of(op)
    phased = kind.phase_ports(params)
    in_ports = phased[0] if phased else kind.inputs
    seen: set[str] = set()
    for i, (port_name, value) in enumerate(zip(ins, op.operands)):
        port = next((p for p in in_ports if p.name == port_name), None) if phased else kind.input_port(port_name)
        if port is None:
            raise OmniVerifyError(f"{where}: {kind.name} has no input port '{port_name}'", op, i)
        if port_name in seen and not port.variadic:
            raise OmniVerifyError(f"{where}: port '{port_name}' takes one input", op, i)
        seen.add(port_name)
        got = value.type
        if isinstance(got, _EdgeType) and got.mod not in port.modalities:
            raise OmniVerifyError(
                f"{where} port '{port_name}': expects {' or '.join(port.modalities)}, "
                f"got {got.describe()} from '{describe_value(value)}'", op, i)
    for port in in_ports:
        if not port.optional and port.name not in seen:
            raise OmniVerifyError(f"{where}: required input port '{port.name}' is not wired", op)
    if not kind.free_ports:
        expected = phased[1] if phased else kind.output_ports(params, None)
        names = [p.name for p in expected]
        if names != outs:
            raise OmniVerifyError(f"{where}: outputs must be ({', '.join(names)}), got ({', '.join(outs)})", op)
        for port, value in zip(expected, op.results):
            want = op.operands[0].type.mod if port.modality == SAME_AS_INPUT else port.modality
            if isinstance(value.type, _EdgeType) and value.type.mod != want:
                raise OmniVerifyError(f"{where} output '{port.name}': must be {want}, "
                                      f"not {value.type.describe()}", op)
    if op.name == "omni.route":
        cases = params.get("cases", [])
        default = params.get("default")
        if len(set(outs)) != len(outs):
            raise OmniVerifyError(f"{where}: duplicate cases", op, field=("params", "cases"))
        if default is not None and default not in outs:
            raise OmniVerifyError(f"{where}: default '{default}' is not one of the cases", op,
                                  field=("params", "default"))
        if cases and cases != outs:
            raise OmniVerifyError(f"{where}: params.cases disagree with the outputs", op,
                                  field=("params", "cases"))
    if not isinstance(params.get("config", {}), dict):  # type rules and parallel checks read it
        raise OmniVerifyError(f"{where}: params.config must be a dictionary", op, field=("params", "config"))
    if op.name == "omni.stage":
        check_model(op, kind, where)
        check_params(op, kind, where, params)
    check_parallel(op, where, params)


def check_model(op: Operation, kind: StageKind, where: str) -> None:
    """A stage has a model when its kind needs one, and it names only what may be built."""
    attr = op.properties.get("model")
    model = attr.data if attr is not None else None
    if model is None:
        if kind.needs_model:
            raise OmniVerifyError(f"{where}: {kind.name} stage needs a model reference", op, field=("model",))
        return
    if not kind.needs_model:
        raise OmniVerifyError(f"{where}: {kind.name} stages take no model", op, field=("model",))
    scheme, sep, target = model.partition(":")
    if not sep or not target.strip() or scheme not in MODEL_SCHEMES:
        raise OmniVerifyError(f"{where}: model reference '{model}' must be `scheme:target` with a scheme of "
                              f"{', '.join(MODEL_SCHEMES)}", op, field=("model",))
    found = model_ref.problem(model)
    if found is not None:
        raise OmniVerifyError(f"{where}: {found}", op, field=("model",))
    params = params_of(op)
    if scheme in model_ref.LIBRARIES:
        _, location = model_ref.location_of(model)
        random = params.get("weights") == "random"
        if location is None and not random:
            raise OmniVerifyError(f"{where}: '{model}' names a class but no weights (a checkpoint, or "
                                  f"`weights: random`)", op, field=("model",))
        if location is not None and random:
            raise OmniVerifyError(f"{where}: `weights: random`, but the model is a checkpoint", op,
                                  field=("params", "weights"))
    for path, arch in model_ref.arch_refs(params):
        found = model_ref.arch_problem(arch)
        if found is not None:
            raise OmniVerifyError(f"{where} parameter '{'.'.join(path)}': {found}", op, field=("params", *path))


def check_params(op: Operation, kind: StageKind, where: str, params: dict[str, Any]) -> None:
    """The stage's parameters satisfy its kind's model (IR text reaches here unchecked)."""
    try:
        kind.params.model_validate(params)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        name = ".".join(str(p) for p in loc)
        message = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
        raise OmniVerifyError(f"{where} parameter '{name}': {message}", op, field=("params", *loc)) from None


def _first(config: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        if isinstance(config.get(key), int):
            return config[key]
    return None


def check_parallel(op: Operation, where: str, params: dict[str, Any]) -> None:
    par = op.properties.get("parallel")
    if par is None:
        return
    config = {**params.get("config", {}), **{k: v for k, v in params.items() if k != "config"}}
    tp, ep = par.get("tp"), par.get("ep")
    kind = KINDS.get(op.properties["kind"].data) if op.name == "omni.stage" else None
    found = kind.parallel_problem(tp, ep, par.get("pp")) if kind is not None else None
    if found is not None:
        field = "tp" if found.startswith("tp") else "ep" if found.startswith("ep") else "pp"
        raise OmniVerifyError(f"{where}: {found}", op, field=("parallel", field))
    if par.get("dp") > 1:  # the runtime runs copies of a stage as replicas: one word for one thing
        raise OmniVerifyError(f"{where}: dp={par.get('dp')}: copies of a stage are `replicas` here "
                              f"(write parallel: {{replicas: {par.get('dp')}}})", op, field=("parallel", "dp"))
    heads = _first(config, "num_attention_heads", "num_heads", "n_head")
    kv_heads = _first(config, "num_key_value_heads", "num_kv_heads")
    experts = _first(config, "num_experts", "num_local_experts", "n_routed_experts")
    for what, count in (("attention heads", heads), ("KV heads", kv_heads), ("experts", experts)):
        if count is not None and count < 1:
            raise OmniVerifyError(f"{where}: {count} {what}: a count must be at least 1", op,
                                  field=("params", "config"))
    if heads is not None and heads % tp:
        raise OmniVerifyError(f"{where}: tp={tp} does not divide its {heads} attention heads", op,
                              field=("parallel", "tp"))
    if kv_heads is not None and kv_heads % tp and tp % kv_heads:
        raise OmniVerifyError(f"{where}: tp={tp} and its {kv_heads} KV heads do not divide one "
                              f"another (KV heads are split or replicated across TP ranks)", op,
                              field=("parallel", "tp"))
    layers = _first(config, "num_hidden_layers", "num_layers", "n_layer")
    if layers is not None and par.get("pp") > layers:
        raise OmniVerifyError(f"{where}: pp={par.get('pp')} is more pipeline stages than its {layers} layers", op,
                              field=("parallel", "pp"))
    if ep > 1 and experts is None:
        raise OmniVerifyError(f"{where}: ep={ep} on a stage with no experts", op, field=("parallel", "ep"))
    if experts is not None and experts % ep:
        raise OmniVerifyError(f"{where}: ep={ep} does not divide its {experts} experts", op,
                              field=("parallel", "ep"))


def check_output(op: OutputOp) -> None:
    want = op.modality.data if op.modality is not None else None
    got = op.value.type
    if want is not None and isinstance(got, _EdgeType) and got.mod != want:
        raise OmniVerifyError(f"output '{op.port_name.data}': declared {want}, but "
                              f"'{describe_value(op.value)}' is {got.describe()}", op, 0)


def check_loop(op: LoopOp) -> None:
    where = f"loop '{shown(op.label)}'"
    check_names(op, where, [op.label, *op.carry_names])
    if op.iterations < 1:
        raise OmniVerifyError(f"{where}: max_iters must be at least 1", op)
    block = op.body.block
    names = op.carry_names
    if not (len(names) == len(op.inits) == len(op.results) == len(block.args)):
        raise OmniVerifyError(f"{where}: carried names, initial values, results and block "
                              f"arguments must agree in number", op)
    for i, (init, arg, res) in enumerate(zip(op.inits, block.args, op.results)):
        if arg.type != init.type or res.type != init.type:
            raise OmniVerifyError(f"{where}: carried '{names[i]}' changes type", op, i)
    term = block.last_op
    if term is None or term.name != "omni.yield":
        raise OmniVerifyError(f"{where}: body must end with omni.yield", op)
    if len(term.operands) != 1 + len(names):
        raise OmniVerifyError(f"{where}: yield needs the condition and {len(names)} next values", op)
    cond = term.operands[0].type
    if isinstance(cond, _EdgeType) and cond.mod not in ("scalar", "text"):
        raise OmniVerifyError(f"{where}: `until` must be a scalar (or text), got {cond.describe()} "
                              f"from '{describe_value(term.operands[0])}'", term, 0)
    for i, (name, nxt, arg) in enumerate(zip(names, term.operands[1:], block.args)):
        if isinstance(nxt.type, _EdgeType) and nxt.type.mod != arg.type.mod:
            raise OmniVerifyError(f"{where}: next '{name}' is {nxt.type.describe()} from "
                                  f"'{describe_value(nxt)}', but '{name}' carries {arg.type.mod}",
                                  term, 1 + i)


def check_pipeline(op: PipelineOp) -> None:
    where = f"pipeline '{shown(op.sym_name.data)}'"
    check_names(op, "pipeline", [op.sym_name.data])
    symbols: dict[str, Operation] = {}
    inputs: set[str] = set()
    outputs: set[str] = set()
    for inner in op.walk():
        if inner is op:
            continue
        if inner.name in ("omni.stage", "omni.route", "omni.loop"):
            name = inner.sym_name.data
            if name in symbols:
                raise OmniVerifyError(f"{where}: duplicate name '{name}'", inner)
            symbols[name] = inner
    defined: set[SSAValue] = set()
    for inner in op.block.ops:
        if inner.name in ("omni.input", "omni.output"):
            check_names(inner, inner.name.removeprefix("omni."), [inner.port_name.data])
        if inner.name == "omni.input":
            name = inner.port_name.data
            if name in inputs or name in symbols:
                raise OmniVerifyError(f"{where}: duplicate name '{name}'", inner)
            inputs.add(name)
        elif inner.name == "omni.output":
            name = inner.port_name.data
            if name in outputs:
                raise OmniVerifyError(f"{where}: duplicate output '{name}'", inner)
            outputs.add(name)
        elif inner.name not in ("omni.stage", "omni.route", "omni.loop"):
            raise OmniVerifyError(f"{where}: unexpected op {inner.name} in a pipeline", inner)
    _check_order(op.block, defined)
    if not outputs:
        raise OmniVerifyError(f"{where}: no outputs", op)


def _check_order(block: Block, defined: set[SSAValue]) -> None:
    """Every value is defined before use: a graph in SSA order has no cycle."""
    defined = defined | set(block.args)
    for inner in block.ops:
        for i, value in enumerate(inner.operands):
            if value not in defined:
                label = inner.properties.get("sym_name") or inner.properties.get("port_name")
                raise OmniVerifyError(
                    f"'{label.data if label else inner.name}' uses '{describe_value(value)}' before it "
                    f"is computed (a cycle, or ops out of dependency order)", inner, i)
        for region in inner.regions:
            for sub in region.blocks:
                _check_order(sub, defined)
        defined |= set(inner.results)
