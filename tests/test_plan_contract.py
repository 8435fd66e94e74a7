"""The plan is the runtime's contract: each stage instance computes at the dtype the planner
chose (within stated tolerances of f32), on its plan device (checked through the
OMNIGRAPH_DEVICE_MAP seam, a GPU plan on this CPU), on its share of the CPU cores, with the
KV budget the plan gave it; and `plan --json` and `run --stats --json` say the same."""
from __future__ import annotations

import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import omnigraph  # noqa: E402
from omnigraph.api import compile_plan  # noqa: E402
from omnigraph.cli import main  # noqa: E402
from omnigraph.errors import OmnigraphError  # noqa: E402
from omnigraph.passes.plan_cores import shares  # noqa: E402
from omnigraph.runtime.devices import DEVICE_MAP_ENV, placed, torch_device  # noqa: E402
from omnigraph.runtime.plan import PortType, RuntimePlan  # noqa: E402
from omnigraph.runtime.values import Audio  # noqa: E402

TINY = Path(__file__).resolve().parent.parent / "examples" / "tiny"
CPU_BF16 = """
target: cpu-bf16
nodes:
  - name: node0
    devices:
      - {name: cpu0, type: cpu, memory_gib: 4, peak_tflops: 0.2, mem_bandwidth_gb_s: 20, cores: 2, dtypes: [bf16, f32]}
    intra_node_gb_s: 20
inter_node_gb_s: 0
"""
GPUS = """
target: two-h100
nodes:
  - name: node0
    devices:
      - {name: gpu0, type: h100, memory_gib: 80, peak_tflops: 989, mem_bandwidth_gb_s: 3350}
      - {name: gpu1, type: h100, memory_gib: 80, peak_tflops: 989, mem_bandwidth_gb_s: 3350}
    intra_node_gb_s: 450
inter_node_gb_s: 0
"""


