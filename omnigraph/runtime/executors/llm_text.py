"""Text in and out of an AR LLM: prompt formatting, incremental detokenization,
stop strings and the chunks a streamed `text` port is cut into."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from omnigraph.runtime.executors.sentences import sentence_ends

_WORD_END = re.compile(r"\s")


def prompt_ids(tokenizer: Any, prompt: str, system: str | None, chat: bool,
               frame: tuple[str, str] | None = None, history: list[Any] | None = None) -> list[int]:
    """Token ids of a text prompt: the chat template when the tokenizer has one, with the
    earlier turns of `history` (ChatTurns: role, content) between the system prompt and it.

    `frame` is the template already rendered around the prompt (what comes before it and
    after it), as a bundle records it: the same ids without jinja2 at run time (for one turn:
    a conversation needs the template itself)."""
    turns = [{"role": t.role, "content": t.content} for t in history or []]
    if chat and frame is not None and not turns:
        return list(tokenizer.encode(frame[0] + prompt + frame[1], add_special_tokens=False))
    if chat and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system else []
        messages += turns + [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, Mapping) else ids)
    if chat and frame is not None:
        raise ValueError("a conversation needs the model's chat template, which this bundle does not carry "
                         "(it renders one turn); send the prompt alone")
    lines = [system] if system else []
    lines += [f"{t['role']}: {t['content']}" for t in turns]
    return list(tokenizer.encode("\n\n".join(lines + [prompt])))


class Detokenizer:
    """Token ids to text, one token at a time, in O(1) decode work per token.

    Decoding a token alone loses what depends on its neighbours (a leading space, a
    UTF-8 character split across byte tokens), so each step decodes a short window
    that starts a token or two back and releases text only once it is complete.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # window start
        self.read = 0  # ids up to here are already turned into text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):  # no half character
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is held back, at the end of generation."""
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return after[len(before):]


class TextStream:
    """One request's generated text: stops at a stop string (which it drops, and never
    streams part of), and cuts chunks at token, word or sentence boundaries."""

    def __init__(self, tokenizer: Any, stop: list[str], mode: str) -> None:
        self.detok = Detokenizer(tokenizer)
        self.stop = [s for s in stop if s]
        self.mode = mode
        self.text = ""
        self.sent = 0  # chars already handed out as chunks
        self.stopped = False

    def push(self, token: int) -> None:
        self._extend(self.detok.push(token))

    def close(self) -> None:
        self._extend(self.detok.flush())

    def _extend(self, piece: str) -> None:
        if not piece or self.stopped:
            return
        self.text += piece
        # Chunks never hold part of a stop string, so one can only begin after `sent`.
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True

    def take(self, final: bool = False) -> str:
        """The next chunk ("" when none is ready); everything left when `final`."""
        end = len(self.text) if final or self.stopped else self._boundary()
        piece = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return piece

    def _boundary(self) -> int:
        limit = len(self.text) - self._held()
        if self.mode == "token":
            return limit
        if self.mode == "sentence":  # cut after the space that follows a sentence: it goes with it
            ends = [e for e in sentence_ends(self.text[:limit], self.sent) if self.text[e - 1].isspace()]
        else:
            ends = [m.end() for m in _WORD_END.finditer(self.text, self.sent, limit)]
        return ends[-1] if ends else self.sent

    def _held(self) -> int:
        """Length of the longest tail of the text that may be the start of a stop string."""
        held = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), held, -1):
                if self.text.endswith(s[:k]):
                    held = k
                    break
        return held
