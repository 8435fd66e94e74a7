"""A stage's executor, loaded: in this process, or as rank 0 of a tensor/expert-parallel
group whose other ranks run as processes of this machine (see tp/)."""
from __future__ import annotations

from omnigraph.runtime.executor import ExecContext, Executor, executor_class
from omnigraph.runtime.plan import StageNode


def load_executor(node: StageNode, ctx: ExecContext, module_paths: list[str] | None = None,
                  instance: int = 0) -> Executor:
    """The executor of one of the stage's instances (LocalBackend runs one per instance)."""
    if node.instances[instance].ranks > 1:
        from omnigraph.runtime.tp.local_ranks import start_local_instance

        return start_local_instance(node, ctx, list(module_paths or []), instance)
    executor = executor_class(node.kind)(node, ctx)
    executor.load()
    return executor
