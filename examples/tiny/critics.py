"""Deterministic critics for the tiny examples' `custom` stages (no model, no randomness).

``RubricCritic`` is the checker of refine_loop_tiny (``model: "py:critics:RubricCritic"``; the
runtime puts this folder on ``sys.path``). It scores a draft against a small rubric of checks a
program can make without a language model:

- ``non_empty``: the draft has some non-blank text;
- ``ends_with_punctuation``: its last non-blank character is ``.``, ``!`` or ``?``;
- ``concise``: it has at most ``max_words`` whitespace-separated words.

The score is the fraction of the rubric's checks that pass; the draft is accepted when the score
reaches ``threshold``. A call returns the stage's two declared output ports:

- ``accept``: ``1.0`` when accepted, else ``0.0`` (a loop's ``until`` reads it as true / false);
- ``feedback``: an instruction for the editor that lists what to fix and quotes the draft it
  judged, so the editor sees both.

The stage's extra params (``threshold``, ``max_words``, ``rubric``) are the constructor's keyword
arguments; its one positional input arrives as ``in0``.
"""
from __future__ import annotations

from typing import Any, Callable

_END = (".", "!", "?")


class RubricCritic:
    """Score a draft on a fixed rubric; accept it when the passing fraction reaches ``threshold``."""

    def __init__(self, threshold: float = 1.0, max_words: int = 40,
                 rubric: list[str] | tuple[str, ...] = ("non_empty", "ends_with_punctuation", "concise")) -> None:
        checks: dict[str, tuple[Callable[[str], bool], str]] = {
            "non_empty": (lambda d: bool(d.strip()), "write a non-empty answer"),
            "ends_with_punctuation": (lambda d: d.rstrip().endswith(_END),
                                      "end it with a full stop, question mark or exclamation mark"),
            "concise": (lambda d: len(d.split()) <= max_words, f"shorten it to at most {max_words} words"),
        }
        unknown = [name for name in rubric if name not in checks]
        if unknown or not rubric:
            raise ValueError(f"unknown rubric item(s) {unknown}; choose from {', '.join(checks)}")
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], not {threshold}")
        if int(max_words) < 1:
            raise ValueError(f"max_words must be at least 1, not {max_words}")
        self.threshold = float(threshold)
        self.max_words = int(max_words)
        self.rubric = [(name, *checks[name]) for name in rubric]

    def score(self, draft: str) -> tuple[float, list[str]]:
        """The fraction of rubric checks the draft passes, and the fixes for those it fails."""
        fixes = [fix for _, check, fix in self.rubric if not check(draft)]
        return 1.0 - len(fixes) / len(self.rubric), fixes

    def __call__(self, in0: Any) -> dict[str, Any]:
        draft = in0 if isinstance(in0, str) else str(in0)
        score, fixes = self.score(draft)
        accepted = score >= self.threshold
        if accepted:
            head = "The draft meets the rubric; return it unchanged."
        else:
            head = "Rewrite the draft: " + "; ".join(fixes) + "."
        return {"accept": 1.0 if accepted else 0.0, "feedback": f"{head}\n\nDraft:\n{draft.strip()}"}
