"""Target descriptions: every shipped one loads; a malformed one is a located error."""
from __future__ import annotations

from pathlib import Path

import pytest

from omnigraph.errors import TargetError
from omnigraph.target import load_target, shipped_targets


def test_shipped_targets() -> None:
    names = shipped_targets()
    assert {"cpu-local", "h100x1", "h100x8", "h200x8", "h100-2x8", "mixed"} <= set(names)
    sizes = {name: len(load_target(name).devices) for name in names}
    assert sizes["h100x8"] == 8 and sizes["h100-2x8"] == 16 and sizes["h100x1"] == 1
    mixed = load_target("mixed")
    assert {d.type for n in mixed.nodes for d in n.devices} == {"h100", "l40s"}


def test_unknown_target_suggests() -> None:
    with pytest.raises(TargetError, match="unknown target 'h100x9'") as info:
        load_target("h100x9")
    assert "h100x8" in (info.value.hint or "")


@pytest.mark.parametrize(
    "body, message, line",
    [
        ("target: t\nnodes: []\ninter_node_gb_s: 0\n", "at least 1 item", 2),
        ("target: t\nnodes:\n  - name: n\n    devices:\n      - {name: g, memory_gib: -1, peak_tflops: 1, "
         "mem_bandwidth_gb_s: 1}\n    intra_node_gb_s: 1\ninter_node_gb_s: 0\n", "greater than 0", 5),
        ("target: t\nnodes:\n  - name: n\n    devices:\n      - {name: g, memory_gib: 1, peak_tflops: 1, "
         "mem_bandwidth_gb_s: 1}\n    intra_node_gb_s: 1\n    nvlink_domains: [[g, h]]\n"
         "inter_node_gb_s: 0\n", r"unknown device\(s\) h", 3),
    ],
)
def test_malformed_target_is_located(tmp_path: Path, body: str, message: str, line: int) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(body)
    with pytest.raises(TargetError, match=message) as info:
        load_target(str(path))
    assert info.value.span is not None and info.value.span.line == line
