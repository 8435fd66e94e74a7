"""Bundles that carry the fusion kernels (`compile --emit bundle --kernels`): the manifest lists
them and hashes them; they run only with --trust-code (kernel files are Python) and then give
the unfused outputs; without it the stages run unfused, with one line saying so."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from omnigraph.api import load
from omnigraph.cli import main
from omnigraph.errors import BundleError
from omnigraph.runtime.bundle import open_bundle
from omnigraph.runtime.fused_stage import INTERPRET_ENV, FusedProgram

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
TINY = Path(__file__).resolve().parent.parent / "examples" / "tiny"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """vision_chat_tiny bundled with kernels; and its vision tower + projector alone (an
    embedding output, to compare numbers), bundled with kernels too."""
    root = tmp_path_factory.mktemp("kbundles")
    doc = yaml.safe_load((TINY / "vision_chat_tiny.yaml").read_text())
    doc["pipeline"] = "see_tiny"
    doc["inputs"] = {"image": doc["inputs"]["image"]}
    doc["outputs"] = {"embeds": {"from": "projector.embeds", "modality": "embedding"}}
    del doc["stages"]["llm"]
    (root / "see_tiny.yaml").write_text(yaml.safe_dump(doc))
    out = {"chat": root / "chat", "see": root / "see"}
    assert main(["compile", str(TINY / "vision_chat_tiny.yaml"), "--emit", "bundle", "--kernels",
                 "-o", str(out["chat"])]) == 0
    assert main(["compile", str(root / "see_tiny.yaml"), "--emit", "bundle", "--kernels", "-o", str(out["see"])]) == 0
    return out


def _image() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8))


def test_the_manifest_lists_and_hashes_the_kernels(bundles: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    manifest = json.loads((bundles["chat"] / "manifest.json").read_text())
    plan = json.loads((bundles["chat"] / "plan.json").read_text())
    assert "kernels/vision.forward.py" in manifest["kernels"]
    assert all(k.startswith("kernels/") and k in manifest["files"] for k in manifest["kernels"])
    vision = next(n for n in plan["nodes"] if n.get("name") == "vision")
    assert vision["kernels"]["files"] == {"forward": "kernels/vision.forward.py"}  # bundle-relative
    assert "kernels/" in (bundles["chat"] / "README.md").read_text()
    assert main(["inspect", str(bundles["chat"])]) == 0
    shown = capsys.readouterr().out
    assert "vision.forward: kernels/vision.forward.py" in shown and "--trust-code" in shown


def test_a_default_bundle_carries_no_kernels(bundles: dict[str, Path], tmp_path: Path) -> None:
    spec = bundles["see"].parent / "see_tiny.yaml"
    assert main(["compile", str(spec), "--emit", "bundle", "-o", str(tmp_path / "b")]) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["kernels"] == [] and not (tmp_path / "b" / "kernels").exists()
    assert all(n.get("kernels") is None for n in json.loads((tmp_path / "b" / "plan.json").read_text())["nodes"])


def test_trusted_kernels_run_fused_and_match_the_unfused_run(
        bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv(INTERPRET_ENV, "1")
    with load(bundles["see"]) as pipe:  # untrusted: unfused, said once
        want = pipe.run({"image": _image()})["embeds"]
    err = capsys.readouterr().err
    assert err.count("were not used") == 1 and "--trust-code" in err and "vision" in err
    calls = []
    forward = FusedProgram.forward
    monkeypatch.setattr(FusedProgram, "forward", lambda self, *a: calls.append(1) or forward(self, *a))
    with load(bundles["see"], trust_code=True) as pipe:
        got = pipe.run({"image": _image()})["embeds"]
    assert calls, "the trusted bundle did not run its kernels"
    assert "were not used" not in capsys.readouterr().err
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_the_untrusted_chat_bundle_runs_unfused(bundles: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    Image.fromarray(_image().permute(1, 2, 0).numpy()).save(tmp_path / "p.png")
    args = ["run", str(bundles["chat"]), "--input", "prompt=What is this?", "--input", f"image=@{tmp_path / 'p.png'}",
            "--output-dir", str(tmp_path / "out")]
    assert main(args) == 0
    assert "kernels" in capsys.readouterr().err and (tmp_path / "out" / "answer.txt").is_file()


def test_the_trusted_chat_bundle_runs_every_stage_fused(bundles: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The LLM too: its prefill and decode steps through their fused graphs, same answer."""
    inputs = {"prompt": "What is this?", "image": _image()}
    with load(bundles["chat"]) as pipe:
        want = pipe.run(inputs)["answer"]
    monkeypatch.setenv(INTERPRET_ENV, "1")
    ran: set[str] = set()
    forward = FusedProgram.forward
    monkeypatch.setattr(FusedProgram, "forward",
                        lambda self, *a: ran.add(Path(self.kernels.__file__).stem) or forward(self, *a))
    with load(bundles["chat"], trust_code=True) as pipe:
        got = pipe.run(inputs)["answer"]
    assert {"vision.forward", "llm.prefill", "llm.decode_step"} <= ran
    assert got == want


def test_a_tampered_kernel_file_is_refused(bundles: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundles["see"], copy)
    kernel = copy / "kernels" / "vision.forward.py"
    kernel.write_text(kernel.read_text() + "\nimport os  # injected\n")
    with pytest.raises(BundleError, match="kernels/vision.forward.py"):
        open_bundle(copy)


def test_a_plan_naming_a_kernel_outside_the_bundles_kernels_is_refused(bundles: dict[str, Path]) -> None:
    with open_bundle(bundles["see"]) as bundle:
        bundle.plan.stages()[0].kernels.files["forward"] = "plan.json"
        with pytest.raises(BundleError, match="not one of the bundle's kernels"):
            bundle.runnable_plan(trust_code=True)


def test_kernels_is_a_bundle_option(capsys: pytest.CaptureFixture) -> None:
    assert main(["compile", str(TINY / "vision_chat_tiny.yaml"), "--emit", "plan", "--kernels"]) == 2
    assert "--emit bundle" in capsys.readouterr().err
