"""Opening a bundle — a directory or a .ogb zip — as untrusted input, and making its plan runnable.

`open_bundle` checks every file against the manifest (bundle_files.py) and reads the
plan. `Bundle.runnable_plan` then refuses what would be unsafe or would crash later:
a stage form its kind cannot load, a file outside the bundle, .pt2 programs from
another torch minor version, and — unless the caller trusts it — Python code the
bundle would run. The plan it returns names absolute paths inside the bundle.

Generated Triton kernels (kernels/, from `compile --emit bundle --kernels`) are Python
too, so they run only with trust. Without it the bundle is not refused: a kernel file
runs a stage's own graph, fused, so the stages run their unfused ops instead (the same
results, as without kernels or on a CPU without the interpreter) and one line on stderr
says so.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from omnigraph import model_ref
from omnigraph.errors import BundleError
from omnigraph.kinds import KINDS
from omnigraph.runtime.bundle_files import read_directory, unpack_archive
from omnigraph.runtime.bundle_manifest import CODE_DIR, PLAN_NAME, Manifest
from omnigraph.runtime.plan import RuntimePlan, StageKernels, StageNode

ARCHIVE_SUFFIX = ".ogb"

_ROLES: dict[str, frozenset[str]] = {
    "pt2": frozenset({"program"}),
    "weights": frozenset({"weights", "tokenizer"}),
    "file": frozenset({"gguf", "onnx", "onnx_config", "tokenizer"}),
    "code": frozenset({"code"}),
    "checkpoint": frozenset({"checkpoint", "tokenizer"}),
}
_FOLDER_ROLES = ("tokenizer", "code", "checkpoint")  # roles that name a folder of the bundle
# Module classes a bundle may name without shipping code: torch's and the runtime's own.
_SAFE_MODULES = re.compile(r"(torch|omnigraph\.runtime)(\.[\w.]+)?")


def is_bundle(path: str | Path) -> bool:
    """A directory or a .ogb file (a spec is a file of another kind)."""
    p = Path(path)
    return p.suffix == ARCHIVE_SUFFIX or p.is_dir()


@dataclass
class Bundle:
    source: Path  # what the user named
    root: Path  # a checked directory: the bundle itself, or a private unpacked copy of a .ogb
    manifest: Manifest
    plan: RuntimePlan  # as written: paths relative to the bundle
    _unpacked: Path | None = field(default=None, repr=False)

    def runnable_plan(self, trust_code: bool = False) -> RuntimePlan:
        """The plan with absolute paths, once every stage is checked loadable and safe."""
        check_torch(self.manifest, self.plan)
        code = code_stages(self.plan)
        if code and not trust_code:
            raise BundleError(f"the bundle runs Python code: {'; '.join(code)}; code in a bundle runs with your "
                              f"privileges", hint="read it (`omnigraph inspect` lists it), then pass --trust-code")
        plan = _localize(self.plan, self.root, set(self.manifest.files), set(self.manifest.kernels))
        fused = kernel_stages(plan)
        if fused and not trust_code:
            for node in plan.stages():
                node.kernels = None
            sys.stderr.write(f"omnigraph: the bundle's Triton kernels ({', '.join(fused)}) were not used: kernel "
                             f"files are Python code, which runs only with --trust-code; running the stages "
                             f"unfused\n")
        return plan

    def close(self) -> None:
        """Delete the unpacked copy of a .ogb (a directory bundle is left as it is)."""
        if self._unpacked is not None:
            shutil.rmtree(self._unpacked, ignore_errors=True)
            self._unpacked = None

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_bundle(path: str | Path) -> Bundle:
    """Check a bundle's files against its manifest and read its plan."""
    source = Path(path)
    if source.is_dir():
        root = source.resolve()
        manifest = read_directory(root)
        return Bundle(source, root, manifest, _read_plan(root, manifest))
    if source.suffix != ARCHIVE_SUFFIX:
        raise BundleError(f"{source}: not a bundle (a directory, or a {ARCHIVE_SUFFIX} file)")
    if not source.is_file():
        raise BundleError(f"{source}: no such bundle")
    unpacked = Path(tempfile.mkdtemp(prefix="omnigraph-bundle-"))  # mode 0700: this user's only
    try:
        manifest = unpack_archive(source, unpacked)
        return Bundle(source, unpacked, manifest, _read_plan(unpacked, manifest), unpacked)
    except BaseException:
        shutil.rmtree(unpacked, ignore_errors=True)
        raise


def _read_plan(root: Path, manifest: Manifest) -> RuntimePlan:
    try:
        plan = RuntimePlan.from_json((root / PLAN_NAME).read_text(encoding="utf-8"))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"{PLAN_NAME}: malformed at '{loc}': {first['msg']}") from None
    except (ValueError, AttributeError) as exc:  # a newer plan version, not JSON, not a JSON object
        raise BundleError(f"{PLAN_NAME}: {str(exc).splitlines()[0]}") from None
    stages = {s.name: s for s in plan.stages()}
    listed = {s.name: s for s in manifest.stages}
    if set(stages) != set(listed) or any(stages[n].program is None or stages[n].program.form != listed[n].form
                                         for n in stages):
        raise BundleError(f"{PLAN_NAME} and manifest.json disagree about the stages or how they are packaged")
    return plan


