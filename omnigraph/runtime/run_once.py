"""One request through a loaded plan, shown as it happens, its outputs saved: what `omnigraph
run` and `python -m omnigraph.runtime BUNDLE` do once the plan is in hand (a spec compiled
by the CLI, or a bundle opened by the runtime alone)."""
from __future__ import annotations

import json
import os
import math
import sys
import time
from pathlib import Path
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from omnigraph.errors import OmnigraphError
from omnigraph.runtime.plan import PortType, RuntimePlan
from omnigraph.runtime.watchdog import DEFAULT_STEP_TIMEOUT_S


def parse_inputs(pairs: list[str], plan: RuntimePlan) -> dict[str, Any]:
    """`name=value` pairs; `name=@file` reads a file (text, WAV, PNG/JPEG)."""
    inputs: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise OmnigraphError(f"--input {pair!r}: expected name=value")
        if name not in plan.inputs:
            raise OmnigraphError(f"--input {name}: pipeline '{plan.pipeline}' has no input '{name}'",
                                 hint="inputs: " + ", ".join(plan.inputs))
        inputs[name] = _read_value(value, plan.inputs[name], name)
    missing = [n for n in plan.inputs if n not in inputs]
    if missing:
        raise OmnigraphError(f"missing --input for {', '.join(missing)}",
                             hint=" ".join(f"--input {n}=..." for n in missing))
    return inputs


def _read_value(value: str, ptype: PortType, name: str) -> Any:
    if not value.startswith("@"):
        if ptype.modality in ("text",):
            return value
        if ptype.modality == "scalar":
            return _scalar(value, name)
        raise OmnigraphError(f"--input {name}: a {ptype.modality} input is read from a file: {name}=@PATH")
    from omnigraph.runtime.media import read_input

    path = Path(value[1:])
    if not path.is_file():
        raise OmnigraphError(f"--input {name}: no such file: {path}")
    try:
        return read_input(path, ptype.modality)
    except (OSError, ValueError) as exc:
        raise OmnigraphError(f"--input {name}: cannot read {path} as {ptype.modality}: {exc}") from None


def _scalar(text: str, name: str) -> float | bool:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        number = float(text)
    except ValueError:
        raise OmnigraphError(f"--input {name}={text!r:.40}: a scalar input is a number (or true/false)") from None
    if not math.isfinite(number):
        raise OmnigraphError(f"--input {name}={text!r:.40}: a scalar input must be finite")
    return number


def random_weight_notes(stages: Iterable[tuple[str, dict[str, Any]]], most: int = 4) -> list[str]:
    """A line per stage (name, params) that runs on seeded random weights (`weights: random`);
    beyond `most` of them, one line naming the first few and counting the rest."""
    random = [(name, params.get("seed") or 0) for name, params in stages if params.get("weights") == "random"]
    if len(random) > most:
        named = ", ".join(f"'{n}'" for n, _ in random[:3])
        return [f"{len(random)} stages have seeded random weights (weights: random): {named} and "
                f"{len(random) - 3} more; their outputs are noise"]
    return [f"stage '{name}' has seeded random weights (weights: random, seed {seed}): its outputs are noise"
            for name, seed in random]


