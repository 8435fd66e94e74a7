"""Planning time against graph width and target size: a fan-in of N-2 SigLIP encoders (0.4B,
bf16) into a projector and a Qwen2-7B-shaped LLM, planned on 1, 8 and 16 H100s (and 1,024
for the narrower graphs), each in a fresh process after a warm-up that fills the profile
cache, so the figures are the planning passes, not the first meta build. Then the same with
every encoder distinct (`--distinct 100`): identical stages are planned as one class, so this
is the case where the MILP's size really grows with the graph.

    python benchmarks/planning_scale.py [--widths 10,100,1000] [--distinct 100] [--timeout 300]

Writes benchmarks/results/planning_scale.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from planning_time import h100_cluster  # the same 1,024-GPU cluster as planning_time.py

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"1": "h100x1", "8": "h100x8", "16": "h100-2x8"}


def fan_in(n: int, folder: Path, distinct: bool = False) -> Path:
    """N-2 encoders into a projector and an LLM; `distinct`: every encoder a different depth
    and width (no two alike, so nothing is planned as a class)."""
    encs = n - 2
    vit = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
           "image_size": 384, "patch_size": 14}

    def config(i: int) -> dict:
        return {**vit, "num_hidden_layers": 4 + i % 24, "intermediate_size": 4304 + 16 * (i // 24)} if distinct else vit

    doc = {"pipeline": f"fanin{n}" + ("d" if distinct else ""),
           "inputs": {"prompt": "text", **{f"img{i}": {"modality": "image", "dtype": "u8", "shape": [3, "?", "?"]}
                                           for i in range(encs)}},
           "outputs": {"reply": {"from": "llm.text", "modality": "text"}},
           "stages": {f"enc{i}": {"kind": "encoder", "model": "transformers:SiglipVisionModel", "inputs": [f"img{i}"],
                                  "params": {"weights": "random", "hidden_size": 1152, "config": config(i)}}
                      for i in range(encs)}}
    doc["stages"]["proj"] = {"kind": "projector", "model": "py:torch.nn:Identity",
                             "inputs": {"x": [f"enc{i}.embeds" for i in range(encs)]},
                             "params": {"in_dim": 1152, "out_dim": 3584}}
    doc["stages"]["llm"] = {"kind": "ar_llm", "model": "transformers:Qwen2ForCausalLM",
                            "inputs": {"prompt": "prompt", "context": "proj.embeds"},
                            "params": {"weights": "random", "config": {
                                "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                                "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                                "max_position_embeddings": 131072}}}
    path = folder / f"fanin{n}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def plan(spec: Path, target: str, timeout: float) -> dict:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "omnigraph", "plan", str(spec), "--target", target, "--json"],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"outcome": f"over {timeout:g} s", "seconds": None}
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"outcome": "error: " + proc.stderr.strip().splitlines()[0][:160], "seconds": round(wall, 2)}
    doc = json.loads(proc.stdout)
    pools = {r["pool"] or r["device_type"] for r in doc["stages"] if r["shared"]}
    return {"outcome": "planned", "seconds": round(wall, 2), "planning_s": round(doc["planning_s"], 2),
            "throughput_rps": round(doc["throughput_rps"], 4), "devices_used": doc["devices_used"],
            "shared_pools": len(pools), "optimality_gap": round(doc.get("optimality_gap", 0.0), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="10,100,1000")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--distinct", default="100", help="widths to plan again with every encoder distinct")
    ap.add_argument("--append", action="store_true", help="add to the recorded rows instead of replacing them")
    args = ap.parse_args()
    out = ROOT / "benchmarks" / "results" / "planning_scale.json"
    rows = json.loads(out.read_text())["rows"] if args.append and out.is_file() else []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        targets = {**TARGETS, "1024": h100_cluster(128, folder)}
        cases = [(int(w), False) for w in args.widths.split(",") if w] + \
            [(int(w), True) for w in args.distinct.split(",") if w]
        for n, distinct in cases:
            spec = fan_in(n, folder, distinct)
            plan(spec, "h100x8", args.timeout)  # warm-up: counts the models once (profile cache)
            for devices, tgt in targets.items():
                if devices == "1024" and n > 100:
                    continue
                row = {"stages": n, "distinct": distinct, "devices": int(devices), **plan(spec, tgt, args.timeout)}
                rows.append(row)
                print(row, flush=True)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "rows": rows}
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
