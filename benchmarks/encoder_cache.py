"""The encoder's output cache: a SigLIP-base-sized vision encoder (random weights) serving
requests whose images repeat (drawn from a small set, Zipf-like, as a chat product sees
avatars, screenshots shared twice, the same product photo), with the cache and without it,
side by side in one run: hit rate and wall time.

    python benchmarks/encoder_cache.py [--requests 60] [--images 12]

Writes benchmarks/results/encoder_cache.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

import omnigraph

ROOT = Path(__file__).resolve().parent.parent


def spec(folder: Path, cache_mb: float) -> Path:
    doc = {"pipeline": "see", "inputs": {"image": {"modality": "image", "dtype": "u8", "shape": [3, "?", "?"]}},
           "outputs": {"embeds": {"from": "vision.embeds", "modality": "embedding"}},
           "stages": {"vision": {"kind": "encoder", "model": "transformers:SiglipVisionModel", "inputs": ["image"],
                                 "params": {"weights": "random", "hidden_size": 768, "cache_mb": cache_mb,
                                            "config": {"hidden_size": 768, "intermediate_size": 3072,
                                                       "num_hidden_layers": 12, "num_attention_heads": 12,
                                                       "image_size": 224, "patch_size": 16}}}}}
    path = folder / f"see_{cache_mb}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--images", type=int, default=12)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    images = [torch.from_numpy(rng.integers(0, 255, (3, 224, 224), dtype=np.uint8)) for _ in range(args.images)]
    weights = [1 / (k + 1) for k in range(args.images)]  # Zipf: the first images come back most
    order = random.Random(0).choices(range(args.images), weights=weights, k=args.requests)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cache_mb in (("no cache", 0), ("cache", 64)):
            with omnigraph.load(spec(Path(tmp), cache_mb)) as pipe:
                pipe.run({"image": images[-1]})  # warm-up (then forgotten below)
                vision = pipe.backend.workers["vision"].executor
                if vision.output_cache is not None:
                    vision.output_cache.__init__(vision.output_cache.max_bytes)
                start = time.perf_counter()
                outs = [pipe.run({"image": images[i]})["embeds"] for i in order]
                seconds = time.perf_counter() - start
                stats = vision.stats()
            rows[name] = {"seconds": round(seconds, 3), "per_request_ms": round(1000 * seconds / args.requests, 2),
                          **stats, "first": outs[0]}
    same = all(torch.equal(a, b) for a, b in zip([rows["cache"]["first"]], [rows["no cache"]["first"]]))
    for row in rows.values():
        row.pop("first")
    distinct = len(set(order))
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only", "requests": args.requests,
              "distinct_images": distinct, "best_possible_hit_rate": round(1 - distinct / args.requests, 3),
              "hit_rate": round(rows["cache"]["cache_hits"] / args.requests, 3), "rows": rows,
              "speedup": round(rows["no cache"]["seconds"] / rows["cache"]["seconds"], 2),
              "same_embeddings": same}
    (ROOT / "benchmarks" / "results" / "encoder_cache.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
