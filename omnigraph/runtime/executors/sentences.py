"""Where sentences end in text that is still being written: pysbd's rule-based segmenter
(abbreviations, initials, decimals, times: "Dr. Smith met Mr. Jones at 3 p.m. in the U.S." is
one sentence), asked about a growing text.

A streamed reply is cut at a sentence end as soon as the end is certain, not when the next
sentence is complete: the text so far is segmented with a probe word after it, and a
sentence counts as ended once pysbd puts the probe in a sentence of its own. Without pysbd
(it is in the `run` extra), ends are found by punctuation followed by a space.
"""
from __future__ import annotations

import functools
import re
from typing import Any

_PROBE = "And"  # a capitalised word a new sentence may start with
_FALLBACK_END = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*(?=\s)|\n""")


@functools.lru_cache(maxsize=1)
def _segmenter() -> Any:
    try:
        import pysbd
    except ImportError:
        return None
    return pysbd.Segmenter(language="en", clean=False, char_span=True)


def sentence_ends(text: str, start: int = 0) -> list[int]:
    """Offsets in `text` (after `start`) where a sentence certainly ends: each is the end of a
    complete sentence with the whitespace after it."""
    seg = _segmenter()
    if seg is None:
        return [m.end() for m in _FALLBACK_END.finditer(text, start)]
    probed = text + ("" if not text or text[-1].isspace() else " ") + _PROBE
    spans = seg.segment(probed)
    ends = []
    for span in spans[:-1]:  # the last holds the probe: never complete
        end = min(span.end, len(text))  # a span may take the space put before the probe
        while end < len(text) and text[end].isspace():
            end += 1
        if start < end <= len(text):
            ends.append(end)
    return ends
