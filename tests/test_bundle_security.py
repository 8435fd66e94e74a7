"""A bundle is untrusted input: each way of tampering with one is refused with a clear error that
names the file, before anything in it runs; payloads that would run code when loaded never run
(and each test first shows that its payload is live, by running it through the unsafe loader)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from omnigraph.cli import main
from omnigraph.errors import BundleError
from omnigraph.runtime.bundle import open_bundle

torch = pytest.importorskip("torch")
TINY = Path(__file__).resolve().parent.parent / "examples" / "tiny"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("built")
    assert main(["compile", str(TINY / "vision_chat_tiny.yaml"), "--emit", "bundle", "-o", str(root / "vc")]) == 0
    assert main(["compile", str(TINY / "refine_loop_tiny.yaml"), "--emit", "bundle", "-o", str(root / "loop")]) == 0
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(root / "in.png")
    return root


@pytest.fixture
def vc(built: Path, tmp_path: Path) -> Path:
    """A fresh copy of the vision_chat bundle (pt2 vision and projector, weights llm) to tamper with."""
    return Path(shutil.copytree(built / "vc", tmp_path / "vc"))


def run(bundle: Path, capsys: pytest.CaptureFixture[str], built: Path, *extra: str) -> tuple[int, str]:
    """`omnigraph run BUNDLE` on the vision_chat inputs: (exit code, stderr), checking that an
    error is the CLI's short message and not a traceback."""
    code = main(["run", str(bundle), "-i", "prompt=hi", "-i", f"image=@{built / 'in.png'}", *extra])
    err = capsys.readouterr().err
    if code != 0:
        assert code == 2 and "Traceback" not in err and "internal error" not in err, err
        assert 1 <= len(err.strip().splitlines()) <= 2, err
    return code, err


def edit_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=2))


def rehash(root: Path) -> None:
    """Re-record every file's sha256, as a bundle's (malicious) author would."""
    files = {p.relative_to(root).as_posix(): {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                                              "size": p.stat().st_size}
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    edit_json(root / "manifest.json", lambda m: m.__setitem__("files", files))


def zip_dir(root: Path, out: Path, extra: list[tuple[zipfile.ZipInfo, bytes]] = ()) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(root).as_posix())
        for info, data in extra:
            zf.writestr(info, data)
    return out


def stage(plan: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in plan["nodes"] if n["name"] == name)


# integrity -------------------------------------------------------------------------------
def test_a_tampered_file_is_refused(vc: Path, built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = vc / "programs" / "projector.pt2"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one bit pattern changed
    target.write_bytes(bytes(data))
    code, err = run(vc, capsys, built)
    assert code == 2 and "programs/projector.pt2: sha256 mismatch" in err
    code, err = run(zip_dir(vc, tmp_path / "vc.ogb"), capsys, built)
    assert code == 2 and "programs/projector.pt2: sha256 mismatch" in err
    target.write_bytes(bytes(data[:-10]))
    code, err = run(vc, capsys, built)
    assert code == 2 and "programs/projector.pt2" in err and "manifest.json says" in err


def test_missing_and_unlisted_files_are_refused(vc: Path, built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (vc / "weights" / "llm.safetensors").unlink()
    code, err = run(vc, capsys, built)
    assert code == 2 and "weights/llm.safetensors: missing" in err
    shutil.copytree(built / "vc" / "weights", vc / "weights", dirs_exist_ok=True)
    (vc / "code").mkdir()
    (vc / "code" / "sitecustomize.py").write_text("print('planted')\n")
    code, err = run(vc, capsys, built)
    assert code == 2 and "code/sitecustomize.py: not listed in manifest.json" in err


# paths -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, message", [("../escaped.txt", "escapes the bundle (zip-slip)"),
                                           ("programs/../../escaped.txt", "escapes the bundle (zip-slip)"),
                                           ("ABSOLUTE/escaped.txt", "is an absolute path")])
