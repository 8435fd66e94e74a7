"""manifest.json: what a bundle holds, what built it, and the sha256 of every other file.

The runtime owns this schema (codegen's bundle writer fills it). A manifest is read
before anything else in a bundle: its format version first (a newer or unknown one
is refused before the rest is even validated), then every path it lists is checked
to be a plain relative path inside the bundle.
"""
from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from omnigraph.errors import BundleError

FORMAT = "omnigraph-bundle"
FORMAT_VERSION = 2  # 2: the checkpoint form, random_weights
MANIFEST_NAME = "manifest.json"
PLAN_NAME = "plan.json"
README_NAME = "README.md"
CODE_DIR = "code"
KERNELS_DIR = "kernels"  # generated Triton kernels (compile --emit bundle --kernels): code, run only when trusted
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few KiB; refuse to parse a giant one

# A bundle path: "/"-separated names of letters, digits, "_", "-", "+", "." that do not
# start with a dot: nothing absolute, no "..", no hidden files, no backslashes.
_SAFE_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*(/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*")
_MAX_PATH = 255


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileEntry(_Model):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class BuiltWith(_Model):
    omnigraph: str
    torch: str
    python: str
    platform: str = ""
    libraries: dict[str, str] = Field(default_factory=dict)  # transformers, diffusers, … as installed


class StageEntry(_Model):
    name: str
    kind: str
    form: Literal["pt2", "weights", "file", "code", "checkpoint"]
    reason: str = ""
    random_weights: bool = False  # built from a config with seeded random weights (weights: random)
    files: list[str] = Field(default_factory=list)
    signature: list[str] = Field(default_factory=list)  # a .pt2 program's inputs, "?" for dynamic dims


class Manifest(_Model):
    format: Literal["omnigraph-bundle"]
    format_version: int
    pipeline: str
    target: str | None = None
    built_with: BuiltWith
    stages: list[StageEntry]
    code: list[str] = Field(default_factory=list)  # Python source the bundle's stages import
    kernels: list[str] = Field(default_factory=list)  # generated Triton kernels' files (--kernels; else none)
    requires: list[str] = Field(default_factory=list)  # what to pip install to run it
    files: dict[str, FileEntry]  # every file but manifest.json itself

    def total_size(self) -> int:
        return sum(entry.size for entry in self.files.values())


def check_relpath(path: str, where: str = MANIFEST_NAME) -> str:
    """`path` if it is a safe relative path inside a bundle, else a BundleError naming it."""
    if not isinstance(path, str) or not path:
        raise BundleError(f"{where}: an empty file name")
    if path.startswith("/") or "\\" in path or re.match(r"^[A-Za-z]:", path):
        raise BundleError(f"{where}: '{path}' is an absolute path; a bundle names files relative to itself")
    if ".." in path.split("/"):
        raise BundleError(f"{where}: '{path}' escapes the bundle ('..')")
    if len(path) > _MAX_PATH or not _SAFE_PATH.fullmatch(path):
        raise BundleError(f"{where}: '{path}' is not a plain file name (letters, digits, _ - + . and /)")
    return path


def parse_manifest(text: str | bytes) -> Manifest:
    """The manifest, refusing an unknown or newer format before validating the rest."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise BundleError(f"{MANIFEST_NAME}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise BundleError(f"{MANIFEST_NAME}: not an omnigraph bundle manifest (format {found!r})")
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"{MANIFEST_NAME}: unknown bundle format version {version!r}")
    if version > FORMAT_VERSION:
        raise BundleError(f"{MANIFEST_NAME}: bundle format version {version} is newer than this omnigraph "
                          f"reads (up to {FORMAT_VERSION})", hint="upgrade omnigraph to run this bundle")
    try:
        manifest = Manifest.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"{MANIFEST_NAME}: malformed at '{loc}': {first['msg']}") from None
    _check_paths(manifest)
    return manifest


def _check_paths(manifest: Manifest) -> None:
    seen: dict[str, str] = {}
    for path in manifest.files:
        check_relpath(path)
        if path == MANIFEST_NAME:
            raise BundleError(f"{MANIFEST_NAME}: lists itself among the hashed files")
        folded = path.casefold()  # a.bin and A.bin are one file on macOS and Windows
        if folded in seen:
            raise BundleError(f"{MANIFEST_NAME}: '{seen[folded]}' and '{path}' differ only in case")
        seen[folded] = path
    listed = set(manifest.files)
    named = [*manifest.code, *manifest.kernels, *(f for s in manifest.stages for f in s.files)]
    for path in named:
        if path not in listed:
            raise BundleError(f"{MANIFEST_NAME}: '{path}' is named but has no sha256 entry in 'files'")
    if PLAN_NAME not in listed:
        raise BundleError(f"{PLAN_NAME}: missing (every bundle has a runtime plan)")
