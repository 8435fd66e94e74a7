"""What an `ar_llm` request brings: its prompt as token ids, its context embeddings, its
streamed inputs joined once they end; and what the model says about itself (its EOS ids,
the memory of its device)."""
from __future__ import annotations

import os
from typing import Any

import torch

from omnigraph.kinds import ArLlmParams
from omnigraph.runtime.channel import StreamReader
from omnigraph.runtime.executor import WorkItem
from omnigraph.runtime.executors.llm_text import prompt_ids
from omnigraph.runtime.values import join_chunks


def prompt_tokens(prompt: Any, tokenizer: Any, settings: ArLlmParams,
                  frame: tuple[str, str] | None) -> list[int]:
    """A text prompt through the chat template (unless chat is off); tokens as they are."""
    if isinstance(prompt, str):
        return prompt_ids(tokenizer, prompt, settings.system, settings.chat, frame, settings.history)
    ids = torch.as_tensor(prompt).reshape(-1).tolist()
    if not ids:
        raise ValueError("the prompt has no tokens")
    return ids


def context_embeddings(value: Any, embed: torch.nn.Embedding, dtype: torch.dtype,
                       takes_embeds: bool, model_name: str) -> torch.Tensor | None:
    """The context embeddings, all edges concatenated: [seq, hidden] at the model's dtype."""
    if value is None:
        return None
    if not takes_embeds:
        raise ValueError(f"{model_name} takes no inputs_embeds: it cannot read context embeddings")
    parts = [torch.as_tensor(p) for p in (value if isinstance(value, list) else [value])]
    width = embed.embedding_dim
    wrong = sorted({p.shape[-1] for p in parts} - {width})
    if wrong:
        raise ValueError(f"context embeddings are {wrong[0]} wide; the model's embeddings are {width}")
    return torch.cat([p.reshape(-1, width) for p in parts]).to(embed.weight.device, dtype)


def gather_streams(item: WorkItem, modality: dict[str, str]) -> bool:
    """Replace streamed inputs by their joined values once they have ended, reading
    what has arrived so far without waiting; True when no input is still streaming."""
    complete = True
    for port, value in item.inputs.items():
        values = value if isinstance(value, list) else [value]
        for i, v in enumerate(values):
            if not isinstance(v, StreamReader):
                continue
            buffer = item.state.setdefault(f"chunks:{port}:{i}", [])
            chunks, ended = v.poll()
            buffer.extend(chunks)
            if ended:
                values[i] = join_chunks(modality[port], buffer)
            else:
                complete = False
        item.inputs[port] = values if isinstance(value, list) else values[0]
    return complete


def eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """The ids that end generation: the model's generation config and the tokenizer's."""
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    for value in (getattr(config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        ids.update(value if isinstance(value, list) else [] if value is None else [value])
    return frozenset(ids)


def device_memory(device: torch.device) -> int:
    """Bytes of memory on `device`: a GPU's free memory, else the machine's RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30