def check_torch(manifest: Manifest, plan: RuntimePlan) -> None:
    """A .pt2 program loads only in the torch minor version that exported it."""
    if not any(s.program is not None and s.program.form == "pt2" for s in plan.stages()):
        return
    import torch

    built, here = torch_minor(manifest.built_with.torch), torch_minor(torch.__version__)
    if built != here:
        raise BundleError(
            f"the bundle's torch.export programs were built with torch {manifest.built_with.torch}, but this is "
            f"torch {torch.__version__}: a .pt2 program runs only on the torch minor version that exported it",
            hint=f"install torch {built}.x to run it, or rebuild it here (omnigraph compile SPEC --emit bundle)")


def torch_minor(version: str) -> str:
    """"2.13.0+cpu" -> "2.13": the part of a torch version a .pt2 program depends on."""
    m = re.match(r"(\d+)\.(\d+)", version)
    return f"{m.group(1)}.{m.group(2)}" if m else version


def code_stages(plan: RuntimePlan) -> list[str]:
    """The stages that would import or call Python code the bundle names, described."""
    found = []
    for node in plan.stages():
        program = node.program
        if program is None:
            continue
        if program.form == "code" or node.kind == "custom":
            found.append(f"stage '{node.name}' calls {node.model}")
        elif program.form == "weights" and not trusted_class_ref(program.ref or ""):
            found.append(f"stage '{node.name}' builds {program.ref}")
    return found


def kernel_stages(plan: RuntimePlan) -> list[str]:
    """The stages that carry generated kernels."""
    return [node.name for node in plan.stages() if node.kernels is not None and node.kernels.files]


def trusted_class_ref(ref: str) -> bool:
    """Whether `ref` names a class a bundle may rebuild without trust: transformers', diffusers',
    torch's or the runtime's own (an nn.Module check follows when it is loaded)."""
    scheme, _, target = ref.partition(":")
    if scheme in model_ref.LIBRARIES:
        return model_ref.syntax_problem(ref) is None
    return scheme == "py" and bool(_SAFE_MODULES.fullmatch(target.partition(":")[0]))


def _localize(plan: RuntimePlan, root: Path, listed: set[str], kernels: set[str]) -> RuntimePlan:
    plan = plan.model_copy(deep=True)
    for node in plan.stages():
        _localize_stage(node, root, listed)
        if node.kernels is not None:
            node.kernels = _localize_kernels(node, node.kernels, root, listed & kernels)
    if plan.module_paths not in ([], [CODE_DIR]):
        raise BundleError(f"{PLAN_NAME}: module_paths {plan.module_paths} point outside the bundle's {CODE_DIR}/")
    plan.module_paths = [str(root / CODE_DIR)] if plan.module_paths else []
    return plan


def _localize_kernels(node: StageNode, kernels: StageKernels, root: Path, listed: set[str]) -> StageKernels:
    """The stage's kernel files as absolute paths, each one a kernel file the manifest lists."""
    def local(rel: str) -> str:
        if rel not in listed:
            raise BundleError(f"{PLAN_NAME}: stage '{node.name}': kernel file '{rel}' is not one of the "
                              f"bundle's kernels")
        return os.fspath(root.joinpath(*rel.split("/")))

    return StageKernels(files={e: local(p) for e, p in kernels.files.items()},
                        constants={e: local(p) for e, p in kernels.constants.items()})


def _localize_stage(node: StageNode, root: Path, listed: set[str]) -> None:
    program = node.program
    if program is None:
        raise BundleError(f"{PLAN_NAME}: stage '{node.name}' has no program")
    allowed = KINDS[node.kind].traits.bundle_forms if node.kind in KINDS else frozenset()
    if program.form not in allowed:
        raise BundleError(f"{PLAN_NAME}: a {node.kind} stage ('{node.name}') cannot be loaded from a "
                          f"{program.form} program")
    for role, rel in program.files.items():
        if role not in _ROLES[program.form]:
            raise BundleError(f"{PLAN_NAME}: stage '{node.name}': unknown {program.form} file role '{role}'")
        inside = rel in listed or (role in _FOLDER_ROLES and any(f.startswith(rel + "/") for f in listed))
        if not inside:
            raise BundleError(f"{PLAN_NAME}: stage '{node.name}': {role} '{rel}' is not a file of the bundle")
        program.files[role] = os.fspath(root.joinpath(*rel.split("/")))
    needed = {"pt2": "program", "weights": "weights", "file": KINDS[node.kind].traits.file_role,
              "checkpoint": "checkpoint"}.get(program.form)
    if needed is not None and needed not in program.files:
        raise BundleError(f"{PLAN_NAME}: stage '{node.name}': its {program.form} program names no {needed} file")
    if program.form == "file":  # the executor loads the model file the bundle carries
        node.model = f"{needed}:{program.files[needed]}"
    if program.form == "checkpoint":  # the folder as it was shipped, loaded as the class it names
        scheme, _, cls = (program.ref or "").partition(":")
        if scheme not in model_ref.LIBRARIES or not cls or not trusted_class_ref(program.ref or ""):
            raise BundleError(f"{PLAN_NAME}: stage '{node.name}': a checkpoint needs its transformers:/diffusers: class")
        node.model = f"{scheme}:{cls}@{program.files['checkpoint']}"
    if program.form == "weights":
        if not program.ref:
            raise BundleError(f"{PLAN_NAME}: stage '{node.name}': weights without the class to load them into")
        node.model = program.ref  # what the executor loads is the class the weights go into, nothing else
    tokenizer = program.files.get("tokenizer")
    if node.params.get("tokenizer") is not None and tokenizer is None:
        raise BundleError(f"{PLAN_NAME}: stage '{node.name}': its tokenizer is not in the bundle")
    if tokenizer is not None:
        node.params["tokenizer"] = f"gguf:{tokenizer}" if tokenizer.endswith(".gguf") else tokenizer
