"""Values ↔ files, for `omnigraph run`: audio as 16-bit PCM WAV, images as PNG,
text as UTF-8 .txt, any other tensor as .safetensors (key "value").
"""
from __future__ import annotations

import io
import wave
from pathlib import Path
from typing import IO, Any

import numpy as np

from omnigraph.runtime.values import Audio

_TENSOR_KEY = "value"
_PCM_DTYPES = {1: np.uint8, 2: np.int16, 4: np.int32}  # WAV sample width -> numpy type


def write_output(path_stem: Path | str, value: Any, modality: str) -> Path:
    """Write `value` to `path_stem` plus the suffix its modality gets; returns the path."""
    stem = Path(path_stem)

    def named(suffix: str) -> Path:  # appended, not with_suffix: "reply.v2" keeps its ".v2"
        return stem.with_name(stem.name + suffix)

    if isinstance(value, Audio):
        return _write_wav(named(".wav"), value)
    if isinstance(value, (str, int, float, bool)) or value is None:  # text, scalars
        path = named(".txt")
        path.write_text("" if value is None else str(value), encoding="utf-8")
        return path
    if modality == "image":
        return _write_png(named(".png"), value)
    return _write_tensor(named(".safetensors"), value, modality)


def read_input(path: Path, modality: str) -> Any:
    """A file as a value of `modality`: .wav → Audio, an image → uint8 [3, H, W] tensor,
    .safetensors → its tensor, anything else → its text."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        return tensors.get(_TENSOR_KEY, next(iter(tensors.values()), None))
    if modality == "audio":
        return _read_wav(path)
    if modality == "image":
        return _read_image(path)
    return path.read_text(encoding="utf-8")


def encode_media(value: Any, modality: str) -> tuple[bytes, str]:
    """An audio or image value as file bytes and their MIME type (WAV, PNG): for a server."""
    buffer = io.BytesIO()
    if isinstance(value, Audio):
        _write_wav(buffer, value)
        return buffer.getvalue(), "audio/wav"
    if modality == "image":
        _write_png(buffer, value)
        return buffer.getvalue(), "image/png"
    raise ValueError(f"a {modality} value has no media encoding")


def decode_media(data: bytes, modality: str) -> Any:
    """File bytes (a WAV, an image) as a value of `modality`."""
    if modality == "audio":
        return _read_wav(io.BytesIO(data))
    if modality == "image":
        return _read_image(io.BytesIO(data))
    raise ValueError(f"no {modality} value is read from media bytes")


def pcm16(audio: Audio) -> bytes:
    """Mono samples as little-endian 16-bit PCM (OpenAI's `pcm16` / `pcm` formats)."""
    samples = np.asarray(audio.samples, dtype=np.float32).reshape(-1)
    return np.round(np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def _target(path: Path | IO[bytes]) -> Any:
    return str(path) if isinstance(path, Path) else path


# audio -----------------------------------------------------------------------------------
def _write_wav(path: Path | IO[bytes], audio: Audio) -> Path | IO[bytes]:
    samples = np.asarray(audio.samples, dtype=np.float32)
    channels = 1 if samples.ndim == 1 else samples.shape[0]  # [C, N] when not mono
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(_target(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(2)
        f.setframerate(int(audio.sample_rate))
        f.writeframes((pcm.T if channels > 1 else pcm).tobytes())  # frames interleave channels
    return path


def _read_wav(path: Path | IO[bytes]) -> Audio:
    """An audio file as mono float32: WAV of any PCM width or float, FLAC, OGG/Vorbis, and
    MP3 where libsndfile reads it (soundfile); plain WAV with the standard library else."""
    try:
        import soundfile
    except ImportError:
        return _read_pcm_wav(path)
    try:
        data, rate = soundfile.read(_target(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise ValueError(f"not an audio file soundfile can read ({exc})") from None
    return Audio(np.ascontiguousarray(data.mean(axis=1), dtype=np.float32), int(rate))


def _read_pcm_wav(path: Path | IO[bytes]) -> Audio:
    with wave.open(_target(path), "rb") as f:
        width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
        raw = f.readframes(f.getnframes())
    if width not in _PCM_DTYPES:
        raise ValueError(f"{width * 8}-bit WAV is not supported (8, 16 or 32-bit PCM)")
    pcm = np.frombuffer(raw, dtype=np.dtype(_PCM_DTYPES[width]).newbyteorder("<")).astype(np.float32)
    if width == 1:  # 8-bit WAV is unsigned
        pcm -= 128.0
    scale = float(2 ** (8 * width - 1))
    mono = pcm.reshape(-1, channels).mean(axis=1) / scale
    return Audio(mono.astype(np.float32), rate)


# images ----------------------------------------------------------------------------------
def _write_png(path: Path | IO[bytes], image: Any) -> Path | IO[bytes]:
    from PIL import Image

    pixels = _as_numpy(image)
    while pixels.ndim > 3 and pixels.shape[0] == 1:  # a batch of one
        pixels = pixels[0]
    if pixels.dtype != np.uint8:  # floats in [0, 1]
        pixels = np.round(np.clip(pixels.astype(np.float32), 0.0, 1.0) * 255).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[0] in (1, 3, 4):  # the runtime's [C, H, W]
        pixels = pixels.transpose(1, 2, 0)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] in (3, 4))):
        raise ValueError(f"cannot write an image of shape {tuple(_as_numpy(image).shape)}; expected [3, H, W]")
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, format="PNG")
    return path


def _read_image(path: Path | IO[bytes]) -> Any:
    import torch
    from PIL import Image

    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


# tensors ---------------------------------------------------------------------------------
def _write_tensor(path: Path, value: Any, modality: str) -> Path:
    import torch
    from safetensors.torch import save_file

    tensor = torch.as_tensor(_as_numpy(value)) if not isinstance(value, torch.Tensor) else value
    # safetensors refuses views that share storage: save a contiguous copy on the CPU.
    save_file({_TENSOR_KEY: tensor.detach().cpu().contiguous().clone()}, str(path), metadata={"modality": modality})
    return path


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if value.dtype.is_floating_point:
            value = value.float()  # bf16 has no numpy type
        return value.numpy()
    return np.asarray(value)
