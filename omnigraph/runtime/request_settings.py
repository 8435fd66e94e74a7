"""Settings one request gives a stage for itself (`temperature`, `max_new_tokens`, `stop` …).

A request may set, per stage, the params its kind lets a request set (`Traits.request_params`);
they are checked here, before the request starts, against the kind's parameter model merged
with the stage's own params, so a bad value fails the call that gave it (naming the stage and
the field) and never reaches a running batch. The executor reads them from WorkItem.settings.
"""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from omnigraph.errors import OmnigraphError
from omnigraph.kinds import KINDS
from omnigraph.runtime.plan import RuntimePlan


class SettingsError(OmnigraphError):
    """A per-request setting that does not apply or does not validate; `field` names it as
    `stage.param`."""

    def __init__(self, message: str, field: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.field = field


def validate_settings(plan: RuntimePlan, settings: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """The settings, checked and normalised (as the kind's model parses them), by stage."""
    if not settings:
        return {}
    stages = {n.name: n for n in plan.stages()}
    out: dict[str, dict[str, Any]] = {}
    for stage, values in settings.items():
        node = stages.get(stage)
        if node is None:
            raise SettingsError(f"settings: pipeline '{plan.pipeline}' has no stage '{stage}'", field=stage,
                                hint="stages: " + ", ".join(stages))
        if not isinstance(values, dict):
            raise SettingsError(f"settings.{stage}: expected a mapping of params", field=stage)
        kind = KINDS[node.kind]
        allowed = kind.traits.request_params
        for key in values:
            if key not in allowed:
                raise SettingsError(
                    f"settings.{stage}.{key}: not a per-request setting of stage '{stage}' ({node.kind})",
                    field=f"{stage}.{key}",
                    hint=("per-request settings: " + ", ".join(sorted(allowed))) if allowed
                    else f"{node.kind} stages take no per-request settings")
        base = {k: v for k, v in node.params.items() if k in kind.params.model_fields}
        try:
            parsed = kind.params.model_validate({**base, **values})
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or "?"
            raise SettingsError(f"settings.{stage}.{key}: {err['msg']}", field=f"{stage}.{key}") from None
        out[stage] = {key: getattr(parsed, key) for key in values}
    return out


def parse_assignments(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """`stage.param=value` pairs (the CLI's --set) as settings; values read as YAML scalars
    (`0.7`, `128`, `[".", "!"]`, `true`)."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        stage, dot, param = key.strip().partition(".")
        if not eq or not dot or not stage or not param:
            raise SettingsError(f"--set {pair!r}: expected STAGE.PARAM=VALUE (e.g. thinker.max_new_tokens=128)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.setdefault(stage, {})[param] = value
    return out


def merge_settings(*layers: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Later layers win, param by param (a file's settings, then the command line's)."""
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for stage, values in (layer or {}).items():
            if not isinstance(values, dict):
                raise SettingsError(f"settings.{stage}: expected a mapping of params", field=stage)
            out.setdefault(stage, {}).update(values)
    return out