def run_plan(plan: RuntimePlan, pairs: list[str], *, output_dir: str | None, as_json: bool, stats: bool,
             timeout: float | None, backend: str = "local", address: str | None = None,
             device_resource: str | None = None, step_timeout: float | None = DEFAULT_STEP_TIMEOUT_S,
             settings: dict[str, dict[str, Any]] | None = None, trace: str | None = None) -> int:
    """Load `plan`'s stages (with progress), run one request (with per-stage `settings`; with
    `trace`, its stage steps written as a Chrome trace .json or drawn as a timeline),
    show and save its outputs."""
    from omnigraph.runtime.request_settings import validate_settings
    from omnigraph.runtime.pipeline import Pipeline
    from omnigraph.runtime.local import StageLoadError

    err = Console(stderr=True, highlight=False, quiet=bool(os.environ.get("OMNIGRAPH_QUIET")))  # -q
    out = Console(highlight=False, soft_wrap=True)
    for c in (err, out):
        if not c.is_terminal:  # a log or a pipe: tables at full width, not cut at 80 columns
            c.width = max(c.width, 200)
    inputs = parse_inputs(pairs, plan)
    settings = validate_settings(plan, settings)  # before the load: a bad --set fails at once
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=err, transient=True, disable=as_json) as progress:
        tasks: dict[str, Any] = {}

        def on_load(stage: str, event: str) -> None:
            if event == "start":
                kind = next(s.kind for s in plan.stages() if s.name == stage)
                tasks[stage] = progress.add_task(f"loading [bold]{stage}[/] ({kind})", total=None)
            else:
                progress.update(tasks[stage], description=f"[green]loaded[/] {stage}")

        t0 = time.monotonic()
        try:
            pipe = Pipeline(plan, on_load=on_load, backend=backend, address=address,
                            device_resource=device_resource, step_timeout=step_timeout)
        except StageLoadError as exc:
            raise OmnigraphError(str(exc)) from None
    load_s = time.monotonic() - t0
    if not as_json:
        err.print(f"[dim]loaded {len(plan.stages())} stage(s) in {load_s:.1f}s[/]")
        for note in random_weight_notes((s.name, s.params) for s in plan.stages()):
            err.print(f"[yellow]note:[/] {note}")
    try:
        if trace is not None:
            pipe.backend.clear_stage_timings()  # only this request's steps
        code = _run_one(pipe, plan, inputs, out, err, output_dir=output_dir, as_json=as_json,
                        stats=stats, timeout=timeout, load_s=load_s, settings=settings)
        if trace is not None:
            err.print(f"[green]wrote[/] {_write_trace(pipe, plan, trace)}")
        return code
    finally:
        pipe.close()


def _run_one(pipe: Any, plan: RuntimePlan, inputs: dict[str, Any], out: Console, err: Console, *,
             output_dir: str | None, as_json: bool, stats: bool, timeout: float | None, load_s: float,
             settings: dict[str, dict[str, Any]] | None = None) -> int:
    from omnigraph.runtime.engine import RequestFailed

    handle = pipe.submit(inputs, timeout=timeout, settings=settings)
    first_chunk: dict[str, float] = {}
    live_text = [n for n, t in plan.output_types.items() if t.modality == "text" and t.stream]
    printing = live_text[0] if live_text and not as_json else None
    started = handle.request.submitted
    try:
        for kind, name, value in handle.events():
            if kind == "chunk":
                first_chunk.setdefault(name, time.monotonic() - started)
                if name == printing:
                    out.print(value, end="")
            elif kind == "done":
                outputs = value
    except RequestFailed as exc:
        if printing:
            out.print()
        raise OmnigraphError(str(exc), where=f"stage '{exc.stage}'" if exc.stage else None) from None
    total = time.monotonic() - started
    if printing:
        out.print()
    saved = _save(outputs, plan, output_dir)
    if as_json:
        doc = {"pipeline": plan.pipeline, "outputs": {}, "seconds": round(total, 4),
               "load_seconds": round(load_s, 3),
               "first_chunk_seconds": {k: round(v, 4) for k, v in first_chunk.items()},
               "stages": _stage_times(handle.request, started)}
        for name, value in outputs.items():
            doc["outputs"][name] = str(saved[name]) if name in saved else _jsonable(value)
        if stats:
            doc["placement"] = _placement(pipe)
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return 0
    for name, value in outputs.items():
        if name == printing:
            continue
        shown = saved.get(name)
        out.print(f"[bold]{name}[/]: {shown if shown else _brief(value)}")
    for name, path in saved.items():
        if name == printing:
            out.print(f"[dim]{name} saved to {path}[/]")
    unsaved = [n for n, t in plan.output_types.items() if output_dir is None and n in outputs
               and t.modality not in ("text", "scalar")]
    if unsaved:  # audio and pictures do not show on a terminal: say how to keep them
        err.print(f"[yellow]note:[/] {', '.join(unsaved)} not saved: add --output-dir DIR (-o) to write "
                  f"{', '.join(_file_name(n, outputs[n], plan.output_types[n].modality) for n in unsaved)}")
    ttfc = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in first_chunk.items())
    err.print(f"[dim]done in {total:.2f}s" + (f"; first chunk: {ttfc}" if ttfc else "") + "[/]")
    if stats:
        _print_stats(err, handle.request, started, pipe)
    return 0


