"""Request mixes: what the simulator and the planner assume the traffic looks like.

A mix is a weighted list of `RequestShape`s. On the command line it is written as
presets with weights (``chat:0.7,long:0.3``; a bare name weighs 1), or as a YAML
file holding a list of shapes::

    - {preset: chat, weight: 3}                 # a preset, reweighted
    - {name: doc_qa, prompt_tokens: 4096, reply_tokens: 256, weight: 1}

A shape's fields are those of `RequestShape`; `preset` starts it from a named one, and
fields left out keep the preset's (or RequestShape's) values.
A pipeline reads only the sizes of the inputs it has (an image size means nothing to
a text-only pipeline), so each preset sets every field.
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

from omnigraph.errors import SpecError
from omnigraph.passes.planner.cost_types import RequestShape

# The presets. Sizes are those of common open models: a 336 px image is 576 vision tokens
# (LLaVA-1.5 / Qwen2-VL at that size), a video is 32 frames of 256 tokens, speech
# replies run about 0.3 s and 4 codec tokens per text token (Qwen2.5-Omni's talker).
PRESETS: dict[str, RequestShape] = {
    # A conversational turn: short prompt (with the chat template), a paragraph back.
    "chat": RequestShape(name="chat", prompt_tokens=256, reply_tokens=128, image_tokens=576,
                         audio_seconds=5.0),
    # Long-context work (a document in the prompt, a long answer).
    "long": RequestShape(name="long", prompt_tokens=4096, reply_tokens=512, image_tokens=576,
                         audio_seconds=30.0),
    # Image-heavy: a high-resolution image (4 tiles of 576 tokens), a short question and answer.
    "image": RequestShape(name="image", prompt_tokens=64, reply_tokens=64, image_tokens=2304,
                          audio_seconds=5.0),
    # A spoken question (15 s of audio) answered aloud in a couple of sentences.
    "speech": RequestShape(name="speech", prompt_tokens=128, reply_tokens=96, image_tokens=576,
                           audio_seconds=15.0),
    # A 32-frame clip (256 tokens a frame) with its soundtrack, described in a paragraph.
    "video": RequestShape(name="video", prompt_tokens=128, reply_tokens=128, image_tokens=8192,
                          audio_seconds=30.0),
}
DEFAULT_MIX = "chat"

_FIELDS = {f.name: f for f in dataclasses.fields(RequestShape)}


def parse_mix(text: str | None) -> list[RequestShape]:
    """A mix from `preset:weight,…`, a YAML file of shapes, or None (the default mix)."""
    if text is None:
        text = DEFAULT_MIX
    text = text.strip()
    if not text:
        raise SpecError("empty request mix", hint=f"presets: {', '.join(PRESETS)}")
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml") or path.is_file():
        return _mix_file(path)
    mix = [_preset_entry(part.strip()) for part in text.split(",") if part.strip()]
    if not mix:
        raise SpecError(f"request mix '{text}' names no preset", hint=f"presets: {', '.join(PRESETS)}")
    return mix


def sample_shapes(mix: list[RequestShape], n: int, seed: int = 0) -> list[RequestShape]:
    """`n` shapes drawn from the mix by weight; the same seed draws the same list."""
    if not mix:
        raise SpecError("empty request mix")
    if len(mix) == 1:
        return [mix[0]] * n
    return random.Random(seed).choices(mix, weights=[s.weight for s in mix], k=n)


def mean_shape(mix: list[RequestShape]) -> RequestShape:
    """The weighted average request of a mix (integer fields rounded)."""
    total = sum(s.weight for s in mix)
    values: dict[str, Any] = {"name": "+".join(s.name for s in mix), "weight": 1.0}
    for name, f in _FIELDS.items():
        if name in values:
            continue
        mean = sum(getattr(s, name) * s.weight for s in mix) / total
        values[name] = round(mean) if f.type in (int, "int") else mean
    return RequestShape(**values)


def _preset_entry(part: str) -> RequestShape:
    name, sep, weight_text = part.partition(":")
    name = name.strip()
    shape = _preset(name)
    weight = 1.0
    if sep:
        try:
            weight = float(weight_text)
        except ValueError:
            raise SpecError(f"request mix '{part}': weight '{weight_text}' is not a number",
                            hint="write preset:weight, e.g. chat:0.7,long:0.3") from None
    return _weighted(shape, weight, f"request mix '{part}'")


def _preset(name: str) -> RequestShape:
    if name in PRESETS:
        return PRESETS[name]
    from omnigraph.frontend.messages import suggest

    raise SpecError(f"unknown request preset '{name}'",
                    hint=suggest(name, PRESETS) or f"presets: {', '.join(PRESETS)}")


def _weighted(shape: RequestShape, weight: float, what: str) -> RequestShape:
    if not weight > 0 or weight == float("inf"):
        raise SpecError(f"{what}: weight {weight:g} must be a positive number")
    return dataclasses.replace(shape, weight=weight)


def _mix_file(path: Path) -> list[RequestShape]:
    from omnigraph.frontend.text import read_spec_text
    from omnigraph.frontend.yaml_frontend import parse_yaml

    raw, srcmap = parse_yaml(read_spec_text(path), str(path))
    if not isinstance(raw, list) or not raw:
        raise srcmap.error("a request mix file holds a non-empty list of request shapes", ())
    mix = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise srcmap.error("each request shape is a mapping of RequestShape fields", (i,))
        mix.append(_shape_from(entry, i, srcmap))
    return mix


def _shape_from(entry: dict[str, Any], i: int, srcmap: Any) -> RequestShape:
    from omnigraph.frontend.messages import suggest

    base = RequestShape()
    if "preset" in entry:
        if not isinstance(entry["preset"], str):
            raise srcmap.error("preset is a preset's name", (i, "preset"))
        try:
            base = _preset(entry["preset"])
        except SpecError as exc:
            raise srcmap.error(exc.message, (i, "preset"), hint=exc.hint) from None
    values: dict[str, Any] = {}
    for key, value in entry.items():
        if key == "preset":
            continue
        f = _FIELDS.get(key)
        if f is None:
            raise srcmap.error(f"unknown request shape field '{key}'", (i, key), key=True,
                               hint=suggest(str(key), [*_FIELDS, "preset"])
                               or "fields: " + ", ".join([*_FIELDS, "preset"]))
        values[key] = _field_value(key, value, f, (i, key), srcmap)
    shape = dataclasses.replace(base, **values)
    if "name" not in values and "preset" not in entry:
        shape = dataclasses.replace(shape, name=f"shape{i}")
    try:
        return _weighted(shape, shape.weight, f"request shape '{shape.name}'")
    except SpecError as exc:
        raise srcmap.error(exc.message, (i, "weight") if "weight" in entry else (i,)) from None


def _field_value(key: str, value: Any, f: dataclasses.Field, loc: tuple, srcmap: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind == "str":
        if not isinstance(value, str):
            raise srcmap.error(f"{key} is a string", loc)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise srcmap.error(f"{key} is a number, not {value!r}", loc)
    if kind == "int":
        if value != int(value):
            raise srcmap.error(f"{key} is a whole number, not {value!r}", loc)
        value = int(value)
    else:
        value = float(value)
    if value < 0:
        raise srcmap.error(f"{key} cannot be negative ({value!r})", loc)
    return value
