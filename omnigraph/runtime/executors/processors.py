"""An encoder's input processing, done by transformers' own processors.

    image, video   the checkpoint's image processor (preprocessor_config.json); without one,
                   the model family's (SigLIP, CLIP, ViT, … from config.model_type) sized to
                   config.image_size, PIL backend; a model with no image size keeps the image's
    audio          the checkpoint's feature extractor; else WhisperFeatureExtractor with the
                   model's mel bins, and its fixed window when it has one (Whisper, Qwen2-Audio)
    text           the checkpoint's tokenizer; else UTF-8 byte ids (no vocabulary to read)

A bundle records the processors' configs (`facts`), since an exported program has no config of
its own; they come back as processors of the same class, which must be transformers' own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnigraph.runtime.loaders import folder_tokenizer
from omnigraph.runtime.executors.media import as_rgb, byte_ids, image_size, resample
from omnigraph.runtime.values import Audio

MEL_RATE = 16_000
MEL_HOP = 160
DEFAULT_MELS = 80  # Whisper's, for modules that do not say
_FAMILIES = {"clip_vision_model": "clip", "siglip_vision_model": "siglip", "siglip2_vision_model": "siglip2"}


def _transformers_class(name: Any, kind: str) -> Any:
    """A processor class of transformers by name (a bundle's facts name it: refuse the rest)."""
    import transformers

    where = getattr(transformers, "_class_to_module", {}).get(name) if isinstance(name, str) else None
    if where is None or not (where.startswith("models.") or where.startswith(kind)):
        raise ValueError(f"'{name}' is not a transformers {kind} class")
    return getattr(transformers, name)


def image_processor(model: Any, folder: Path | None) -> Any:
    from transformers import AutoImageProcessor
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    if folder is not None and (folder / "preprocessor_config.json").is_file():
        return AutoImageProcessor.from_pretrained(str(folder), local_files_only=True, backend="pil")
    config = getattr(model, "config", None)
    family = str(getattr(config, "model_type", "") or "")
    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(_FAMILIES.get(family, family)) or IMAGE_PROCESSOR_MAPPING_NAMES["vit"]
    cls = _transformers_class(names.get("pil"), "image_processing")
    size = image_size(getattr(config, "image_size", None))
    if size is None:  # a module with no image size (a conv net) keeps the image's own
        return cls(do_resize=False)
    return cls(size={"height": size[0], "width": size[1]}, do_center_crop=False)


def feature_extractor(model: Any, folder: Path | None, window: int | None) -> Any:
    from transformers import AutoFeatureExtractor, WhisperFeatureExtractor

    if folder is not None and (folder / "preprocessor_config.json").is_file():
        return AutoFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
    config = getattr(model, "config", None)
    mels = int(getattr(config, "num_mel_bins", None) or getattr(config, "n_mels", None) or DEFAULT_MELS)
    extractor = WhisperFeatureExtractor(feature_size=mels)
    if window is not None:  # a fixed window (Whisper's 30 s, a tiny model's 1 s): pad or cut to it
        extractor.n_samples, extractor.nb_max_frames = window * MEL_HOP, window
        extractor.chunk_length = window * MEL_HOP // MEL_RATE
    return extractor


def tokenizer(folder: Path | None) -> Any | None:
    return folder_tokenizer(folder) if folder is not None else None


def _hw(size: Any) -> tuple[int, int] | None:
    """(height, width) of a processor's size (a dict, or transformers' SizeDict)."""
    get = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    h, w = get("height"), get("width")
    return (int(h), int(w)) if h and w else None


class Processors:
    """The encoder's processors, and what each modality's value becomes as model input."""

    def __init__(self, images: Any, audio: Any, text: Any, vocab: int | None, window: int | None) -> None:
        self.images, self.audio_fe, self.text_tok = images, audio, text
        self.vocab, self.window = vocab, window

    @classmethod
    def of(cls, model: Any, folder: Path | None, modality: str, window: int | None) -> Processors:
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        images = image_processor(model, folder) if modality in ("image", "video") else None
        audio = feature_extractor(model, folder, window) if modality == "audio" else None
        text = tokenizer(folder) if modality == "text" else None
        return cls(images, audio, text, vocab, window)

    def facts(self) -> dict[str, Any]:
        """What a bundle records to rebuild these (the processors' configs, by class)."""
        out: dict[str, Any] = {"vocab": self.vocab, "window": self.window}
        for key, proc in (("image_processor", self.images), ("feature_extractor", self.audio_fe)):
            if proc is not None:
                out[key] = {"class": type(proc).__name__, "config": proc.to_dict()}
        return out

    @classmethod
    def from_facts(cls, facts: dict[str, Any]) -> Processors:
        made: dict[str, Any] = {}
        for key, kind in (("image_processor", "image_processing"), ("feature_extractor", "feature_extraction")):
            entry = facts.get(key)
            if entry is not None:
                made[key] = _transformers_class(entry["class"], kind).from_dict(entry["config"])
        return cls(made.get("image_processor"), made.get("feature_extractor"), None, facts.get("vocab"),
                   facts.get("window"))

    @property
    def size(self) -> tuple[int, int] | None:
        """The (h, w) images are resized to, or None (kept as they are)."""
        proc = self.images
        if proc is None or not getattr(proc, "do_resize", False):
            return None
        if getattr(proc, "do_center_crop", False):  # resized, then cropped to crop_size
            return _hw(getattr(proc, "crop_size", None))
        return _hw(getattr(proc, "size", None))

    # modality -> model input ---------------------------------------------------------------
    def image(self, value: Any) -> torch.Tensor:
        pixels = as_rgb(torch.as_tensor(value)).permute(1, 2, 0).numpy()  # [H, W, 3] uint8
        return self.images(images=[pixels], return_tensors="pt")["pixel_values"]

    def video(self, value: Any) -> torch.Tensor:
        frames = [as_rgb(f).permute(1, 2, 0).numpy() for f in torch.as_tensor(value)]
        return self.images(images=frames, return_tensors="pt")["pixel_values"]

    def audio(self, value: Audio) -> torch.Tensor:
        samples = resample(value.samples, value.sample_rate, MEL_RATE).numpy()
        if self.window is None:
            samples = np.pad(samples, (0, max(0, 400 - len(samples))))  # one FFT window at least
            return self.audio_fe(samples, sampling_rate=MEL_RATE, return_tensors="pt", padding="longest",
                                 truncation=False)["input_features"]
        return self.audio_fe(samples, sampling_rate=MEL_RATE, return_tensors="pt")["input_features"]

    def text(self, value: str) -> torch.Tensor:
        if self.text_tok is not None:
            return self.text_tok(value, return_tensors="pt")["input_ids"]
        return byte_ids(value, self.vocab).unsqueeze(0)

    def tokens(self, value: Any) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.long).flatten().unsqueeze(0)
