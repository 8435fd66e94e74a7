"""`vocoder`: codes (codec tokens, latents, features) → waveform.

Models: `onnx:PKG_OR_PATH` (onnxruntime; the first input of the graph gets the codes),
`py:module:attr` (a torch module class, built with `params.config` under a fixed seed,
a module instance, or a plain function) or `transformers:Class` (built from its config).
The model sees the codes with a leading batch dim of 1 (an ONNX graph: as many as its
input's rank asks for) and returns samples of any shape holding one mono waveform.

Continuous: streamed codes are vocoded as they arrive, each step turning whatever
came for a request into one audio chunk, so audio follows the codes chunk by chunk.
Chunks are vocoded independently: a model whose receptive field spans frames hears
a seam at chunk edges, which whole (unstreamed) codes avoid.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from omnigraph.runtime.executor import ExecContext, Executor, WorkItem
from omnigraph.runtime.executors import audio_io, onnx_session
from omnigraph.runtime.executors.modules import load_module, stage_dtype
from omnigraph.runtime.loaders import import_attr, resolve_file, split_ref
from omnigraph.runtime.values import Audio, join_chunks

DEFAULT_SAMPLE_RATE = 22050  # AudioOutParams' default


class VocoderExecutor(Executor):

    def load(self) -> None:
        scheme, target = split_ref(self.node.model or "")
        own_rate: int | None = None  # a torch model may say what rate it makes
        if scheme == "onnx":
            self.vocode = _onnx_vocoder(target, self.ctx)
        elif scheme in ("py", "transformers"):
            self.model = model = self._torch_model(scheme, target)  # kept: a bundle saves its weights
            self.vocode = _torch_vocoder(model, self.ctx.device, stage_dtype(self.node))
            own_rate = getattr(model, "sample_rate", None)
        else:
            raise ValueError(f"vocoder stages take an `onnx:`, `py:` or `transformers:` model, not '{self.node.model}'")
        asked = self.params.get("sample_rate")
        if asked is not None and own_rate is not None and asked != own_rate:
            raise ValueError(f"sample_rate {asked} does not match the model's {own_rate} Hz")
        self.sample_rate: int = int(asked or own_rate or DEFAULT_SAMPLE_RATE)
        self.codes_modality = next((b.modality for b in self.node.inputs if b.port == "codes"), "tokens")

    def _torch_model(self, scheme: str, target: str) -> Any:
        program = self.node.program  # from a bundle: a function is code, a module has its weights
        if scheme == "py" and (program is None or program.form == "code"):
            obj = import_attr(target)
            if callable(obj) and not inspect.isclass(obj) and not hasattr(obj, "parameters"):
                return obj  # a plain function vocodes by itself
        # Seeded random init is the weights: same seed, same voice.
        return load_module(self.node, self.ctx.device, default_seed=self.ctx.seed)

    def step(self, items: list[WorkItem]) -> bool:
        return audio_io.step_each(items, self._advance)

    def _advance(self, item: WorkItem) -> bool:
        pieces, ended = audio_io.take(item, "codes")
        made = item.state.setdefault("vocoder.samples", 0)
        if pieces:
            samples = self.vocode(join_chunks(self.codes_modality, pieces))
            audio_io.send(item, Audio(samples, self.sample_rate))
            item.state["vocoder.samples"] = made + len(samples)
        if ended:
            if not pieces and made == 0:  # no codes at all: empty audio, at the right rate
                audio_io.send(item, Audio(np.zeros(0, np.float32), self.sample_rate))
            audio_io.end(item)
        return bool(pieces) or ended


def _mono(out: Any) -> np.ndarray:
    return np.asarray(out, dtype=np.float32).reshape(-1)


def _onnx_vocoder(target: str, ctx: ExecContext) -> Callable[[Any], np.ndarray]:
    session = onnx_session.session(resolve_file(target, ".onnx"), ctx)
    graph_input = session.get_inputs()[0]
    rank = len(graph_input.shape) if graph_input.shape else None
    dtype = np.int64 if "int64" in graph_input.type else np.int32 if "int32" in graph_input.type else np.float32

    def vocode(codes: Any) -> np.ndarray:
        x = np.asarray(codes.cpu() if hasattr(codes, "cpu") else codes).astype(dtype)
        x = x[None] if rank is None else x.reshape((1,) * max(rank - x.ndim, 0) + x.shape)
        return _mono(session.run(None, {graph_input.name: x})[0])

    return vocode


def _torch_vocoder(model: Any, device: str, float_type: Any) -> Callable[[Any], np.ndarray]:
    import torch

    def vocode(codes: Any) -> np.ndarray:
        x = torch.as_tensor(codes).to(device)
        if x.is_floating_point():
            x = x.to(float_type)
        with torch.inference_mode():
            out = model(x[None])
        if not isinstance(out, torch.Tensor):  # a tuple or a transformers ModelOutput
            out = out[0]
        return _mono(out.float().cpu())

    return vocode