def target(tmp_path: Path, text: str, name: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def exposed(plan: RuntimePlan) -> RuntimePlan:
    """moe_tiny's plan with the encoders', the MoE block's and the LLM's states as outputs."""
    for name, source in (("audio_tokens", "audio_encoder.embeds"), ("image_tokens", "vision_encoder.embeds"),
                         ("mixed", "experts.y"), ("hidden", "thinker.hidden")):
        plan.outputs[name] = source
        plan.output_types[name] = PortType(modality="embedding")
    return plan


def moe_inputs() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {"prompt": "Hi", "image": torch.from_numpy(rng.integers(0, 255, (3, 32, 32), dtype=np.uint8)),
            "audio": Audio(rng.uniform(-0.5, 0.5, 16000).astype(np.float32), 16000)}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = torch.as_tensor(got).float(), torch.as_tensor(want).float()
    return float((got - want).norm() / want.norm().clamp_min(1e-12))


# The tolerances each kind keeps at bf16 against f32 (relative L2 error of its output; images
# in mean absolute pixel levels of 255). bf16 keeps 8 bits of mantissa: ~0.4% per rounding,
# and errors grow with depth and with denoising steps.
TOLERANCE = {"encoder": 0.02, "moe": 0.03, "ar_llm": 0.05, "vocoder": 0.03,
             "diffusion": 0.1, "image_levels": 6.0}  # 4 denoising steps (measured: 0.047, 3.4 levels)


def test_each_kind_at_bf16_stays_within_its_tolerance_of_f32(tmp_path: Path) -> None:
    cpu = target(tmp_path, CPU_BF16, "cpu")
    planned = exposed(compile_plan(TINY / "moe_tiny.yaml", cpu))
    assert {n.name: n.resources.dtype for n in planned.stages()} == {
        "audio_encoder": "bf16", "vision_encoder": "bf16", "fuse": "bf16", "experts": "bf16", "thinker": "bf16"}
    inputs = moe_inputs()
    with omnigraph.load(exposed(compile_plan(TINY / "moe_tiny.yaml"))) as pipe:
        want = pipe.run(dict(inputs), timeout=120)
    with omnigraph.load(planned) as pipe:
        dtypes = {name: w.executor.model.dtype for name, w in pipe.backend.workers.items()
                  if name in ("audio_encoder", "vision_encoder", "thinker")}
        got = pipe.run(dict(inputs), timeout=120)
    assert set(dtypes.values()) == {torch.bfloat16}  # the weights really are bf16
    assert rel_err(got["audio_tokens"], want["audio_tokens"]) < TOLERANCE["encoder"]
    assert rel_err(got["image_tokens"], want["image_tokens"]) < TOLERANCE["encoder"]
    assert rel_err(got["mixed"], want["mixed"]) < TOLERANCE["moe"]
    # The state that predicted the first token comes from the prefill alone (later tokens may
    # differ once a near-tie flips, so only it is compared).
    assert rel_err(got["hidden"][0], want["hidden"][0]) < TOLERANCE["ar_llm"]

    # The noise is seeded from the conditioning's bytes: the text encoder is pinned to f32 so
    # that both runs draw the same noise, and the UNet and the VAE are what is compared. Without
    # guidance: a random UNet's conditional and unconditional predictions nearly agree, and
    # guidance x5 of their difference amplifies rounding as no trained model's would.
    spec = tmp_path / "t2i.yaml"
    spec.write_text((TINY / "text_to_image_tiny.yaml").read_text().replace(
        "      max_new_tokens: 1", "      dtype: f32\n      max_new_tokens: 1").replace(
        "guidance_scale: 5.0", "guidance_scale: 1.0"))
    runs = {}
    for name, plan in (("f32", compile_plan(spec)), ("bf16", compile_plan(spec, cpu))):
        plan.outputs["latents"] = "unet.latents"
        plan.output_types["latents"] = PortType(modality="embedding")
        with omnigraph.load(plan) as pipe:
            runs[name] = pipe.run({"prompt": "a red fox"}, timeout=120)
        runs[name]["dtypes"] = {n.kind: n.resources.dtype for n in plan.stages()}
    assert runs["bf16"]["dtypes"] == {"ar_llm": "f32", "diffusion": "bf16", "decoder": "bf16"}
    assert rel_err(runs["bf16"]["latents"], runs["f32"]["latents"]) < TOLERANCE["diffusion"]
    got_image, want_image = runs["bf16"]["image"], runs["f32"]["image"]
    assert got_image.dtype == want_image.dtype == torch.uint8
    assert (got_image.float() - want_image.float()).abs().mean() < TOLERANCE["image_levels"]


def test_a_vocoder_at_bf16_stays_within_its_tolerance(tmp_path: Path) -> None:
    spec = tmp_path / "voc.yaml"
    spec.write_text("""
pipeline: voc
inputs: {mel: embedding}
outputs: {speech: {from: voc.audio, modality: audio}}
stages:
  voc:
    kind: vocoder
    model: "transformers:SpeechT5HifiGan"
    inputs: [mel]
    params:
      weights: random
      sample_rate: 16000
      config: {model_in_dim: 16, upsample_initial_channel: 32, upsample_rates: [4, 4],
               upsample_kernel_sizes: [8, 8], resblock_kernel_sizes: [3], resblock_dilation_sizes: [[1, 3]],
               normalize_before: false}
""")
    mel = torch.randn(20, 16, generator=torch.Generator().manual_seed(0))
    with omnigraph.load(spec, target=None) as pipe:
        want = pipe.run({"mel": mel}, timeout=60)["speech"]
    with omnigraph.load(spec, target=target(tmp_path, CPU_BF16, "cpu")) as pipe:
        assert pipe.backend.workers["voc"].executor.node.resources.dtype == "bf16"
        got = pipe.run({"mel": mel}, timeout=60)["speech"]
    assert got.samples.shape == want.samples.shape
    assert rel_err(torch.from_numpy(got.samples), torch.from_numpy(want.samples)) < TOLERANCE["vocoder"]


def test_a_dtype_the_spec_pins_is_kept(tmp_path: Path) -> None:
    spec = tmp_path / "pinned.yaml"
    text = (TINY / "moe_tiny.yaml").read_text().replace("      max_new_tokens: 16\n",
                                                        "      max_new_tokens: 16\n      dtype: f32\n")
    spec.write_text(text)
    plan = compile_plan(spec, target(tmp_path, CPU_BF16, "cpu"))
    dtypes = {n.name: n.resources.dtype for n in plan.stages()}
    assert dtypes["thinker"] == "f32" and dtypes["vision_encoder"] == "bf16"


def test_a_gpu_plan_puts_each_instance_on_its_own_device_through_the_seam(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planned for two H100s (every stage replicated on both) and run here with cuda mapped to
    cpu: each instance keeps the device the plan named (cuda:N from node0:gpuN) and reports
    it, at the plan's dtype and KV budget; its tensors sit on the CPU."""
    plan = exposed(compile_plan(TINY / "moe_tiny.yaml", target(tmp_path, GPUS, "gpus")))
    monkeypatch.setenv(DEVICE_MAP_ENV, "cuda=cpu")
    with omnigraph.load(plan) as pipe:
        handles = [pipe.submit(moe_inputs()) for _ in range(4)]
        assert all(h.result(timeout=120)["reply"] is not None for h in handles)
        placement = pipe.backend.contract()
        executors = {name: [w.executor for w in found] for name, found in pipe.backend.instances.items()}
    seen = set()
    for node in plan.stages():
        assert len(placement[node.name]) == len(node.instances) == 2
        for report, inst, ex in zip(placement[node.name], node.instances, executors[node.name]):
            assert report["plan_devices"] == inst.devices
            assert report["device"] == torch_device(inst.devices[0]) == ex.ctx.planned
            assert report["runs_on"] == ex.ctx.device == "cpu"
            assert report["dtype"] == node.resources.dtype == "bf16"  # what an H100 computes fast
            assert report["kv_budget"] == node.resources.kv_bytes
            seen.add(report["device"])
            model = getattr(ex, "model", None)
            if isinstance(model, torch.nn.Module) and any(True for _ in model.parameters()):
                assert {p.device.type for p in model.parameters()} == {"cpu"}
                assert {p.dtype for p in model.parameters() if p.is_floating_point()} == {torch.bfloat16}
    assert seen == {"cuda:0", "cuda:1"}
    assert placement["thinker"][0]["kv_budget"] > 0 and placement["thinker"][0]["kv_pool_bytes"] > 0


def test_device_names_map_to_torch_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [torch_device(d) for d in ("node0:gpu3", "node1:cuda0", "node0:cpu0", "n:gpu")] == [
        "cuda:3", "cuda:0", "cpu", "cuda"]
    monkeypatch.delenv(DEVICE_MAP_ENV, raising=False)
    assert placed("cuda:3") == "cuda:3"
    monkeypatch.setenv(DEVICE_MAP_ENV, "cuda=cpu")
    assert (placed("cuda:3"), placed("cpu")) == ("cpu", "cpu")


def test_cores_are_shared_by_need_at_least_one_each() -> None:
    assert shares({"llm": 3.0, "voice": 1.0}, 4) == {"llm": 3, "voice": 1}
    assert shares({"llm": 100.0, "voice": 1.0}, 4) == {"llm": 3, "voice": 1}  # never none
    assert shares({"a": 1.0, "b": 1.0, "c": 1.0}, 2) == {"a": 1, "b": 1, "c": 1}  # more stages than cores
    assert sum(shares({"a": 0.3, "b": 0.3, "c": 0.4}, 16).values()) == 16


def test_plan_json_and_run_stats_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cpu = target(tmp_path, CPU_BF16, "cpu")
    spec = str(TINY / "moe_tiny.yaml")
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    with wave.open(str(tmp_path / "clip.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.zeros(16000, dtype=np.int16).tobytes())
    assert main(["plan", spec, "--target", cpu, "--json"]) == 0
    planned = {r["stage"]: r for r in json.loads(capsys.readouterr().out)["stages"]}
    assert main(["run", spec, "--target", cpu, "--json", "--stats", "-i", "prompt=Hi",
                 "-i", f"image=@{tmp_path / 'img.png'}", "-i", f"audio=@{tmp_path / 'clip.wav'}"]) == 0
    ran = json.loads(capsys.readouterr().out)["placement"]
    assert set(ran) == set(planned)
    for name, row in planned.items():
        (inst,) = ran[name]
        assert inst["plan_devices"] == row["devices"]
        assert inst["dtype"] == row["dtype"]
        assert inst["cores"] == row["cores"] and row["cores"]  # every stage has its share
        assert inst["kv_budget"] == row["kv_budget"]
    assert planned["thinker"]["kv_budget"] > 0
    assert ran["thinker"][0]["kv_pool_bytes"] <= planned["thinker"]["kv_budget"]
    assert ran["thinker"][0]["kv_peak_bytes"] <= ran["thinker"][0]["kv_pool_bytes"]


def test_a_plan_from_before_resources_still_loads() -> None:
    doc = json.loads(compile_plan(TINY / "moe_tiny.yaml").to_json())
    doc["version"] = 5
    for node in doc["nodes"]:
        node.pop("resources", None)
        for inst in node.get("instances", []):
            inst.pop("cores", None)
    old = RuntimePlan.from_json(json.dumps(doc))
    assert all(n.resources.dtype is None and n.resources.kv_bytes is None for n in old.stages())


def test_a_pinned_degree_the_target_cannot_hold_is_explained(tmp_path: Path) -> None:
    spec = tmp_path / "wide.yaml"
    spec.write_text((TINY / "moe_tiny.yaml").read_text().replace(
        "    kind: ar_llm\n", "    kind: ar_llm\n    parallel: {tp: 4}\n"))
    with pytest.raises(OmnigraphError, match=r"stage 'thinker' asks for tp=4, which no device type of cpu-bf16"):
        compile_plan(spec, target(tmp_path, CPU_BF16, "cpu"))


def test_a_pipeline_gives_back_the_torch_threads_it_found(tmp_path: Path) -> None:
    """torch's threads are the process's: a pipeline sets them to its torch stages' cores
    while it runs, and puts back what it found when it closes."""
    wide = target(tmp_path, CPU_BF16.replace("cores: 2", "cores: 6"), "wide")
    before = torch.get_num_threads()
    with omnigraph.load(TINY / "vision_chat_tiny.yaml", target=wide) as pipe:
        cores = {c for found in pipe.backend.instances.values() for w in found for c in (w.executor.ctx.cores or ())}
        assert torch.get_num_threads() == len(cores) == 6
    assert torch.get_num_threads() == before


def test_this_machine_falls_back_to_unplanned_with_a_note_but_a_named_target_never(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "wide.yaml"
    spec.write_text((TINY / "moe_tiny.yaml").read_text().replace(
        "    kind: ar_llm\n", "    kind: ar_llm\n    parallel: {tp: 2}\n"))
    from omnigraph.api import plan_here

    notes: list[str] = []
    plan = plan_here(spec, notes.append)
    assert notes and "asks for tp=2" in notes[0] and "running unplanned" in notes[0]
    assert plan.stages()[-1].instances[0].tp == 2 and plan.stages()[-1].resources.dtype is None
    with pytest.raises(OmnigraphError, match="asks for tp=2"):
        compile_plan(spec, "cpu-local")


def test_an_fp8_pin_is_planned_and_refused_at_load_by_name(tmp_path: Path) -> None:
    spec = tmp_path / "fp8.yaml"
    spec.write_text((TINY / "moe_tiny.yaml").read_text().replace("      max_new_tokens: 16\n",
                                                                "      max_new_tokens: 16\n      dtype: fp8\n"))
    plan = compile_plan(spec, "h100x8")
    assert {n.name: n.resources.dtype for n in plan.stages()}["thinker"] == "fp8"
    from omnigraph.runtime.local import StageLoadError

    with pytest.raises(StageLoadError, match="stage 'thinker'.*dtype fp8 is not supported"):
        omnigraph.load(compile_plan(spec, target(tmp_path, CPU_BF16, "cpu")))
