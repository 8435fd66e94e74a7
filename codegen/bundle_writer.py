"""`omnigraph compile SPEC --emit bundle -o OUT`: a bundle directory, or a .ogb zip of one.

The bundle is built in a private folder beside OUT and moved into place only when
complete, so OUT is never half-written; OUT is replaced only when it is a bundle omnigraph
wrote and `--force` is given (see omnigraph/output_paths.py). Files are hashed last, after everything is
written; the zip is reproducible (sorted entries, fixed timestamps, plain file modes).
"""
from __future__ import annotations

import platform
import shutil
import stat
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from omnigraph import __version__
from omnigraph.runtime.bundle import ARCHIVE_SUFFIX, torch_minor
from omnigraph.output_paths import put_in_place, refuse_unowned, staging_beside
from omnigraph.runtime.bundle_files import sha256_file, written_by_omnigraph
from omnigraph.runtime.bundle_manifest import (
    CODE_DIR, FORMAT, FORMAT_VERSION, KERNELS_DIR, MANIFEST_NAME, PLAN_NAME, README_NAME,
    BuiltWith, FileEntry, Manifest, StageEntry,
)
from omnigraph.runtime.plan import RuntimePlan, StageKernels

from omnigraph.codegen.bundle_readme import render_readme
from omnigraph.codegen.kernel_module import KernelFile, attach_kernels
from omnigraph.codegen.stage_packer import StagePacker

_LIBRARIES = ("transformers", "diffusers", "onnxruntime", "safetensors", "gguf", "piper-tts")
_TEXT_SUFFIXES = (".json", ".md", ".py", ".txt")  # compressed in a .ogb; weights are stored as they are
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass
class WrittenBundle:
    path: Path
    manifest: Manifest


def write_bundle(plan: RuntimePlan, output: str | Path, kernels: list[KernelFile] | None = None,
                 force: bool = False) -> WrittenBundle:
    """Write a compiled pipeline's bundle to `output` (a directory, or a file ending .ogb): its
    runtime plan, each stage packed, and `kernels` (the fusion kernel files; code, so they run
    only with --trust-code). An existing `output` is replaced only if it is a bundle omnigraph
    wrote and `force` is set; anything else there is refused before any work."""
    out = Path(output)
    refuse_unowned(out, written_by_omnigraph, "bundle", force)
    plan = plan.model_copy(deep=True)  # the bundle's plan gets programs and relative paths
    with staging_beside(out, "the bundle") as tmp:
        staging = tmp / "bundle"
        staging.mkdir()
        if kernels:
            attach_kernels(plan, kernels, staging / KERNELS_DIR)
        manifest = _build(plan, staging)
        built = staging
        if out.suffix == ARCHIVE_SUFFIX:
            built = tmp / "bundle.ogb"
            _zip(staging, manifest, built)
        put_in_place(built, out, written_by_omnigraph, "bundle", force)
    return WrittenBundle(out, manifest)


def _build(plan: RuntimePlan, root: Path) -> Manifest:
    packer = StagePacker(root, plan)
    stages, requires = [], {"torch", "safetensors", "pydantic", "numpy", "rich", "pillow"}
    for node in plan.stages():
        kernels, node.kernels = node.kernels, None  # packed (exported) as the unfused module
        packed = packer.pack(node)
        node.program = packed.program
        node.kernels = _bundle_kernels(kernels, root)
        requires |= packed.requires
        stages.append(StageEntry(name=node.name, kind=node.kind, form=packed.program.form,
                                 reason=packed.program.reason, files=_stage_files(packed.program.files, root),
                                 signature=packed.signature, random_weights=node.params.get("weights") == "random"))
    plan.module_paths = [CODE_DIR] if packer.code else []  # the spec's folder does not travel
    (root / PLAN_NAME).write_text(plan.to_json(), encoding="utf-8")
    built = _built_with()
    manifest = Manifest(format=FORMAT, format_version=FORMAT_VERSION, pipeline=plan.pipeline, target=plan.target,
                        built_with=built, stages=stages, code=sorted(packer.code), kernels=_kernel_files(root),
                        requires=_requirements(requires, built.torch), files={})
    (root / README_NAME).write_text(render_readme(manifest, plan), encoding="utf-8")
    for path in root.rglob("*"):  # readable by whoever receives it (some writers make files 0600)
        path.chmod(0o755 if path.is_dir() else 0o644)
    manifest.files = {rel: FileEntry(sha256=sha256_file(root / rel), size=(root / rel).stat().st_size)
                      for rel in _all_files(root)}
    (root / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return manifest


def _stage_files(files: dict[str, str], root: Path) -> list[str]:
    """A stage's files; a folder role (a tokenizer, a code package) as the files in it."""
    listed = []
    for rel in files.values():
        path = root / rel
        listed += [rel] if path.is_file() else sorted(p.relative_to(root).as_posix()
                                                      for p in path.rglob("*") if p.is_file())
    return listed


def _bundle_kernels(kernels: StageKernels | None, root: Path) -> StageKernels | None:
    """A stage's kernels with paths relative to the bundle (they were written inside it)."""
    if kernels is None:
        return None
    base = root.resolve()

    def rel(path: str) -> str:
        return Path(path).resolve().relative_to(base).as_posix()

    return StageKernels(files={e: rel(p) for e, p in kernels.files.items()},
                        constants={e: rel(p) for e, p in kernels.constants.items()})


def _kernel_files(root: Path) -> list[str]:
    folder = root / KERNELS_DIR
    return sorted(p.relative_to(root).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def _all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.name != MANIFEST_NAME)


def _built_with() -> BuiltWith:
    import torch

    libraries = {}
    for name in _LIBRARIES:
        try:
            libraries[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return BuiltWith(omnigraph=__version__, torch=torch.__version__, python=platform.python_version(),
                     platform=f"{sys.platform}-{platform.machine()}", libraries=libraries)


def _requirements(packages: set[str], torch_version: str) -> list[str]:
    return sorted(f"torch=={torch_minor(torch_version)}.*" if p == "torch" else p for p in packages)


def _zip(root: Path, manifest: Manifest, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w") as zf:
        for rel in [MANIFEST_NAME, *sorted(manifest.files)]:
            path = root / rel
            info = zipfile.ZipInfo(rel, date_time=_ZIP_TIME)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED if rel.endswith(_TEXT_SUFFIXES) else zipfile.ZIP_STORED
            size = path.stat().st_size
            with path.open("rb") as src, zf.open(info, "w", force_zip64=size >= 1 << 31) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
