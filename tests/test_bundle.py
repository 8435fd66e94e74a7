"""Bundles end to end: every runnable example compiles to a bundle that runs with the compiler
hidden (`omnigraph run BUNDLE` and `python -m omnigraph.runtime BUNDLE`) and gives the same
outputs, byte for byte, as running the spec; `omnigraph inspect`; what a bundle holds."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tempfile
import wave
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omnigraph.cli import main
from omnigraph.errors import BundleError
from omnigraph.runtime.bundle import open_bundle
from omnigraph.runtime.bundle_files import sha256_file
from omnigraph.runtime.bundle_manifest import FORMAT_VERSION
from runtime_only import hidden_lookups, run_runtime_only

pytest.importorskip("torch")
pytest.importorskip("diffusers")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = EXAMPLES / "tiny"

# name -> (spec, inputs); the bundle of a spec is shared by the cases that use it.
CASES: dict[str, tuple[str, dict[str, str]]] = {
    "vision_chat": ("vision_chat_tiny.yaml", {"prompt": "What is this?", "image": "@picture.png"}),
    "text_to_image": ("text_to_image_tiny.og", {"prompt": "a red fox"}),
    "moe": ("moe_tiny.yaml", {"prompt": "Hi", "image": "@picture.png", "audio": "@clip.wav"}),
    "bagel_understand": ("bagel_route_tiny.yaml", {"prompt": "What is this?", "image": "@picture.png",
                                                   "mode": "understand"}),
    "bagel_generate": ("bagel_route_tiny.yaml", {"prompt": "a red fox", "image": "@picture.png", "mode": "generate"}),
    "refine_loop": ("refine_loop_tiny.yaml", {"prompt": "Say hello."}),
}
# Runs each argv through the CLI's main in one process, in order: request ids (which seed
# unseeded sampling, as refine_loop's writer does) then line up between the two processes.
DRIVER = "import json, sys\nfrom omnigraph.cli import main\nsys.exit(max(main(a) for a in json.load(open(sys.argv[1]))))"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Input files, and every tiny example compiled to a bundle directory (vision_chat also to a .ogb)."""
    root = tmp_path_factory.mktemp("bundles")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "picture.png")
    t = np.arange(16000) / 16000
    with wave.open(str(root / "clip.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).tobytes())
    for spec in sorted({spec for spec, _ in CASES.values()}):
        assert main(["compile", str(TINY / spec), "--emit", "bundle", "-o", str(root / Path(spec).stem)]) == 0
    assert main(["compile", str(TINY / "vision_chat_tiny.yaml"), "--emit", "bundle", "-o",
                 str(root / "vision_chat.ogb")]) == 0
    return root


def _argv(target: str, inputs: dict[str, str], root: Path, out: Path) -> list[str]:
    argv = ["run", target, "-o", str(out), "--json"]
    for name, value in inputs.items():
        argv += ["-i", f"{name}=@{root / value[1:]}" if value.startswith("@") else f"{name}={value}"]
    return argv


@pytest.fixture(scope="module")
def direct(work: Path) -> Path:
    """Each case run from its spec (compiler and all), in one process."""
    # Unplanned, as the bundles were compiled (no --target): the same plan, so the same bytes.
    runs = [_argv(str(TINY / spec), inputs, work, work / "direct" / case) + ["--target", "none"]
            for case, (spec, inputs) in CASES.items()]
    (work / "direct.json").write_text(json.dumps(runs))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(work / "direct.json")], capture_output=True, text=True,
                          timeout=600, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "direct"


def _same_files(a: Path, b: Path) -> list[str]:
    """The output files of two runs, asserting they are the same names with the same bytes."""
    names = sorted(p.name for p in a.iterdir())
    assert names and names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{a.name}/{name} differs"
    return names


def test_every_tiny_bundle_runs_without_the_compiler(work: Path, direct: Path) -> None:
    assert {spec.split(".")[0] for spec, _ in CASES.values()} == {p.stem for p in TINY.glob("*.yaml")}
    runs = []
    for case, (spec, inputs) in CASES.items():
        argv = _argv(str(work / Path(spec).stem), inputs, work, work / "bundled" / case)
        runs.append(argv + (["--trust-code"] if case == "refine_loop" else []))
    (work / "bundled.json").write_text(json.dumps(runs))
    proc = run_runtime_only(["-c", DRIVER, str(work / "bundled.json")], work, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    produced = {case: _same_files(direct / case, work / "bundled" / case) for case in CASES}
    assert produced["text_to_image"] == ["image.png"] and produced["bagel_generate"] == ["picture.png"]
    assert produced["bagel_understand"] == ["answer.txt"] and produced["refine_loop"] == ["answer.txt"]
    # Nothing in omnigraph even looked for the compiler (transformers probes for jinja2, finds none).
    lookups = hidden_lookups(work)
    assert not [(name, who) for name, who in lookups if who.startswith("omnigraph")]
    assert {name for name, _ in lookups} <= {"jinja2"}


def test_python_m_runtime_runs_an_ogb(work: Path, direct: Path, tmp_path: Path) -> None:
    spec, inputs = CASES["vision_chat"]
    argv = ["-m", "omnigraph.runtime", *_argv(str(work / "vision_chat.ogb"), inputs, work, tmp_path / "out")[1:]]
    unpacked = set(Path(tempfile.gettempdir()).glob("omnigraph-bundle-*"))
    proc = run_runtime_only(argv, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _same_files(direct / "vision_chat", tmp_path / "out") == ["answer.txt"]
    assert set(Path(tempfile.gettempdir()).glob("omnigraph-bundle-*")) == unpacked  # its private copy is gone


def test_bundle_holds_programs_weights_code_and_hashes(work: Path) -> None:
    with open_bundle(work / "bagel_route_tiny") as bundle:
        m = bundle.manifest
        forms = {s.name: s.form for s in m.stages}
        assert forms == {"vit": "pt2", "connector": "pt2", "understand": "weights", "gen_llm": "weights",
                         "dit": "pt2", "vae": "pt2"}
        assert m.format_version == FORMAT_VERSION and m.built_with.torch.startswith("2.") and m.built_with.python
        for rel, entry in m.files.items():
            assert sha256_file(bundle.root / rel) == entry.sha256
        assert {"plan.json", "README.md", "programs/dit.pt2", "weights/understand.safetensors"} <= set(m.files)
        dit = next(s for s in m.stages if s.name == "dit")
        assert dit.signature == ["x: float32[?, 16, 4, 4]", "t: float32[?]", "cond: float32[?, ?, 32]"]
        assert "KV cache" in next(s for s in m.stages if s.name == "understand").reason
        readme = (bundle.root / "README.md").read_text()
        assert "python -m omnigraph.runtime BUNDLE" in readme and "--input mode=TEXT" in readme
        assert all(s.random_weights for s in m.stages if s.name != "connector")  # the spec said weights: random
        assert "**Random weights**: vit, understand, gen_llm, dit, vae were built" in readme
    with open_bundle(work / "moe_tiny") as bundle:
        experts = next(s for s in bundle.manifest.stages if s.name == "experts")
        assert experts.form == "weights" and "torch.export failed" in experts.reason  # data-dependent routing
    with open_bundle(work / "refine_loop_tiny") as bundle:
        check = next(s for s in bundle.plan.stages() if s.name == "check")
        assert check.program.form == "code" and bundle.manifest.code == ["code/critics.py"]
        assert bundle.plan.module_paths == ["code"]  # not the spec's folder on the build machine
    with zipfile.ZipFile(work / "vision_chat.ogb") as zf:
        names = zf.namelist()
        assert names[0] == "manifest.json" and all(not i.is_dir() for i in zf.infolist())
        assert set(names) == {"manifest.json", *json.loads(zf.read("manifest.json"))["files"]}


def test_inspect_prints_manifest_stages_plan_and_sizes(work: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps table cells to the terminal's width
    from omnigraph.runtime.plan import PLAN_VERSION

    assert main(["inspect", str(work / "vision_chat.ogb")]) == 0
    out = capsys.readouterr().out
    for text in ("vision_chat_tiny", f"bundle format {FORMAT_VERSION}", "verified: 5 files", "vision", "pt2", "projector",
                 "weights", "x: float32[?, 3, 32, 32]", "KV cache", f"plan v{PLAN_VERSION}", "inputs prompt: text, image: image",
                 "weights/llm.safetensors", "kB", "requires:"):
        assert text in out, text
    assert main(["inspect", str(work / "refine_loop_tiny")]) == 0
    assert "needs --trust-code" in capsys.readouterr().out
    assert main(["inspect", str(work / "text_to_image_tiny"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pipeline"] == "text_to_image_tiny"


def test_api_loads_a_bundle(work: Path, direct: Path) -> None:
    import omnigraph
    import torch

    image = torch.from_numpy(np.asarray(Image.open(work / "picture.png")).transpose(2, 0, 1).copy())
    with omnigraph.load(work / "vision_chat.ogb") as pipe:
        files = [Path(f) for s in pipe.plan.stages() for f in s.program.files.values()]
        assert files and all(f.is_absolute() and f.is_file() for f in files)  # in a private unpacked copy
        answer = pipe.run({"prompt": "What is this?", "image": image})["answer"]
    assert answer == (direct / "vision_chat" / "answer.txt").read_text()
    assert not any(f.exists() for f in files)  # the copy goes when the pipeline closes


VOCODER_MODULE = """
import torch


class Upsampler(torch.nn.Module):
    sample_rate = 16000

    def __init__(self, vocab: int = 32, hop: int = 64) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 8)
        self.up = torch.nn.ConvTranspose1d(8, 1, kernel_size=hop, stride=hop)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.up(self.embed(codes).transpose(1, 2))).squeeze(1)


def silence(codes):
    return torch.zeros(codes.numel() * 4)
"""


def test_a_class_beside_the_spec_ships_as_code_with_its_weights(tmp_path: Path) -> None:
    import omnigraph
    import torch

    (tmp_path / "voc_stages.py").write_text(VOCODER_MODULE)
    spec = tmp_path / "voc.og"
    spec.write_text('pipeline voc(codes: tokens) -> (speech: audio, quiet: audio) {\n'
                    '  v = vocoder(codes) { model: "py:voc_stages:Upsampler", seed: 3 }\n'
                    '  q = vocoder(codes) { model: "py:voc_stages:silence" }\n'
                    '  return speech = v.audio, quiet = q.audio\n}\n')
    assert main(["compile", str(spec), "--emit", "bundle", "-o", str(tmp_path / "voc.ogb")]) == 0
    codes = torch.arange(20) % 32
    with omnigraph.load(spec, target=None) as pipe:  # unplanned, like the bundle
        want = pipe.run({"codes": codes})
    with open_bundle(tmp_path / "voc.ogb") as bundle:
        forms = {s.name: (s.form, s.files) for s in bundle.manifest.stages}
        assert forms == {"v": ("weights", ["weights/v.safetensors"]), "q": ("code", ["code/voc_stages.py"])}
        assert bundle.manifest.code == ["code/voc_stages.py"]
        with pytest.raises(BundleError, match="stage 'v' builds py:voc_stages:Upsampler"):
            bundle.runnable_plan()
    (tmp_path / "voc_stages.py").unlink()  # the bundle runs from the copy it carries
    sys.modules.pop("voc_stages")
    importlib.invalidate_caches()
    with omnigraph.load(tmp_path / "voc.ogb", trust_code=True) as pipe:
        got = pipe.run({"codes": codes})
    for name in ("speech", "quiet"):
        assert np.array_equal(got[name].samples, want[name].samples) and got[name].sample_rate == want[name].sample_rate
    assert got["speech"].sample_rate == 16000 and np.abs(got["speech"].samples).mean() > 0


def test_compile_bundle_user_errors(work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(TINY / "vision_chat_tiny.yaml")
    assert main(["compile", spec, "--emit", "bundle"]) == 2
    assert "-o DIR or -o FILE.ogb" in capsys.readouterr().err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    assert main(["compile", spec, "--emit", "bundle", "-o", str(tmp_path / "notes")]) == 2
    assert "not an omnigraph bundle" in capsys.readouterr().err and (tmp_path / "notes" / "todo.txt").exists()
    assert main(["run", str(work / "vision_chat_tiny"), "--target", "cpu-local", "-i", "prompt=x"]) == 2
    assert "already compiled for its target" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "notes"), "-i", "prompt=x"]) == 2
    assert "not a bundle (no manifest.json)" in capsys.readouterr().err


def test_speak_bundle_runs_without_the_compiler(tmp_path: Path) -> None:
    """The README's demo as a .ogb: the GGUF and the ONNX voice kept as they are, the chat
    template recorded as a frame (no jinja2 at run time), same reply and same audio."""
    pytest.importorskip("piper")
    bundle = tmp_path / "speak.ogb"
    assert main(["compile", str(EXAMPLES / "speak.yaml"), "--emit", "bundle", "-o", str(bundle)]) == 0
    with zipfile.ZipFile(bundle) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        plan = json.loads(zf.read("plan.json"))
    assert [(s["name"], s["form"]) for s in manifest["stages"]] == [("thinker", "file"), ("talker", "file")]
    assert any(f.endswith(".gguf") for f in manifest["files"]) and any(f.endswith(".onnx") for f in manifest["files"])
    thinker = next(n for n in plan["nodes"] if n["name"] == "thinker")
    assert thinker["program"]["facts"]["chat_frame"][0].startswith("<|im_start|>system")
    prompt = "prompt=The capital of France is"
    assert main(["run", str(EXAMPLES / "speak.yaml"), "-i", prompt, "-o", str(tmp_path / "direct")]) == 0
    proc = run_runtime_only(["-m", "omnigraph.runtime", str(bundle), "-i", prompt, "-o", str(tmp_path / "bundled")],
                            tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _same_files(tmp_path / "direct", tmp_path / "bundled") == ["reply.txt", "speech.wav"]
    assert "Paris" in (tmp_path / "bundled" / "reply.txt").read_text()
    assert {name for name, _ in hidden_lookups(tmp_path)} <= {"jinja2"}
