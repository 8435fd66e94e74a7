"""The MILP solver the planner calls through PuLP: HiGHS when highspy is installed, else the
CBC that ships with PuLP; quiet, time-limited, and started from the plan in hand.

A start matters at scale: on 1,024 GPUs HiGHS spends most of a solve finding its first good
plan, and the planner usually has one (the previous refinement round's, or the first solve's
when it trims devices). PuLP's HiGHS interface ignores initial values, so the subclass below
hands them over (the variables that have one; HiGHS completes the rest or drops the start).
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import numpy as np
import pulp


class _StartedHiGHS(pulp.HiGHS):  # type: ignore[misc, valid-type]
    def callSolver(self, lp: pulp.LpProblem) -> None:
        start = [(v.index, v.varValue) for v in lp.variables() if v.varValue is not None]
        if start:
            index, value = zip(*start)
            lp.solverModel.setSolution(len(index), np.array(index, dtype=np.int32), np.array(value, dtype=np.float64))
        lp.solverModel.run()


SOLVER_NAME = "HiGHS" if _StartedHiGHS(msg=False).available() else "PULP_CBC_CMD"


def make_solver(time_limit: float) -> pulp.LpSolver:
    if SOLVER_NAME == "HiGHS":
        return _StartedHiGHS(msg=False, timeLimit=time_limit)
    return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, warmStart=True)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """HiGHS prints a banner from C on creation, whatever msg says: hide fd 1 meanwhile."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a captured or replaced sys.stdout
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def run_solver(m: pulp.LpProblem, solver: pulp.LpSolver) -> int:
    """Solve `m` (its variables' current values are the start); the PuLP status."""
    with _quiet_stdout():
        return m.solve(solver)


def solved_gap(m: pulp.LpProblem) -> float:
    """How far the plan in hand may be from the best one, as the solver proved it (relative;
    0: optimal, or a solver that does not say; inf: stopped before it bounded the best)."""
    model = getattr(m, "solverModel", None)
    if model is None or not hasattr(model, "getInfo"):
        return 0.0
    gap = model.getInfo().mip_gap
    return max(0.0, gap) if gap == gap else float("inf")


def ran_out_of_time(m: pulp.LpProblem, status: int) -> bool:
    """Whether the solve stopped at its time limit before it found any plan (not infeasible)."""
    model = getattr(m, "solverModel", None)
    if model is not None and hasattr(model, "getModelStatus"):
        import highspy

        return model.getModelStatus() == highspy.HighsModelStatus.kTimeLimit
    return status == pulp.LpStatusNotSolved
