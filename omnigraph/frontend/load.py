"""Load a spec from a file of any frontend: `.yaml`/`.yml` or `.og` (DSL)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omnigraph.errors import SpecError
from omnigraph.frontend.dsl import parse_dsl
from omnigraph.frontend.resolve import build_spec
from omnigraph.frontend.source import SourceMap
from omnigraph.frontend.text import read_spec_text
from omnigraph.frontend.yaml_frontend import parse_yaml
from omnigraph.spec import PipelineSpec

YAML_SUFFIXES = (".yaml", ".yml")
DSL_SUFFIXES = (".og",)


@dataclass
class LoadedSpec:
    spec: PipelineSpec
    srcmap: SourceMap


def parse_spec_text(text: str, file: str, fmt: str) -> LoadedSpec:
    """Parse spec text in format ``yaml`` or ``dsl``."""
    if fmt == "yaml":
        raw, srcmap = parse_yaml(text, file)
    elif fmt == "dsl":
        raw, srcmap = parse_dsl(text, file)
    else:
        raise ValueError(f"unknown spec format {fmt!r}")
    return LoadedSpec(build_spec(raw, srcmap), srcmap)


def spec_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in YAML_SUFFIXES:
        return "yaml"
    if suffix in DSL_SUFFIXES:
        return "dsl"
    raise SpecError(f"{path}: unknown spec format '{suffix or '(none)'}'; use .yaml, .yml or .og")


def load_spec(path: str | Path) -> LoadedSpec:
    fmt = spec_format(path)
    return parse_spec_text(read_spec_text(path), str(path), fmt)
