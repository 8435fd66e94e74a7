"""Switching between the plans of a family as the load shifts (`serve --replan`).

A plan compiled with `--mixes` carries one variant per operating point (plan.family): the
same stages with the instance counts the planner chose for that traffic. `switch` moves a
LocalBackend from one variant to another without dropping or failing a request: the new
instances load and start first, then the instances the new variant has no place for are
drained (their running requests migrate with their KV cache, migration.py; what cannot move
finishes where it is) and stopped.

On Ray (RayBackend.switch_variant) new actors load and serve first; the actors the new
variant has no place for take no new work, finish what they hold and stop (the placement
groups hold room for every variant's actors).

`Replanner` decides when. Every `window_s` it measures each stage's demand, the busy seconds
its instances spent per second of wall time (how many instances' worth of work it needs
now), and scores every variant by its tightest stage: min over stages of instances / demand.
It switches to a better-scoring variant only when that one has won `hold` windows in a row
by more than `margin` (hysteresis: a burst does not flap the plan).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omnigraph.runtime.plan import Instance, PlanVariant

if TYPE_CHECKING:
    from omnigraph.runtime.local import LocalBackend, _Worker

log = logging.getLogger(__name__)

IDLE_DEMAND = 0.05  # instances' worth of work below which a stage does not decide anything
STOP_WAIT_S = 120.0  # at most this long for a drained instance's unmovable work to finish


@dataclass(frozen=True)
class ReplanPolicy:
    window_s: float = 5.0
    hold: int = 3  # windows in a row a better variant must win
    margin: float = 0.2  # by this much (its score over the current one's, minus 1)

    @classmethod
    def parse(cls, text: str | None) -> ReplanPolicy:
        """`--replan` alone (defaults) or `window=5,hold=3,margin=0.2`."""
        if not text:
            return cls()
        values: dict[str, float] = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            key, _, raw = part.partition("=")
            if key not in ("window", "hold", "margin"):
                raise ValueError(f"--replan: unknown setting '{key}' (window, hold, margin)")
            try:
                values[key] = float(raw)
            except ValueError:
                raise ValueError(f"--replan: {key} must be a number, not {raw!r}") from None
        policy = cls(values.get("window", cls.window_s), int(values.get("hold", cls.hold)),
                     values.get("margin", cls.margin))
        if policy.window_s <= 0 or policy.hold < 1 or policy.margin < 0:
            raise ValueError("--replan: window > 0 seconds, hold >= 1 window, margin >= 0")
        return policy


@dataclass
class Switch:
    at: float  # time.monotonic()
    frm: str
    to: str
    seconds: float  # from the decision to the last old instance stopped
    moved: int  # requests migrated off removed instances


def switch(backend: Any, variant: PlanVariant) -> int:
    """Make `backend` run `variant`'s instances; returns how many requests migrated. On Ray
    (RayBackend.switch_variant) the new actors load first and the old ones finish their work."""
    if hasattr(backend, "switch_variant"):
        return backend.switch_variant(variant)
    from omnigraph.runtime.local import _Worker, instance_context
    from omnigraph.runtime.stage_loader import load_executor

    moved = 0
    nodes = {n.name: n for n in backend.plan.stages()}
    for stage, wanted in variant.instances.items():
        node = nodes.get(stage)
        if node is None:
            raise ValueError(f"variant '{variant.name}' names stage '{stage}', which the plan does not have")
        current = list(backend.instances[stage])
        keep, add = match_instances(current, wanted)
        fresh: list[_Worker] = []
        try:
            for inst in add:  # load before anything is taken away
                alone = node.model_copy(update={"instances": [inst]})  # the executor sees its own instance first
                executor = load_executor(alone, instance_context(inst), backend.plan.module_paths, 0)
                worker = _Worker(node, executor, len(current) + len(fresh), inst)
                worker.start()
                fresh.append(worker)
        except BaseException:
            for worker in fresh:  # nothing of this stage changes: the old instances serve on
                _stop(worker)
            raise
        leaving = [w for w in current if w not in keep]
        backend.instances[stage] = current + fresh  # the new ones take work from now on
        for worker in leaving:
            moved += backend.drain(stage, backend.instances[stage].index(worker))
        for worker in leaving:
            _stop(worker)
        backend.instances[stage] = keep + fresh
        node.instances = [w.instance for w in backend.instances[stage]]
    backend.workers = {name: found[0] for name, found in backend.instances.items()}
    backend.variant = variant.name
    return moved


def match_instances(current: list[Any], wanted: list[Instance]) -> tuple[list[Any], list[Instance]]:
    """Of a stage's running instances (local workers or Ray instances: each has `.instance`),
    those that already run a wanted instance (kept), and the wanted instances still to start."""
    keep, add = [], list(wanted)
    for running in current:
        if running.instance in add:
            add.remove(running.instance)
            keep.append(running)
    return keep, add


def _stop(worker: _Worker) -> None:
    deadline = time.monotonic() + STOP_WAIT_S
    while (worker.load() or worker.active) and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stopping = True
    worker.wake.set()
    worker.join(timeout=5)
    worker.executor.close()


@dataclass
class Replanner:
    backend: LocalBackend
    policy: ReplanPolicy = field(default_factory=ReplanPolicy)
    on_switch: Callable[[Switch], None] | None = None
    history: list[Switch] = field(default_factory=list)
    scores: list[dict[str, float]] = field(default_factory=list)  # per window, each variant's score
    errors: list[str] = field(default_factory=list)  # switches that failed (the plan stayed)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._busy: dict[str, float] = {}
        self._streak: tuple[str, int] = ("", 0)
        self._thread = threading.Thread(target=self._run, name="omnigraph-replan", daemon=True)

    def start(self) -> Replanner:
        if len(self.backend.plan.family) < 2:
            raise ValueError("this plan has no family to switch between: compile it with --mixes (two mixes or more)")
        self._demand()  # the baseline
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_WAIT_S)

    def _run(self) -> None:
        while not self._stop.wait(self.policy.window_s):
            try:
                self.step(self._demand())
            except Exception as exc:  # a variant that cannot load: keep serving on what runs now
                self.errors.append(f"{type(exc).__name__}: {exc}")
                log.warning("omnigraph: re-planning failed, the plan stays as it is: %s", exc)

    def step(self, demand: dict[str, float]) -> Switch | None:
        """One window: score the variants on `demand` and switch when the policy says so."""
        family = self.backend.plan.family
        scores = {v.name: score(v, demand) for v in family}
        self.scores.append(scores)
        current = self.backend.variant
        best = max(scores, key=lambda n: (scores[n], n == current))
        if best == current or scores[best] <= scores.get(current, 0.0) * (1 + self.policy.margin):
            self._streak = ("", 0)
            return None
        name, count = self._streak
        self._streak = (best, count + 1 if name == best else 1)
        if self._streak[1] < self.policy.hold:
            return None
        self._streak = ("", 0)
        started = time.monotonic()
        moved = switch(self.backend, self.backend.plan.variant(best))
        done = Switch(started, current, best, time.monotonic() - started, moved)
        self.history.append(done)
        if self.on_switch is not None:
            self.on_switch(done)
        return done

    def _demand(self) -> dict[str, float]:
        """Busy seconds per second of wall time, per stage, since the last call (the backend's
        stats, either backend; a window in which instances left counts from what remains)."""
        now = time.monotonic()
        last = getattr(self, "_last", now)
        self._last = now
        busy = self.backend.stats()
        out: dict[str, float] = {}
        for stage, seconds in busy.items():
            spent = max(0.0, seconds - self._busy.get(stage, 0.0))
            self._busy[stage] = seconds
            out[stage] = spent / (now - last) if now > last else 0.0
        return out


def score(variant: PlanVariant, demand: dict[str, float]) -> float:
    """How much headroom `variant` leaves its tightest stage under `demand` (instances per
    instance's worth of work); stages with next to no work do not count."""
    ratios = [len(variant.instances.get(stage, [])) / d for stage, d in demand.items() if d >= IDLE_DEMAND]
    return min(ratios) if ratios else float("inf")


__all__: list[Any] = ["ReplanPolicy", "Replanner", "Switch", "score", "switch"]