def test_zip_entries_outside_the_bundle_are_refused(vc: Path, built: Path, tmp_path: Path, name: str, message: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    name = name.replace("ABSOLUTE", str(tmp_path / "abs"))
    archive = zip_dir(vc, tmp_path / "evil.ogb", [(zipfile.ZipInfo(name), b"owned")])
    code, err = run(archive, capsys, built)
    assert code == 2 and "evil.ogb: entry" in err and message in err
    assert not list(tmp_path.rglob("escaped.txt"))  # nothing was written anywhere


def test_a_symlink_entry_in_a_zip_is_refused(vc: Path, built: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (vc / "plan.json").unlink()  # the link stands in for a listed file
    link = zipfile.ZipInfo("plan.json")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = zip_dir(vc, tmp_path / "link.ogb", [(link, b"/etc/passwd")])
    code, err = run(archive, capsys, built)
    assert code == 2 and "entry 'plan.json' is a symbolic link" in err


def test_symlinks_in_a_bundle_directory_are_refused(vc: Path, built: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "outside.safetensors"
    shutil.move(vc / "weights" / "llm.safetensors", outside)
    (vc / "weights" / "llm.safetensors").symlink_to(outside)  # same bytes: only the link is wrong
    code, err = run(vc, capsys, built)
    assert code == 2 and "weights/llm.safetensors: a symbolic link" in err
    (vc / "weights" / "llm.safetensors").unlink()
    shutil.move(outside, vc / "weights" / "llm.safetensors")
    shutil.move(vc / "programs", tmp_path / "programs")
    (vc / "programs").symlink_to(tmp_path / "programs", target_is_directory=True)
    code, err = run(vc, capsys, built)
    assert code == 2 and "programs: a symbolic link" in err


@pytest.mark.parametrize("path, message", [("../outside.txt", "escapes the bundle"),
                                           ("/etc/passwd", "is an absolute path"),
                                           ("programs/.hidden", "is not a plain file name")])
def test_manifest_paths_must_stay_inside(vc: Path, built: Path, path: str, message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    entry = {"sha256": "0" * 64, "size": 1}
    edit_json(vc / "manifest.json", lambda m: m["files"].__setitem__(path, entry))
    code, err = run(vc, capsys, built)
    assert code == 2 and f"'{path}' {message}" in err


# versions --------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (lambda m: m.__setitem__("format_version", 3), "bundle format version 3 is newer than this omnigraph reads"),
    (lambda m: m.__setitem__("format_version", 0), "unknown bundle format version 0"),
    (lambda m: m.__setitem__("format_version", "1"), "unknown bundle format version '1'"),
    (lambda m: m.__setitem__("format", "zip"), "not an omnigraph bundle manifest"),
])
def test_unknown_or_newer_formats_are_refused(vc: Path, built: Path, change: Callable[[dict[str, Any]], None],
                                              message: str, capsys: pytest.CaptureFixture[str]) -> None:
    edit_json(vc / "manifest.json", change)
    code, err = run(vc, capsys, built)
    assert code == 2 and f"manifest.json: {message}" in err


def test_a_newer_plan_is_refused(vc: Path, built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_json(vc / "plan.json", lambda p: p.__setitem__("version", 99))
    rehash(vc)
    code, err = run(vc, capsys, built)
    assert code == 2 and "plan.json: plan format version 99 is not supported" in err


def test_another_torch_version_is_a_clear_message(vc: Path, built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_json(vc / "manifest.json", lambda m: m["built_with"].__setitem__("torch", "2.12.1+cpu"))
    code, err = run(vc, capsys, built)
    assert code == 2 and "built with torch 2.12.1+cpu, but this is torch 2.13" in err
    assert "install torch 2.12.x" in err
    loop = Path(shutil.copytree(built / "loop", vc.parent / "loop"))  # no .pt2: any torch will do
    edit_json(loop / "manifest.json", lambda m: m["built_with"].__setitem__("torch", "2.12.1+cpu"))
    with open_bundle(loop) as bundle:
        assert bundle.runnable_plan(trust_code=True).stages()


# code that a bundle would run -------------------------------------------------------------
def test_python_code_runs_only_when_trusted(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(built / "loop"), "-i", "prompt=hi"])
    err = capsys.readouterr().err
    assert code == 2 and "stage 'check' calls py:critics:RubricCritic" in err and "--trust-code" in err
    assert main(["run", str(built / "loop"), "-i", "prompt=hi", "--trust-code"]) == 0


def test_a_bundle_can_only_rebuild_module_classes(vc: Path, built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A weights-form stage names the class its weights load into: never any other callable."""
    evil = {"form": "weights", "files": {"weights": "weights/llm.safetensors"}, "ref": "py:subprocess:Popen",
            "facts": {}, "reason": ""}
    edit_json(vc / "plan.json", lambda p: stage(p, "vision").__setitem__("program", evil))
    edit_json(vc / "manifest.json", lambda m: m["stages"][0].update(form="weights", files=["weights/llm.safetensors"]))
    rehash(vc)
    code, err = run(vc, capsys, built)
    assert code == 2 and "stage 'vision' builds py:subprocess:Popen" in err  # not torch's: it is code
    code, err = run(vc, capsys, built, "--trust-code")
    assert code == 2 and "'py:subprocess:Popen' is not a torch module class" in err


def test_a_stage_form_must_fit_its_kind(vc: Path, built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_json(vc / "plan.json", lambda p: stage(p, "vision")["program"].__setitem__("form", "file"))
    edit_json(vc / "manifest.json", lambda m: m["stages"][0].__setitem__("form", "file"))
    rehash(vc)
    code, err = run(vc, capsys, built)
    assert code == 2 and "a encoder stage ('vision') cannot be loaded from a file program" in err


# payloads that run code when unpickled or loaded -------------------------------------------
class Payload:
    """Unpickling this writes a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def _live(code: str, marker: Path) -> None:
    """Show that the payload does run through the unsafe loader (`code`, in another process)."""
    assert not marker.exists()
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert marker.exists(), "the payload is not live: the test would prove nothing"


def test_pickled_weights_never_run(vc: Path, built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "MARKER"
    (vc / "weights" / "llm.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": Payload(marker)}, vc / "weights" / "llm.pth")
    edit_json(vc / "plan.json", lambda p: stage(p, "llm")["program"]["files"].__setitem__("weights", "weights/llm.pth"))
    edit_json(vc / "manifest.json", lambda m: m["stages"][2].__setitem__("files", ["weights/llm.pth"]))
    rehash(vc)
    code, err = run(vc, capsys, built)
    assert code == 2 and "weights/llm.pth: refused to unpickle it" in err and "GLOBAL" in err
    assert not marker.exists()
    _live(f"import torch; torch.load({str(vc / 'weights' / 'llm.pth')!r}, weights_only=False)", marker)


def _rewrite_pt2(path: Path, change: Callable[[str, bytes], bytes]) -> None:
    """Rewrite every entry of a .pt2 archive through `change(entry name, bytes)`."""
    with zipfile.ZipFile(path) as zf:
        entries = [(info, change(info.filename, zf.read(info))) for info in zf.infolist()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    path.write_bytes(buf.getvalue())


def _pickled_weight(marker: Path) -> Callable[[str, bytes], bytes]:
    payload = io.BytesIO()
    torch.save(Payload(marker), payload)

    def change(name: str, data: bytes) -> bytes:
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            config["config"]["model.weight"]["use_pickle"] = True
            return json.dumps(config).encode()
        return payload.getvalue() if name.endswith("data/weights/weight_0") else data
    return change


def _expression(marker: Path) -> Callable[[str, bytes], bytes]:
    code = f"__import__('builtins').exec(\"open({str(marker)!r}, 'w').write('code ran')\")"

    def change(name: str, data: bytes) -> bytes:
        if not name.endswith("models/model.json"):
            return data
        text = data.decode()
        start = text.index('"expr_str": "') + len('"expr_str": "')
        return (text[:start] + code.replace('"', '\\"') + " or " + text[start:]).encode()
    return change


def _guard(marker: Path) -> Callable[[str, bytes], bytes]:
    # Closes the generated `torch._assert(` call, runs, then opens a function for the rest.
    guard = f"1 #\n, '')\nopen({str(marker)!r}, 'w').write('code ran')\ndef _g(*a):\n  (0"

    def change(name: str, data: bytes) -> bytes:
        if not name.endswith("models/model.json"):
            return data
        program = json.loads(data)
        program["guards_code"] = [guard]
        return json.dumps(program).encode()
    return change


@pytest.mark.parametrize("payload, message", [
    (_pickled_weight, "'model.weight' is stored as a pickled object"),
    (_expression, "is not plain arithmetic over shape symbols"),
    (_guard, "is not a plain shape check"),
])
def test_pt2_payloads_never_run(vc: Path, built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                payload: Callable[[Path], Callable[[str, bytes], bytes]], message: str) -> None:
    """torch.export.load unpickles marked weights, sympify's shape expressions and exec's
    guards; a .pt2 from a bundle is checked first."""
    marker = tmp_path / "MARKER"
    program = vc / "programs" / "projector.pt2"
    _rewrite_pt2(program, payload(marker))
    rehash(vc)
    code, err = run(vc, capsys, built)
    assert code == 2 and "projector.pt2" in err and message in err
    assert not marker.exists()
    _live(f"import torch; torch.export.load({str(program)!r}).module()", marker)


def test_a_graph_that_calls_python_is_refused() -> None:
    from omnigraph.runtime.pt2_audit import UnsafeProgram, check_graph

    program = torch.export.export(torch.nn.Linear(3, 2), (torch.ones(1, 3),))
    check_graph(program, "ok.pt2")
    node = next(n for n in program.graph.nodes if n.op == "call_function")
    node.target = os.system
    with pytest.raises(UnsafeProgram, match="calls call_function system, which is not a torch operator"):
        check_graph(program, "evil.pt2")


def test_open_bundle_errors_are_bundle_errors(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a bundle"):
        open_bundle(tmp_path / "nothing.yaml")
    (tmp_path / "junk.ogb").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="junk.ogb: not a bundle archive"):
        open_bundle(tmp_path / "junk.ogb")
