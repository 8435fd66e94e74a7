"""Identical stages, planned as one: a wide fan-in of like encoders is one class with a count.

Stages with the same options, load, producers and hand-off size are interchangeable: any plan
can swap them. Planning each separately makes the MILP search those swaps one by one (98
encoders into one LLM took seconds on 8 GPUs); planning the class decides how many of its
members share each pool and how many run dedicated, with one config for all of them. What a
class gives up: members of one class never pick different configs, which a symmetric load
does not need (every dedicated member needs the same replicas to keep up).
"""
from __future__ import annotations

from dataclasses import dataclass

from omnigraph.passes.planner.plan_problem import PlanProblem, StageChoices


@dataclass(frozen=True)
class StageClass:
    choices: StageChoices  # its first member's (options, load and producers equal for all)
    members: tuple[str, ...]  # in stage order

    @property
    def count(self) -> int:
        return len(self.members)


def stage_classes(problem: PlanProblem) -> list[StageClass]:
    """The problem's stages grouped into classes, in the order of their first members.
    Pinned stages stay alone: a pin is about one stage."""
    groups: dict[tuple, list[StageChoices]] = {}
    for st in problem.stages:
        key: tuple = (st.name,) if st.replicas is not None or st.pinned_devices else (
            repr(st.options), st.visits, st.preds, st.in_bytes, st.swappable)
        groups.setdefault(key, []).append(st)
    return [StageClass(members[0], tuple(m.name for m in members)) for members in groups.values()]
