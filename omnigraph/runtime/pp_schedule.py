"""How a pipeline-parallel stage cuts one forward into micro-batches: the rule the runtime
follows (runtime/tp/pipeline.py) and the cost model prices (passes/planner/cost_rules.py), in
one place so the two cannot drift. Torch-free: the planner runs without torch.
"""
from __future__ import annotations

MICRO_BATCHES = 4  # per step, at most (never more than its rows)
# Below this many new tokens a forward is bound by reading the stage's weights (a decode step),
# and every micro-batch reads them again: it runs whole. Measured on this CPU
# (benchmarks/pipeline_parallel.py): at decode, 2 / 4 / 8 micro-batches took 1.2x / 1.7x / 3.1x
# the time of one.
MICRO_BATCH_TOKENS = 512


def micro_batches(rows: int, new_tokens: int, most: int = MICRO_BATCHES, forced: bool = False) -> int:
    """Micro-batches for a forward of `rows` sequences of `new_tokens` each (`forced`: a
    benchmark's fixed count, whatever the forward)."""
    if forced or rows * new_tokens >= MICRO_BATCH_TOKENS:
        return max(1, min(rows, most))
    return 1
