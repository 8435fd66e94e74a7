"""An onnxruntime session on a stage's device and cores (Piper voices, ONNX vocoders).

onnxruntime keeps a thread pool per session, sized here from the cores the plan gave the
stage (one when the plan says nothing: the stages of a pipeline run at once, and an LLM
decoding beside the voice needs the other cores, which onnxruntime would otherwise take).
On `cuda:N` the session runs on GPU N when onnxruntime has CUDA, else on the CPU.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omnigraph.runtime.executor import ExecContext


def session(model: Path, ctx: ExecContext, seed: int | None = None) -> Any:
    import onnxruntime

    if seed is not None:  # random ops (a VITS voice's noise) draw from a generator seeded now
        onnxruntime.set_seed(seed)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = ctx.threads or 1
    options.inter_op_num_threads = 1
    providers: list[Any] = ["CPUExecutionProvider"]
    if ctx.device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        index = int(ctx.device.partition(":")[2] or 0)
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": index, "cudnn_conv_algo_search": "HEURISTIC"}))
    return onnxruntime.InferenceSession(str(model), sess_options=options, providers=providers)
