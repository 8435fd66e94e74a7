"""`pip install omnigraph` alone (no torch): plans are counted from the architecture's config,
and a stage nothing is known about is a guess the table and the JSON say out loud.

Each case runs in a fresh interpreter where `import torch` fails (libraries remember what
they found at import, so hiding torch inside this process would leak into other tests)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SPEC = str(EXAMPLES / "qwen3_omni_moe.yaml")
NO_TORCH = "import sys\nsys.modules['torch'] = None\nfrom omnigraph.cli import main\nsys.exit(main(sys.argv[1:]))"


def _plan(*extra: str, hide_torch: bool = True) -> subprocess.CompletedProcess[str]:
    script = NO_TORCH if hide_torch else NO_TORCH.replace("sys.modules['torch'] = None\n", "")
    # A fresh cache, as on a machine that never planned with torch (a counted profile from an
    # earlier plan would otherwise be read back: see passes/planner/profile_cache.py).
    with tempfile.TemporaryDirectory() as cache:
        proc = subprocess.run([sys.executable, "-c", script, "plan", SPEC, "--target", "h100x8", *extra],
                              capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMNIGRAPH_CACHE": cache})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_qwen3_omni_is_counted_from_its_config_and_says_what_it_guessed() -> None:
    doc = json.loads(_plan("--json").stdout)
    rows = {r["stage"]: r for r in doc["stages"]}
    # Counted on meta (with torch): thinker 31.72B, talker 3.33B, audio tower 0.65B.
    assert rows["thinker"]["counted"] == "config" and rows["thinker"]["params"] == pytest.approx(31.72e9, rel=0.03)
    assert rows["talker"]["params"] == pytest.approx(3.33e9, rel=0.06)
    assert rows["audio_encoder"]["params"] == pytest.approx(0.65e9, rel=0.05)
    assert "torch is not installed" in rows["thinker"]["note"]
    assert doc["guessed"] == ["code2wav"]  # a conv vocoder: no formula, and it says so
    assert rows["code2wav"]["counted"] == "guess" and "GUESSED" in rows["code2wav"]["note"]
    table = _plan().stdout
    assert "warning: stage code2wav" in table and "GUESSED" in table and "~31.57B" in table


def test_with_torch_the_same_plan_is_counted_on_meta() -> None:
    pytest.importorskip("torch")
    doc = json.loads(_plan("--json", hide_torch=False).stdout)
    assert doc["guessed"] == []
    assert {r["counted"] for r in doc["stages"] if r["kind"] != "projector"} == {"meta"}


def test_a_second_plan_reads_the_counted_profiles_from_the_cache(tmp_path: Path) -> None:
    """The first plan counts each model on meta (importing transformers); the second reads the
    counts back from the cache and never imports torch, with the same figures."""
    pytest.importorskip("torch")
    env = {**os.environ, "OMNIGRAPH_CACHE": str(tmp_path)}
    argv = [sys.executable, "-c", NO_TORCH.replace("sys.modules['torch'] = None\n", ""), "plan", SPEC,
            "--target", "h100x8", "--json"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert list((tmp_path / "profiles").iterdir())
    second = subprocess.run([*argv[:2], NO_TORCH, *argv[3:]], capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stderr[-2000:]  # torch hidden: only the cache can count
    rows = lambda doc: {r["stage"]: (r["params"], r["counted"]) for r in json.loads(doc)["stages"]}  # noqa: E731
    assert rows(second.stdout) == rows(first.stdout)
    assert rows(first.stdout)["thinker"][1] == "meta"
