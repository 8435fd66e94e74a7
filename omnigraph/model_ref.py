"""Which library objects a spec may name, and how they are reached safely.

A `transformers:` or `diffusers:` reference names a *model class* and nothing else:

    transformers:LlamaForCausalLM                 a class of the library's public namespace
    transformers:qwen2_5_omni.Qwen2_5OmniAudioEncoder
                                                  a class defined in that model family's
                                                  modeling module (towers the library does
                                                  not export at top level)
    diffusers:UNet2DConditionModel                a class of diffusers' public `models`

Anything else (a function, a module, an attribute reached through a chain such as
`models.llama.modeling_llama.os.system`) is refused: the compiler builds these classes on
the `meta` device while planning, so a reference must never be able to reach other code.
`problem()` checks a reference without importing any model code (the frontends and the
verifier call it); `library_class()` is the only way the compiler and the runtime turn
one into a class, and checks the object it reached as well.

This module imports nothing from the compiler, so the runtime uses it too.
"""
from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import re
from pathlib import Path
from typing import Any

from omnigraph.errors import OmnigraphError

LIBRARIES = ("transformers", "diffusers")
_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_FAMILY = re.compile(r"[a-z][a-z0-9_]*")
_PY_TARGET = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*)?")


class ModelRefError(OmnigraphError, ValueError):
    """A model reference that names something other than a model class."""


def split(ref: str) -> tuple[str, str]:
    scheme, _, target = ref.partition(":")
    return scheme, target


def location_of(ref: str) -> tuple[str | None, str | None]:
    """(class named, checkpoint location) of a transformers:/diffusers: reference:

        Class  family.Class        a class; weights come from elsewhere (weights: random)
        ./dir  /abs/dir  Org/Name  a checkpoint folder, or a Hub id (the local cache only)
        Class@./dir                a checkpoint loaded as this class
    """
    scheme, target = split(ref)
    if scheme not in LIBRARIES:
        return None, None
    name, at, where = target.partition("@")
    if at:
        return name, where
    if "/" in target or "\\" in target or target.startswith((".", "~")):
        return None, target
    return target, None


def class_parts(target: str) -> tuple[str | None, str]:
    """(model family or None, class name) of a library class target, or ModelRefError."""
    family, dot, name = target.rpartition(".")
    if not _IDENT.fullmatch(name) or (dot and not _FAMILY.fullmatch(family)):
        raise ModelRefError(_shape_message(target))
    return (family if dot else None), name


def _shape_message(target: str) -> str:
    return (f"'{target}' is not a model class: name a class of the library (e.g. LlamaForCausalLM), "
            f"or one in a model family's modeling module (e.g. qwen2_5_omni.Qwen2_5OmniAudioEncoder); "
            f"attribute paths are not followed")


def syntax_problem(ref: str) -> str | None:
    """Why `ref` cannot be a model reference, judged from its text alone (None: fine)."""
    scheme, target = split(ref)
    if scheme in LIBRARIES:
        name, location = location_of(ref)
        if location is not None and (not location.strip() or any(not c.isprintable() for c in location)):
            return f"'{target}': the checkpoint location is empty or has control characters"
        if name is None:
            return None
        try:
            family, _ = class_parts(name)
        except ModelRefError as exc:
            return exc.message
        if family is not None and scheme != "transformers":
            return f"'{name}': {scheme} classes are named without a family (e.g. AutoencoderKL)"
        return None
    if scheme == "py" and not _PY_TARGET.fullmatch(target):
        return f"'{target}' is not an import path `module.sub:attr`"
    return None


ARCH_SCHEMES = ("transformers", "diffusers", "py")


def arch_refs(params: dict[str, Any]) -> list[tuple[tuple[str, ...], Any]]:
    """The `arch` references of a weights-only stage (params.arch, params.config.arch): the
    class its weights load into, a reference like the model's own."""
    config = params.get("config")
    found = [(("arch",), params.get("arch")),
             (("config", "arch"), config.get("arch") if isinstance(config, dict) else None)]
    return [(path, value) for path, value in found if value is not None]


def arch_problem(value: Any) -> str | None:
    if not isinstance(value, str) or split(value)[0] not in ARCH_SCHEMES:
        return "name a module class as transformers:Class, diffusers:Class or py:module:Class"
    return problem(value)


def problem(ref: str) -> str | None:
    """Why `ref` may not be used (None: fine): its text, then, when the library is installed,
    whether it names a model class there. Imports no model code (nor torch)."""
    found = syntax_problem(ref)
    if found is not None:
        return found
    scheme, target = split(ref)
    if scheme not in LIBRARIES or importlib.util.find_spec(scheme) is None:
        return None
    named, _ = location_of(ref)
    if named is None:  # a checkpoint's class is read from its config (runtime/checkpoint.py)
        return None
    family, name = class_parts(named)
    return _family_problem(family, name) if family else _public_problem(scheme, name)


