"""An LLM stage's chat template rendered once, around a placeholder, for its bundle.

The runtime applies a chat template with jinja2, which a bundle's environment need
not have. Rendered with the stage's system prompt around a placeholder, most
templates are a fixed text before the user's prompt and a fixed text after it; the
bundle records that frame and the runtime tokenizes frame + prompt itself. The frame
is kept only if, for several probe prompts, it gives exactly the token ids the
template gives; a template that transforms the prompt keeps needing jinja2.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_PLACEHOLDER = "\u2063omnigraph-prompt\u2063"
_PROBES = ("The capital of France is", " padded,\n\nlines\t", "{{ not a tag }} <b>&amp;</b> \u00e9\u00e8 \u4f60\u597d", "")


def chat_frame(tokenizer: Any, system: str | None) -> tuple[str, str] | None:
    """(before, after) the prompt, or None when the template is not a fixed frame."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = _render(tokenizer, _PLACEHOLDER, system, tokenize=False)
    if not isinstance(text, str) or text.count(_PLACEHOLDER) != 1:
        return None
    before, after = text.split(_PLACEHOLDER)
    for probe in _PROBES:
        ids = _render(tokenizer, probe, system, tokenize=True)
        ids = list(ids["input_ids"] if isinstance(ids, Mapping) else ids)
        if ids != list(tokenizer.encode(before + probe + after, add_special_tokens=False)):
            return None
    return before, after


def _render(tokenizer: Any, prompt: str, system: str | None, tokenize: bool) -> Any:
    # The same messages omnigraph.runtime.executors.llm_text.prompt_ids builds.
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=tokenize)
