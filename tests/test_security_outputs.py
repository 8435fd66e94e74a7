"""Writing files never destroys what omnigraph did not write, and no name from a spec, a plan
or a bundle becomes a path outside the folder it is written to."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from omnigraph.cli import main
from omnigraph.errors import BundleError, OmnigraphError
from omnigraph.output_paths import child
from omnigraph.runtime.bundle import open_bundle
from omnigraph.runtime.bundle_files import sha256_file
from omnigraph.runtime.plan import RuntimePlan

pytest.importorskip("torch")
TINY = Path(__file__).resolve().parent.parent / "examples" / "tiny"
SPEC = str(TINY / "vision_chat_tiny.yaml")


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _web_project(root: Path) -> dict[str, bytes]:
    (root / "src").mkdir(parents=True)
    (root / "manifest.json").write_text('{"name": "my-web-app", "version": "1.0.0"}')  # a web app's manifest
    (root / "index.html").write_text("<h1>mine</h1>")
    (root / "src" / "app.js").write_text("console.log('mine')")
    return _tree(root)


def test_a_folder_with_someone_elses_manifest_is_never_emptied(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site"
    before = _web_project(site)
    for force in ([], ["--force"]):
        assert main(["compile", SPEC, "--emit", "bundle", "-o", str(site), *force]) == 2
        err = capsys.readouterr().err
        assert "not an omnigraph bundle" in err and "nothing was written" in err, err
        assert _tree(site) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no staging folder left behind


def test_output_dot_is_the_working_directory_and_it_survives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    before = _web_project(work)
    monkeypatch.chdir(work)
    assert main(["compile", SPEC, "--emit", "bundle", "-o", ".", "--force"]) == 2
    assert "not an omnigraph bundle" in capsys.readouterr().err
    assert _tree(work) == before


def test_an_omnigraph_bundle_is_replaced_only_with_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bundle"
    assert main(["compile", SPEC, "--emit", "bundle", "-o", str(out)]) == 0
    first = _tree(out)
    (out / "stray.txt").write_text("left by hand")  # would make the manifest disagree; --force replaces all
    assert main(["compile", SPEC, "--emit", "bundle", "-o", str(out)]) == 2
    assert "already holds an omnigraph bundle" in capsys.readouterr().err
    assert (out / "stray.txt").exists()
    assert main(["compile", SPEC, "--emit", "bundle", "-o", str(out), "--force"]) == 0
    assert _tree(out).keys() == first.keys()  # the new bundle, whole, and nothing else
    open_bundle(out).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_an_archive_replaces_only_an_omnigraph_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "photos.ogb"
    other.write_bytes(b"not a bundle at all")
    assert main(["compile", SPEC, "--emit", "bundle", "-o", str(other), "--force"]) == 2
    assert "not an omnigraph bundle" in capsys.readouterr().err and other.read_bytes() == b"not a bundle at all"
    ogb = tmp_path / "chat.ogb"
    assert main(["compile", SPEC, "--emit", "bundle", "-o", str(ogb)]) == 0
    assert main(["compile", SPEC, "--emit", "bundle", "-o", str(ogb)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["compile", SPEC, "--emit", "bundle", "-o", str(ogb), "--force"]) == 0


def test_kernel_dumps_follow_the_same_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mine"
    before = _web_project(mine)
    assert main(["compile", SPEC, "--dump-kernels", str(mine)]) == 2
    assert "not an omnigraph kernel dump" in capsys.readouterr().err and _tree(mine) == before


# -- names that become paths ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "a/b", "..", "", "x\n", "ok\u202e"])
def test_a_name_is_never_a_path(tmp_path: Path, name: str) -> None:
    with pytest.raises(OmnigraphError, match="not a plain name"):
        child(tmp_path, name)
    assert child(tmp_path, "speech", ".wav") == tmp_path / "speech.wav"


def _plan_doc() -> dict:
    from omnigraph.api import compile_plan

    return json.loads(compile_plan(SPEC).to_json())


@pytest.mark.parametrize("where", ["output", "stage", "input", "kind", "pipeline"])
def test_the_plan_schema_refuses_names_that_are_paths(where: str) -> None:
    from pydantic import ValidationError

    doc = _plan_doc()
    bad = "../../escaped"
    if where == "output":
        doc["outputs"][bad] = doc["outputs"].pop("answer")
        doc["output_types"][bad] = doc["output_types"].pop("answer")
    elif where == "stage":
        doc["nodes"][0]["name"] = bad
    elif where == "input":
        doc["inputs"][bad] = doc["inputs"].pop("prompt")
    elif where == "kind":
        doc["nodes"][0]["kind"] = "/bin/sh"
    else:
        doc["pipeline"] = bad
    with pytest.raises(ValidationError):
        RuntimePlan.model_validate(doc)


def test_an_untrusted_bundle_cannot_write_outside_the_output_dir(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A bundle whose plan (re-hashed, so the manifest agrees) names an output `../../pwned`."""
    out = tmp_path / "b"
    assert main(["compile", SPEC, "--emit", "bundle", "-o", str(out)]) == 0
    plan = json.loads((out / "plan.json").read_text())
    plan["outputs"]["../../pwned"] = plan["outputs"].pop("answer")
    plan["output_types"]["../../pwned"] = plan["output_types"].pop("answer")
    (out / "plan.json").write_text(json.dumps(plan))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["plan.json"] = {"sha256": sha256_file(out / "plan.json"), "size": (out / "plan.json").stat().st_size}
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="plan.json: malformed"):
        open_bundle(out)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "picture.png")
    assert main(["run", str(out), "-i", "prompt=hi", "-i", f"image=@{tmp_path / 'picture.png'}", "-o",
                 str(outputs)]) == 2
    assert "malformed" in capsys.readouterr().err
    assert not (tmp_path / "pwned.txt").exists() and not list(outputs.iterdir())


def test_run_checks_every_output_name_before_writing(tmp_path: Path) -> None:
    from omnigraph.runtime.run_once import _save

    plan = RuntimePlan.model_validate(_plan_doc())
    with pytest.raises(OmnigraphError, match="not a plain name"):
        _save({"answer": "fine", "../x": "bad"}, plan, str(tmp_path / "o"))
    assert not (tmp_path / "o" / "answer.txt").exists()


@pytest.fixture(autouse=True)
def _no_stray_staging(tmp_path: Path):
    yield
    assert not [p for p in tmp_path.rglob(".omnigraph-*")], "a staging folder was left behind"
    shutil.rmtree(tmp_path, ignore_errors=True) if os.environ.get("OMNIGRAPH_KEEP") is None else None
