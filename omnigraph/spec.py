"""PipelineSpec: the one model every frontend produces.

The raw document (YAML, the ``.og`` DSL and the Python builder all produce it) is
validated by these pydantic models; shorthand forms are expanded here so that
equal pipelines give equal specs whatever they were written in. Semantic checks
(kinds, ports, references, cycles) follow in ``omnigraph.frontend.resolve``.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from omnigraph.modality import DTYPES, MODALITIES
from omnigraph.kinds import KINDS, Port
from omnigraph.names import NAME_PATTERN, REF_PATTERN


Modality = Literal["text", "tokens", "image", "audio", "video", "latent", "embedding", "scalar"]
DType = Literal["utf8", "bool", "u8", "i32", "i64", "f16", "bf16", "f32", "f64", "fp8"]
assert set(Modality.__args__) == set(MODALITIES) and set(DType.__args__) == set(DTYPES)


MAX_DIM = 2**63 - 1  # IR integers are i64


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False, allow_inf_nan=False)


class TypeSpec(_Model):
    """A port type: modality, optionally element type and shape (None = dynamic)."""

    modality: Modality
    dtype: DType | None = None
    shape: list[int | None] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"modality": value} if isinstance(value, str) else value

    @field_validator("shape", mode="before")
    @classmethod
    def _dynamic_dims(cls, value: Any) -> Any:
        if isinstance(value, list):
            if any(isinstance(d, dict) and len(d) == 1 and next(iter(d.values())) is None for d in value):
                # YAML reads a bare `?` in a flow list as a one-key mapping
                raise ValueError("write a dynamic dimension as \"?\" (quoted) or null")
            return [None if d == "?" else d for d in value]
        return value

    @field_validator("shape")
    @classmethod
    def _positive_dims(cls, value: list[int | None] | None) -> list[int | None] | None:
        for dim in value or []:
            if dim is not None and dim <= 0:
                raise ValueError(f"dimension {dim} must be positive (or '?' for dynamic)")
            if dim is not None and dim > MAX_DIM:
                raise ValueError(f"dimension {dim} does not fit in 64 bits")
        return value


class EdgeSpec(_Model):
    """One input wire: a pipeline input or loop carry (``name``) or a stage port (``stage.port``)."""

    source: str = Field(alias="from", pattern=REF_PATTERN)
    stream: bool = False

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"from": value} if isinstance(value, str) else value


class OutputSpec(_Model):
    source: str = Field(alias="from", pattern=REF_PATTERN)
    modality: Modality | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"from": value} if isinstance(value, str) else value


class ParallelSpec(_Model):
    """A user's parallelism request; the planner fills in what is left out."""

    tp: int = Field(1, ge=1, le=4096)
    pp: int = Field(1, ge=1, le=4096)
    dp: int = Field(1, ge=1, le=4096)
    ep: int = Field(1, ge=1, le=4096)
    replicas: int = Field(1, ge=1, le=4096)


StageInputs = list[EdgeSpec] | dict[str, EdgeSpec | list[EdgeSpec]]


class StageSpec(_Model):
    kind: str = Field(pattern=NAME_PATTERN)
    model: str | None = None
    inputs: StageInputs = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, TypeSpec] | None = None  # declared ports, for `custom` stages
    parallel: ParallelSpec | None = None

    @field_validator("inputs", mode="before")
    @classmethod
    def _single_input(cls, value: Any) -> Any:
        # `inputs: prompt` is the one-input shorthand of `inputs: [prompt]`.
        return [value] if isinstance(value, str) else value


class LoopSpec(_Model):
    """A bounded loop: stages run on carried values until `until` holds or max_iters."""

    carry: dict[str, EdgeSpec] = Field(min_length=1)
    max_iters: int = Field(ge=1, le=1_000_000)
    until: EdgeSpec
    next: dict[str, OutputSpec] = Field(min_length=1)
    stages: dict[str, StageSpec] = Field(min_length=1)


class PipelineSpec(_Model):
    pipeline: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    inputs: dict[str, TypeSpec] = Field(default_factory=dict)
    outputs: dict[str, OutputSpec]
    stages: dict[str, StageSpec] = Field(default_factory=dict)
    loops: dict[str, LoopSpec] = Field(default_factory=dict)

    def to_document(self) -> dict[str, Any]:
        """The canonical raw document (what YAML would say), without defaults."""
        return self.model_dump(by_alias=True, exclude_defaults=True, mode="json")


def stage_edges(stage: StageSpec) -> Iterator[tuple[str, int, EdgeSpec]]:
    """(port, index within the port, edge) for each wired input of a resolved stage."""
    assert isinstance(stage.inputs, dict)
    for port, edges in stage.inputs.items():
        for i, edge in enumerate(edges if isinstance(edges, list) else [edges]):
            yield port, i, edge


def stage_output_ports(stage: StageSpec) -> tuple[Port, ...]:
    kind = KINDS[stage.kind]
    declared = {k: v.modality for k, v in (stage.outputs or {}).items()}
    return kind.output_ports(stage.params, declared)


_NAME_OR_REF = {"type": "string", "pattern": REF_PATTERN}
# Shorthand forms the `before` validators accept, which pydantic cannot see.
_SHORTHANDS: dict[str, dict[str, Any]] = {
    "TypeSpec": {"enum": list(Modality.__args__), "description": "just a modality"},
    "EdgeSpec": {**_NAME_OR_REF, "description": "`input` or `stage.port`"},
    "OutputSpec": {**_NAME_OR_REF, "description": "`stage.port` (modality inferred)"},
}


def json_schema() -> dict[str, Any]:
    """JSON Schema of YAML specs, shorthands included (for editors and validators)."""
    schema = PipelineSpec.model_json_schema(by_alias=True)
    defs = schema["$defs"]
    dim = {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}, {"const": "?"}]}
    defs["TypeSpec"]["properties"]["shape"] = {"anyOf": [{"type": "array", "items": dim}, {"type": "null"}],
                                               "description": "dimensions; null or '?' = dynamic"}
    for name, short in _SHORTHANDS.items():
        defs[name] = {"anyOf": [short, defs[name]], "title": defs[name].get("title", name)}
    inputs = defs["StageSpec"]["properties"]["inputs"]
    inputs["anyOf"] = [{**_NAME_OR_REF, "description": "one input"}, *inputs["anyOf"]]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "omnigraph pipeline spec"
    return schema
