"""The architecture's rules, checked on the source (docs/architecture.md says why):

- phases import one way: frontend -> dialect -> passes -> codegen, each only the phases
  before it; the compiler may use the runtime's plan schema and loaders, never its executors
  or backends; the runtime (and the server on it) imports nothing from the compiler (nor
  xdsl, lark, pulp, jinja2);
- no pass keeps module-level mutable state (a compile is a function of its inputs);
- no source file over 400 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PHASES = {"frontend": 0, "dialect": 1, "passes": 2, "codegen": 3}
FOLDERS = {"omnigraph/frontend": "frontend", "dialect": "dialect", "passes": "passes", "codegen": "codegen",
           "omnigraph/runtime": "runtime", "omnigraph/serve": "serve"}
DRIVERS = ("omnigraph.compiler", "omnigraph.api", "omnigraph.cli")  # string the phases together
COMPILER_LIBRARIES = ("xdsl", "lark", "pulp", "highspy", "jinja2")
# What the compiler may take from the runtime: the plan schema, model loaders and calling
# conventions, the bundle format, the cache. Never executors, workers or backends.
RUNTIME_FOR_THE_COMPILER = ("plan", "pp_schedule", "loaders", "entry_points", "checkpoint", "bundle", "bundle_files", "bundle_manifest",
                            "cache", "programs", "values", "media")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _phase_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "omnigraph" or len(parts) < 2:
        return None
    if parts[1] in PHASES or parts[1] == "runtime":
        return parts[1]
    if module.startswith(DRIVERS):
        return "driver"
    return None  # shared: errors, kinds, spec, names, modality, model_ref, target, output_paths


def _violations() -> list[str]:
    bad = []
    for folder, phase in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT)
            for line, module in _imports(path):
                target = _phase_of(module)
                top = module.split(".")[0]
                if phase in ("runtime", "serve"):  # the server runs bundles too: the runtime's side
                    if target is not None and target != "runtime" or top in COMPILER_LIBRARIES:
                        bad.append(f"{rel}:{line}: the {phase} imports {module}")
                    continue
                if target == "driver":
                    bad.append(f"{rel}:{line}: the {phase} phase imports the driver {module}")
                elif target in PHASES and PHASES[target] > PHASES[phase]:
                    bad.append(f"{rel}:{line}: {phase} imports {module}, a later phase")
                elif target == "runtime":
                    sub = module.split(".")[2] if module.count(".") >= 2 else ""
                    if sub not in RUNTIME_FOR_THE_COMPILER:
                        bad.append(f"{rel}:{line}: {phase} imports {module} (executors and backends are "
                                   f"the runtime's own)")
    return bad


def test_phases_import_one_way() -> None:
    assert _violations() == []


def test_the_checker_catches_a_backwards_import(tmp_path: Path) -> None:
    """The rule is live: a passes module importing codegen, or the runtime importing a pass, is caught."""
    assert _phase_of("omnigraph.codegen.plan_emitter") == "codegen"
    assert _phase_of("omnigraph.passes.planner.cost_rules") == "passes"
    assert _phase_of("omnigraph.cli.main") == "driver"
    assert _phase_of("omnigraph.kinds") is None


MUTABLE_CALLS = {"dict", "list", "set", "defaultdict", "OrderedDict", "deque", "Counter"}


def _module_state(path: Path) -> list[str]:
    """Module-level names bound to an empty (so: filled at run time) dict, list or set."""
    found = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        value = getattr(node, "value", None)
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or value is None:
            continue
        empty_literal = isinstance(value, (ast.Dict, ast.List, ast.Set)) and not (
            getattr(value, "keys", None) or getattr(value, "elts", None))
        call = isinstance(value, ast.Call) and getattr(value.func, "id", getattr(value.func, "attr", "")) in MUTABLE_CALLS \
            and not value.args
        if empty_literal or call:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Global):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: `global` rebinds module state")
    return found


def test_no_pass_keeps_module_level_state() -> None:
    found = [hit for path in sorted((ROOT / "passes").rglob("*.py")) for hit in _module_state(path)]
    assert found == []


def test_the_state_checker_is_live(tmp_path: Path) -> None:
    sample = ROOT / "passes" / "_probe_state.py"
    try:
        sample.write_text("CACHE = {}\nSEEN: set[str] = set()\nTABLE = {'a': 1}\n")
        assert [h.rsplit(":", 1)[1] for h in _module_state(sample)] == ["1", "2"]
    finally:
        sample.unlink()


@pytest.mark.parametrize("folder", ["omnigraph", "dialect", "passes", "codegen"])
def test_no_file_over_400_lines(folder: str) -> None:
    long = [f"{p.relative_to(ROOT)} ({n} lines)" for p in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400]
    assert long == []
