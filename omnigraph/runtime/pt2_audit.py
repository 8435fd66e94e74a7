"""Checks that make `torch.export.load` safe for a .pt2 file from an untrusted bundle.

torch.export.load unpickles (weights_only=False) any weight or constant its config
marks `use_pickle`, custom and opaque objects, legacy weight files, and — when the
sample inputs fail a weights_only load — the sample inputs; it loads AOTInductor
shared libraries; and a deserialized graph may call any attribute of `torch` (which
reaches `os` and `pickle`). So before loading, the archive must hold only the
entries `torch.export.save` writes for a plain program (raw tensor bytes, JSON, and
sample inputs that load with weights_only=True). Loading also exec's the program's
`guards_code` and sympify's (evaluates) its shape expressions: both must be plain
arithmetic over input sizes and shape symbols. After loading, and before anything
runs, every call in the graph must be a torch operator or plain arithmetic.
"""
from __future__ import annotations

import builtins
import io
import json
import math
import operator
import re
import zipfile
from collections.abc import Callable
from typing import Any

import sympy
import torch
import torch.utils._sympy.functions

# Entries below the archive's one top folder that torch.export.save writes.
_FIXED = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
_JSON = re.compile(r"models/[\w.-]+\.json")
_WEIGHTS_CONFIG = re.compile(r"data/weights/[\w.-]+_weights_config\.json")
_CONSTANTS_CONFIG = re.compile(r"data/constants/[\w.-]+_constants_config\.json")
_RAW = re.compile(r"data/weights/weight_\d+|data/constants/tensor_\d+")
_SAMPLE_INPUTS = re.compile(r"data/sample_inputs/[\w.-]+\.pt")
_MAX_JSON = 256 << 20
# Shape expressions, in sympy's srepr form (`Mul(Integer(64), Symbol('s27', positive=True))`):
# numbers, operators, keyword `=`, quoted symbol names, and the names of sympy constructors,
# assumptions and torch's sympy functions. Nothing there can reach a Python object.
_TOKEN = re.compile(r"""\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"""
                    r"""|'[a-z]{1,4}\d+'|"[a-z]{1,4}\d+"|'[0-9.eE+-]+'|\*\*|//|<=|>=|==|!=|[-+*/%(),<>~&|^=])\s*""")
_SYMBOL = re.compile(r"[a-z]{1,4}\d+")
# Input guards (`L['x'].size()[0] < 64`): input sizes, numbers, arithmetic and comparisons, on
# one line (no comments, no newlines: the loader pastes each guard into generated code).
_GUARD_TOKEN = re.compile(r"[ ]*(?:L(?:\['[A-Za-z_]\w*'\]|\[\d+\])+(?:\.size\(\)\[\d+\]|\.stride\(\)\[\d+\]"
                          r"|\.storage_offset\(\)|\.dim\(\))?|\d+(?:\.\d+)?|(?P<name>[A-Za-z_]\w*)"
                          r"|\*\*|//|<=|>=|==|!=|[-+*/%()<>,])[ ]*")
_GUARD_NAMES = frozenset({"and", "or", "not", "True", "False", "Max", "Min", "FloorDiv", "CeilDiv", "Mod",
                          "PythonMod", "abs", "min", "max"})
_SYMPY_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs", "Eq", "Ne",
    "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality",
    "Unequality", "And", "Or", "Not", "Piecewise", "ExprCondPair", "floor", "ceiling", "sqrt", "true",
    "false", "True", "False", "oo", "zoo", "nan", "Infinity", "NegativeInfinity", "NaN", "Half", "One", "Zero",
    "NegativeOne", "BooleanTrue", "BooleanFalse", "positive", "negative", "nonnegative", "nonpositive",
    "integer", "real", "finite", "infinite", "zero", "nonzero", "even", "odd", "rational", "commutative",
    "precision",
}) | frozenset(n for n, obj in vars(torch.utils._sympy.functions).items()
                if isinstance(obj, type) and issubclass(obj, sympy.Basic) and not n.startswith("_"))

_ARITHMETIC: frozenset[Any] = frozenset({
    operator.getitem, operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
    operator.mod, operator.pow, operator.neg, operator.pos, operator.abs, operator.eq, operator.ne,
    operator.lt, operator.le, operator.gt, operator.ge, operator.and_, operator.or_, operator.xor,
    operator.not_, operator.invert, math.ceil, math.floor, math.trunc, math.sqrt, builtins.min,
    builtins.max, builtins.abs, builtins.round, torch.sym_int, torch.sym_float, torch.sym_max,
    torch.sym_min, torch.sym_not, torch.sym_ite, torch._check, torch._check_is_size,
})


def _is_operator(target: Any) -> bool:
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)):
        return True
    try:
        return target in _ARITHMETIC
    except TypeError:  # unhashable: not one of them
        return False


class UnsafeProgram(ValueError):
    """A .pt2 file that would run code when loaded or called."""


