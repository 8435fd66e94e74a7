"""An encoder's embeddings kept by the content of its input: a picture seen again is not
encoded again (the same embeddings, one forward), the cache stays within its bytes, and
`cache_mb: 0` turns it off."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import omnigraph  # noqa: E402
from omnigraph.runtime.executors.output_cache import OutputCache, content_key  # noqa: E402

TINY = Path(__file__).resolve().parent.parent / "examples" / "tiny"


def picture(seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 255, (3, 32, 32), dtype=np.uint8))


def test_a_picture_seen_again_is_not_encoded_again(tmp_path: Path) -> None:
    with omnigraph.load(TINY / "vision_chat_tiny.yaml", target=None) as pipe:
        vision = pipe.backend.workers["vision"].executor
        forwards = []
        inner = vision.forward
        vision.forward = lambda batch, items: forwards.append(len(batch)) or inner(batch, items)
        first = pipe.run({"prompt": "a", "image": picture(0)})
        again = pipe.run({"prompt": "b", "image": picture(0)})  # another request, the same picture
        other = pipe.run({"prompt": "a", "image": picture(1)})
        stats = vision.stats()
    assert forwards == [1, 1]  # the second sight of picture 0 ran no forward
    assert stats["cache_hits"] == 1 and stats["cache_misses"] == 2 and stats["cache_entries"] == 2
    assert isinstance(first["answer"], str) and isinstance(again["answer"], str) and isinstance(other["answer"], str)


def test_cached_embeddings_equal_computed_ones_and_the_cache_can_be_off(tmp_path: Path) -> None:
    spec = tmp_path / "enc.yaml"
    spec.write_text((TINY / "moe_tiny.yaml").read_text().replace("      hidden_size: 64\n      config:\n        hidden_size: 64",
                                                                "      hidden_size: 64\n      cache_mb: 0\n      config:\n        hidden_size: 64"))
    from omnigraph.api import compile_plan
    from omnigraph.runtime.plan import PortType
    from omnigraph.runtime.values import Audio

    def run(path: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
        plan = compile_plan(path)
        plan.outputs["image_tokens"] = "vision_encoder.embeds"
        plan.output_types["image_tokens"] = PortType(modality="embedding")
        clip = Audio(np.zeros(16000, dtype=np.float32), 16000)
        with omnigraph.load(plan) as pipe:
            a = pipe.run({"prompt": "x", "image": picture(2), "audio": clip})["image_tokens"]
            b = pipe.run({"prompt": "x", "image": picture(2), "audio": clip})["image_tokens"]
            return a, b, pipe.backend.workers["vision_encoder"].executor.stats()

    a, b, cached = run(TINY / "moe_tiny.yaml")
    assert torch.equal(a, b) and cached["cache_hits"] == 1
    b.add_(1.0)  # a caller editing its output does not edit the cache
    c, d, off = run(spec)
    assert torch.equal(c, a) and torch.equal(d, a) and off == {}


def test_the_cache_keeps_within_its_bytes_least_recently_used_out() -> None:
    cache = OutputCache(max_bytes=3 * 4 * 100)  # three outputs of 100 floats
    keys = [content_key(torch.full((10,), float(i))) for i in range(5)]
    for i, key in enumerate(keys[:3]):
        cache.put(key, {"embeds": torch.full((100,), float(i))})
    assert cache.get(keys[0]) is not None  # 0 is now the most recent
    cache.put(keys[3], {"embeds": torch.zeros(100)})
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is not None and cache.bytes <= cache.max_bytes
    cache.put(keys[4], {"embeds": torch.zeros(10_000)})  # larger than the whole cache: not kept
    assert cache.get(keys[4]) is None
    assert content_key(torch.zeros(3)) != content_key(torch.zeros(3, dtype=torch.float64))
