"""The daily path: -q/-v on every command, JSON never mixed with progress, kinds --json, shell
completion, audio inputs in the formats people have, band-limited resampling, and `run`
saying where unsaved outputs would go."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from omnigraph.cli import main
from omnigraph.cli.main import build_parser

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_every_command_takes_quiet_and_verbose() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # noqa: SLF001 - argparse keeps no public list
    for name, command in sub.choices.items():
        flags = {o for a in command._actions for o in a.option_strings}  # noqa: SLF001
        assert {"-q", "--quiet", "-v", "--verbose"} <= flags, name


def test_kinds_json_and_completion(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kinds", "--json"]) == 0
    kinds = {k["kind"]: k for k in json.loads(capsys.readouterr().out)}
    assert "temperature" in kinds["ar_llm"]["request_params"] and kinds["tts"]["outputs"][0]["modality"] == "audio"
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "serve" in script and "--max-queue" in script


def test_quiet_run_prints_only_its_output(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    assert main(["run", str(EXAMPLES / "tiny" / "text_to_image_tiny.yaml"), "-i", "prompt=fox"]) == 0
    loud = capsys.readouterr()
    assert "not saved: add --output-dir DIR (-o) to write image.png" in loud.err and "random weights" in loud.err
    assert main(["run", str(EXAMPLES / "tiny" / "text_to_image_tiny.yaml"), "-i", "prompt=fox", "-q"]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == "" and "image" in quiet.out
    assert main(["check", "no/such.yaml", "-q"]) == 2  # errors are never quiet
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize(("fmt", "subtype"), [("WAV", "PCM_24"), ("WAV", "PCM_U8"), ("WAV", "FLOAT"), ("FLAC", "PCM_16"),
                                              ("OGG", "VORBIS")])
def test_audio_inputs_in_common_formats(fmt: str, subtype: str) -> None:
    soundfile = pytest.importorskip("soundfile")
    from omnigraph.runtime.media import decode_media

    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    stereo = np.stack([tone, tone], axis=1)
    buf = io.BytesIO()
    soundfile.write(buf, stereo, 16000, format=fmt, subtype=subtype)
    audio = decode_media(buf.getvalue(), "audio")
    assert audio.sample_rate == 16000 and audio.samples.shape == (16000,) and audio.samples.dtype == np.float32
    assert np.abs(audio.samples - tone).max() < 0.1  # stereo folded to mono, levels kept


def test_resampling_does_not_alias() -> None:
    pytest.importorskip("soxr")
    torch = pytest.importorskip("torch")
    from omnigraph.runtime.executors.media import resample

    rate = 44100
    high = np.sin(2 * np.pi * 10_000 * np.arange(rate) / rate).astype(np.float32)  # above 16 kHz's Nyquist
    low = np.sin(2 * np.pi * 1_000 * np.arange(rate) / rate).astype(np.float32)
    out_high, out_low = resample(high, rate, 16000), resample(low, rate, 16000)
    assert isinstance(out_high, torch.Tensor) and out_high.numel() == 16000
    assert float(out_high.pow(2).mean()) < 1e-3  # filtered out, not folded down to 6 kHz
    assert abs(float(out_low.pow(2).mean()) - 0.5) < 0.02  # in band: kept