def check_archive(data: bytes, name: str) -> None:
    """Refuse a .pt2 archive that torch.export.load would unpickle or load native code from."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise UnsafeProgram(f"{name}: not a torch.export archive ({exc})") from None
    with zf:
        roots = {n.split("/", 1)[0] for n in zf.namelist()}
        if len(roots) != 1:
            raise UnsafeProgram(f"{name}: not a torch.export archive (expected one top folder)")
        for info in zf.infolist():
            entry = info.filename.split("/", 1)[1] if "/" in info.filename else ""
            if info.is_dir() or entry in _FIXED or _RAW.fullmatch(entry):
                continue
            if _JSON.fullmatch(entry):
                _check_program_json(zf, info, name, entry)
            elif _WEIGHTS_CONFIG.fullmatch(entry) or _CONSTANTS_CONFIG.fullmatch(entry):
                _check_payload_config(zf, info, name, entry)
            elif _SAMPLE_INPUTS.fullmatch(entry):
                _check_sample_inputs(zf.read(info), name, entry)
            else:
                raise UnsafeProgram(f"{name}: holds '{entry}', which is not part of a plain exported program "
                                    f"(pickled objects or compiled native code); refusing to load it")


def _check_program_json(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, entry: str) -> None:
    """The serialized program: guards_code is exec'd and every expr_str is sympify'd (eval) when
    it loads, so both must be plain arithmetic over input sizes and shape symbols."""
    if info.file_size > _MAX_JSON:
        raise UnsafeProgram(f"{name}: '{entry}' is too large")
    try:
        doc = json.loads(zf.read(info))
    except ValueError:
        raise UnsafeProgram(f"{name}: '{entry}' is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("guards_code", []), list):
        raise UnsafeProgram(f"{name}: '{entry}' is not a serialized program")
    for guard in doc.get("guards_code", []):
        if not _plain(guard, _GUARD_TOKEN, lambda word: word in _GUARD_NAMES):
            raise UnsafeProgram(f"{name}: the input guard {str(guard)[:60]!r} is not a plain shape check; "
                                f"loading would execute it as Python")
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            expr = node.get("expr_str")
            if expr is not None and not _plain(expr, _TOKEN, _sympy_name):
                raise UnsafeProgram(f"{name}: the shape expression {str(expr)[:60]!r} is not plain arithmetic "
                                    f"over shape symbols; loading would evaluate it as Python")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _plain(text: Any, token: re.Pattern[str], allowed: Callable[[str], bool]) -> bool:
    """Whether `text` is made only of `token`s whose names are `allowed`."""
    if not isinstance(text, str) or len(text) > 4096:
        return False
    pos = 0
    while pos < len(text):
        m = token.match(text, pos)
        if m is None or m.end() == pos:
            return False
        if m.group("name") is not None and not allowed(m.group("name")):
            return False
        pos = m.end()
    return True


def _sympy_name(word: str) -> bool:
    return bool(_SYMBOL.fullmatch(word)) or word in _SYMPY_NAMES


def _check_payload_config(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, entry: str) -> None:
    if info.file_size > _MAX_JSON:
        raise UnsafeProgram(f"{name}: '{entry}' is too large")
    try:
        config = json.loads(zf.read(info)).get("config", {})
    except (ValueError, AttributeError):
        raise UnsafeProgram(f"{name}: '{entry}' is not a valid weights config") from None
    for fqn, payload in config.items():
        pickled = not isinstance(payload, dict) or payload.get("use_pickle") is not False
        path = payload.get("path_name", "") if isinstance(payload, dict) else ""
        if pickled or not re.fullmatch(r"(weight|tensor)_\d+", str(path)):
            raise UnsafeProgram(f"{name}: '{fqn}' is stored as a pickled object, which loading would "
                                f"execute; omnigraph loads only raw tensors")


def _check_sample_inputs(raw: bytes, name: str, entry: str) -> None:
    # torch.export.load tries weights_only=True first and falls back to a full unpickle:
    # inputs that load the safe way never reach the fallback.
    try:
        torch.load(io.BytesIO(raw), weights_only=True)
    except Exception as exc:
        raise UnsafeProgram(f"{name}: '{entry}' is not plain tensors ({refusal(exc)}); "
                            f"refusing to unpickle it") from None


def refusal(exc: BaseException) -> str:
    """What a weights_only torch.load refused, in one line (e.g. the global it would import)."""
    for line in str(exc).splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0]
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(exc).__name__


def check_graph(program: torch.export.ExportedProgram, name: str) -> None:
    """Refuse a program whose graph calls anything but torch operators and arithmetic."""
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            target = node.target
            if node.op == "call_function" and _is_operator(target):
                continue
            shown = getattr(target, "__qualname__", None) or repr(target)
            raise UnsafeProgram(f"{name}: the program calls {node.op} {shown!s:.80}, which is not a torch "
                                f"operator; refusing to run it")
