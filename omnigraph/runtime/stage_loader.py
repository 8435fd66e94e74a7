"""A stage's executor, loaded: in this process, or as rank 0 of a tensor/expert-parallel
group whose other ranks run as processes of this machine (see tp/)."""
from __future__ import annotations

from omnigraph.runtime.executor import ExecContext, Executor, executor_class
from omnigraph.runtime.plan import StageNode


def load_executor(node: StageNode, ctx: ExecContext, module_paths: list[str] | None = None) -> Executor:
    """The executor of the stage's first instance (LocalBackend runs one per stage)."""
    if node.instances[0].ranks > 1:
        from omnigraph.runtime.tp.local_ranks import start_local_instance

        return start_local_instance(node, ctx, list(module_paths or []))
    executor = executor_class(node.kind)(node, ctx)
    executor.load()
    return executor
