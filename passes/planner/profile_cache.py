"""Counted architecture profiles on disk, so that planning a spec a second time does not import
transformers and build the model on `meta` again (most of a `plan`'s seconds).

Keyed by the class reference, its config and the versions of the libraries that built and
counted it (torch, transformers, diffusers, and this module's format): a new library version
counts again. Only successful counts are kept; why a class could not be built is recomputed.
The entries live in omnigraph's cache (`omnigraph cache ls`, section `profiles`).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from omnigraph.passes.planner.cost_types import ArchProfile
from omnigraph.runtime.cache import read_json, write_json, entry_dir, record_source

FORMAT = 2  # bump when what _count measures changes (2: image_size)
_LIBRARIES = ("torch", "transformers", "diffusers")


@functools.cache  # reading a distribution's metadata parses a file: 1.5 ms, once per stage
def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _entry(ref: str, config_json: str) -> Any:
    key = hashlib.sha256(json.dumps([FORMAT, ref, config_json, _versions()]).encode()).hexdigest()[:32]
    return entry_dir("profiles", key)


def load(ref: str, config_json: str) -> ArchProfile | None:
    """The profile counted before for this class, config and library versions, if any."""
    doc = read_json(_entry(ref, config_json) / "profile.json")
    if not doc:
        return None
    fields = {f.name for f in dataclasses.fields(ArchProfile)}
    try:
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in doc.items() if k in fields}
        return ArchProfile(**values)
    except TypeError:  # an entry from an incompatible version of this module: count again
        return None


def save(ref: str, config_json: str, profile: ArchProfile) -> None:
    entry = _entry(ref, config_json)
    try:
        write_json(entry / "profile.json", dataclasses.asdict(profile))
        record_source(entry, Path(ref), counted="on meta")
    except OSError:  # a read-only cache: count again next time
        pass
