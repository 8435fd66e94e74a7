"""Which OpenAI-style endpoints a pipeline can serve, read off its typed inputs and outputs.

Chat needs one text input (the user's message) and a text or audio output; image and audio
inputs come as content parts. Speech needs text in and audio out, images text in and an image
out, and neither may need any other input. Every pipeline also has the general `run` endpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from omnigraph.runtime.plan import RuntimePlan

MEDIA_INPUTS = ("image", "audio")


@dataclass
class Surface:
    name: str
    text_input: str | None = None  # the input a chat message / speech text / image prompt fills
    media_inputs: dict[str, str] = field(default_factory=dict)  # input -> image | audio
    other_inputs: list[str] = field(default_factory=list)  # inputs only `run` can fill
    text_output: str | None = None
    audio_output: str | None = None
    image_output: str | None = None
    streamed: set[str] = field(default_factory=set)  # outputs delivered in chunks
    llm_stages: list[str] = field(default_factory=list)  # ar_llm stages: sampling settings
    prompt_stages: list[str] = field(default_factory=list)  # of those, the ones reading the text input

    @property
    def chat(self) -> bool:
        return self.text_input is not None and not self.other_inputs and bool(self.text_output or self.audio_output)

    @property
    def speech(self) -> bool:
        return self.text_input is not None and not self.other_inputs and not self.media_inputs \
            and self.audio_output is not None

    @property
    def images(self) -> bool:
        return self.text_input is not None and not self.other_inputs and not self.media_inputs \
            and self.image_output is not None

    def endpoints(self) -> list[tuple[str, str, str]]:
        """(method, path, what it serves for this pipeline), for the banner and the docs."""
        out = [("GET", "/v1/models", f"lists '{self.name}'")]
        if self.chat:
            got = " + ".join(x for x in (self.text_output and f"text ('{self.text_output}')",
                                         self.audio_output and f"audio ('{self.audio_output}')") if x)
            parts = "".join(f", {m} part -> '{n}'" for n, m in self.media_inputs.items())
            out.append(("POST", "/v1/chat/completions", f"messages -> '{self.text_input}'{parts}; {got}"))
        if self.speech:
            out.append(("POST", "/v1/audio/speech", f"input -> '{self.text_input}'; audio '{self.audio_output}'"))
        if self.images:
            out.append(("POST", "/v1/images/generations", f"prompt -> '{self.text_input}'; image '{self.image_output}'"))
        out.append(("POST", f"/v1/pipelines/{self.name}/run", "any inputs, all outputs (JSON or SSE)"))
        out += [("GET", "/health", "ready once loaded"), ("GET", "/metrics", "Prometheus text format")]
        return out


def surface(plan: RuntimePlan) -> Surface:
    s = Surface(plan.pipeline)
    texts = [n for n, t in plan.inputs.items() if t.modality == "text"]
    s.text_input = "prompt" if "prompt" in texts else (texts[0] if len(texts) == 1 else None)
    for name, ptype in plan.inputs.items():
        if name == s.text_input:
            continue
        if ptype.modality in MEDIA_INPUTS:
            s.media_inputs[name] = ptype.modality
        else:
            s.other_inputs.append(name)
    for name, ptype in plan.output_types.items():
        if ptype.stream:
            s.streamed.add(name)
        slot = {"text": "text_output", "audio": "audio_output", "image": "image_output"}.get(ptype.modality)
        if slot is not None and getattr(s, slot) is None:
            setattr(s, slot, name)
    for node in plan.stages():
        if node.kind == "ar_llm":
            s.llm_stages.append(node.name)
            if any(b.source == s.text_input for b in node.inputs):
                s.prompt_stages.append(node.name)
    return s