def _save(outputs: dict[str, Any], plan: RuntimePlan, output_dir: str | None) -> dict[str, Path]:
    if output_dir is None:
        return {}
    from omnigraph.runtime.media import write_output

    directory = Path(output_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OmnigraphError(f"cannot create {directory}: {exc.strerror}") from None
    from omnigraph.output_paths import child

    paths = {name: child(directory, name) for name in outputs}  # every name checked before any write
    return {name: write_output(paths[name], value, plan.output_types[name].modality)
            for name, value in outputs.items()}


def _stage_times(request: Any, started: float) -> dict[str, dict[str, float | None]]:
    return {stage: {"start": round(t.dispatched - started, 4),
                    "end": round(t.finished - started, 4) if t.finished else None}
            for stage, t in request.timings.items()}


def _print_stats(console: Console, request: Any, started: float, pipe: Any) -> None:
    table = Table(title="stage timings (seconds since submit)")
    for col in ("stage", "start", "end", "busy"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    busy = pipe.backend.stats()
    for stage, t in _stage_times(request, started).items():
        end = f"{t['end']:.3f}" if t["end"] is not None else "-"
        table.add_row(stage, f"{t['start']:.3f}", end, f"{busy.get(stage, 0.0):.3f}")
    console.print(table)
    placed = _placement(pipe)
    if not placed:
        return
    table = Table(title="where each stage instance ran (the plan's contract)")
    for col in ("stage", "device", "dtype", "cores", "KV budget", "KV pool", "KV peak"):
        table.add_column(col, justify="left" if col in ("stage", "device") else "right")
    for stage, instances in placed.items():
        for i, p in enumerate(instances):
            named = ",".join(p["plan_devices"] or [])
            device = (f"{named} → " if named else "") + p["device"] + (
                f" (on {p['runs_on']})" if p["runs_on"] != p["device"] else "")
            table.add_row(stage if i == 0 else "", device, p["dtype"] or "-",
                          ",".join(map(str, p["cores"])) if p["cores"] else "-", _mib(p.get("kv_budget")),
                          _mib(p.get("kv_pool_bytes")), _mib(p.get("kv_peak_bytes")))
    console.print(table)


def _placement(pipe: Any) -> dict[str, list[dict[str, Any]]]:
    return pipe.backend.contract()


def _write_trace(pipe: Any, plan: RuntimePlan, out: str) -> Path:
    """The stage steps this run took, as a Chrome trace (.json) or a timeline picture."""
    from omnigraph.draw.trace import TraceSpan, write_trace

    timings = pipe.backend.stage_timings()
    starts = [t.started for steps in timings.values() for t in steps]
    origin = min(starts) if starts else 0.0
    spans = [TraceSpan(stage, 0, t.started - origin, t.started - origin + t.seconds, t.requests)
             for stage, steps in timings.items() for t in steps]
    title = f"{plan.pipeline} (measured)"
    if out.lower().endswith(".json"):
        return write_trace(spans, out, title)
    from omnigraph.draw.timeline import draw_timeline

    ids = sorted({r for s in spans for r in s.requests})
    requests = [(r, min(s.start for s in spans if r in s.requests), max(s.end for s in spans if r in s.requests))
                for r in ids]
    return draw_timeline(spans, requests, out, title)


def _file_name(name: str, value: Any, modality: str) -> str:
    """The file `--output-dir` would write for an output (as media.write_output names it)."""
    suffix = {"audio": ".wav", "image": ".png"}.get(modality, ".safetensors")
    return name + (".wav" if hasattr(value, "sample_rate") else suffix)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / (1 << 20):,.1f} MiB"


def _brief(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__} {tuple(shape)} {getattr(value, 'dtype', '')}"
    if hasattr(value, "sample_rate"):
        return f"audio {value.seconds:.2f}s at {value.sample_rate} Hz"
    return repr(value)[:200]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return _brief(value)
