"""The task loop: orchestrator, fresh coder per round, gate, fix rounds.

    from agent_node.loop import run_task
    summary = run_task("TASK", Path("repo"), model=model, cfg=cfg)   # see orchestrator.run_task
"""

from agent_node.loop.orchestrator import run_task

__all__ = ["run_task"]