@functools.lru_cache(maxsize=256)
def _public_problem(library: str, name: str) -> str | None:
    table = _class_table(library)
    if table is None:  # an older layout: judged when the class is reached
        return None
    where = table.get(name)
    if where is None:
        from difflib import get_close_matches

        near = get_close_matches(name, [n for n in table if _is_model_module(library, table[n])], n=1)
        return f"{library} has no model class '{name}'" + (f"; did you mean '{near[0]}'?" if near else "")
    if not _is_model_module(library, where):
        return f"'{name}' is not a model class ({library}.{where} is not part of the model API)"
    return None


@functools.lru_cache(maxsize=4)
def _class_table(library: str) -> dict[str, str] | None:
    """The library's public name -> submodule table. Building it means importing the library
    (half a second for transformers, seconds for diffusers, most of a second `plan`), so it is
    kept on disk per installed version and read back from there."""
    from importlib import metadata

    from omnigraph.runtime import cache

    try:
        version = metadata.version(library)
    except metadata.PackageNotFoundError:
        version = None
    store = cache.entry_dir("profiles", f"classes-{library}-{version}") / "classes.json" if version else None
    if store is not None:
        known = cache.read_json(store).get("classes")
        if isinstance(known, dict):
            return known
    module = importlib.import_module(library)  # a lazy module: no model code runs
    table = getattr(module, "_class_to_module", None)
    if not isinstance(table, dict):
        return None
    table = {str(k): str(v) for k, v in table.items()}
    if store is not None:
        try:
            cache.write_json(store, {"classes": table})
        except OSError:  # a read-only cache: import again next time
            pass
    return table


def _is_model_module(library: str, where: str) -> bool:
    if library == "transformers":
        parts = where.split(".")
        # models.<family>.modeling_<family>; the auto classes are factories, not models
        return len(parts) == 3 and parts[0] == "models" and parts[1] != "auto" and parts[2].startswith("modeling_")
    return where == "models" or where.startswith("models.")


def _family_module(family: str) -> str:
    return f"transformers.models.{family}.modeling_{family}"


@functools.lru_cache(maxsize=256)
def _family_problem(family: str, name: str) -> str | None:
    """A class defined at the top level of the family's modeling module, found by reading
    its source (importing it would run the module)."""
    if family == "auto":
        return "the auto classes are factories, not model classes: name the model's own class"
    source = _family_source(family)
    if source is None:
        return f"transformers has no model family '{family}' (no module {_family_module(family)})"
    classes = _top_level_classes(str(source))
    if classes is None:
        return None  # judged when the class is reached
    if name not in classes:
        return f"transformers' {family} family defines no class '{name}'"
    return None


def _family_source(family: str) -> Path | None:
    """The family's modeling file, found from the package's folder: `find_spec` of a submodule
    would import transformers and its `models` package first (most of a second)."""
    try:
        spec = importlib.util.find_spec("transformers")  # top level: found, not imported
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "models" / family / f"modeling_{family}.py"
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=64)
def _top_level_classes(path: str) -> frozenset[str] | None:
    try:
        with open(path, encoding="utf-8") as src:
            tree = ast.parse(src.read())
    except (OSError, SyntaxError, ValueError):
        return None
    return frozenset(n.name for n in tree.body if isinstance(n, ast.ClassDef))


def library_class(scheme: str, target: str) -> type:
    """The model class `scheme:target` names, refusing anything that is not a torch module
    class of the library's model API (raises ModelRefError)."""
    ref = f"{scheme}:{target}"
    if scheme not in LIBRARIES:
        raise ModelRefError(f"'{ref}' is not a transformers: or diffusers: class")
    found = problem(ref)
    if found is not None:
        raise ModelRefError(found)
    family, name = class_parts(target)
    try:
        if family is None:
            obj: Any = getattr(importlib.import_module(scheme), name)
            home = f"{scheme}.models"
        else:
            home = _family_module(family)
            obj = getattr(importlib.import_module(home), name)
    except (ImportError, AttributeError) as exc:
        raise ModelRefError(f"cannot reach {ref}: {exc}") from None
    import inspect

    from torch import nn

    if not (inspect.isclass(obj) and issubclass(obj, nn.Module)):
        raise ModelRefError(f"'{ref}' is not a torch module class")
    module = getattr(obj, "__module__", "") or ""
    if not (module == home or module.startswith(home + ".")):
        raise ModelRefError(f"'{ref}' is defined in {module}, outside {home}")
    return obj
