"""The front ends are linear in the size of the spec: doubling the stages doubles the work.

Work is counted as Python line events under a tracer (deterministic, unlike a clock); a
quadratic step (the DSL once rescanned every recorded span for each stage) makes the ratio
grow towards 4. benchmarks/check_scale.py times 20k-stage specs for real."""
from __future__ import annotations

import sys

import pytest

from omnigraph.frontend import parse_spec_text


def chain_dsl(n: int) -> str:
    lines = ["pipeline big(x: embedding) -> (y: embedding) {"]
    prev = "x"
    for i in range(n):
        lines.append(f'  s{i} = projector({prev}) {{ model: "py:torch.nn:Linear", in_dim: 8, out_dim: 8 }}')
        prev = f"s{i}.embeds"
    lines += [f"  return y = {prev}", "}"]
    return "\n".join(lines) + "\n"


def chain_yaml(n: int) -> str:
    out = ["pipeline: big", "inputs: {x: embedding}", f"outputs: {{y: s{n - 1}.embeds}}", "stages:"]
    prev = "x"
    for i in range(n):
        out.append(f'  s{i}: {{kind: projector, model: "py:torch.nn:Linear", inputs: [{prev}], '
                   f'params: {{in_dim: 8, out_dim: 8}}}}')
        prev = f"s{i}.embeds"
    return "\n".join(out) + "\n"


def _lines_executed(text: str, fmt: str) -> int:
    count = 0

    def tracer(frame, event, arg):  # noqa: ANN001, ANN202 - sys.settrace's protocol
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        parse_spec_text(text, f"big.{fmt}", fmt)
    finally:
        sys.settrace(None)
    return count


@pytest.mark.parametrize("fmt,make", [("dsl", chain_dsl), ("yaml", chain_yaml)])
def test_checking_is_linear_in_the_number_of_stages(fmt: str, make) -> None:  # noqa: ANN001
    parse_spec_text(make(10), f"warm.{fmt}", fmt)  # grammar and caches built outside the count
    small, large = (_lines_executed(make(n), fmt) for n in (250, 500))
    assert large / small < 2.3, (small, large)
