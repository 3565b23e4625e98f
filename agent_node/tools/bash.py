"""bash: run a shell command in the checkout, inside the sandbox, killed whole at its timeout."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agent_node.sandbox import Sandbox
from agent_node.tools import Tool, ToolError

DESCRIPTION = (
    "Run a bash command in the checkout root (its working directory) and return the exit code "
    "and the combined stdout and stderr. Long output keeps its head and tail. The command has "
    "no input (stdin is empty) and a timeout: at the timeout it is killed with every process it "
    "started. Background processes do not outlive the command either, so start a server and "
    "query it within one command. It runs in a sandbox: only the checkout and /tmp (emptied "
    "after each command) can be written; the checkout's git is read-only (read the history, "
    "commit nothing); there is no network."
)


def checkout_git(root: Path) -> list[Path]:
    """The checkout's git, which the coder may read and never write: its `.git` (folder or
    `gitdir:` file) and the folder a `gitdir:` file points at."""
    dot_git = root / ".git"
    if dot_git.is_dir():
        return [dot_git]
    if not dot_git.is_file():
        return []
    paths = [dot_git]
    first = dot_git.read_text(errors="replace").splitlines()[:1]
    if first and first[0].startswith("gitdir:"):
        target = Path(first[0][len("gitdir:"):].strip())
        target = target if target.is_absolute() else root / target
        if target.is_dir():
            paths.append(target)
    return paths


def make_bash(root: Path, *, timeout_s: float = 120, output_limit: int = 12_000,
              sandbox: Sandbox | None = None) -> Tool:
    """`sandbox` None: the default sandbox, or SandboxUnavailable when there is none."""
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "The bash command to run."},
            "timeout": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": f"Seconds before it is killed; default and most {timeout_s:g}.",
            },
        },
        "required": ["command"],
        "additionalProperties": False,
    }
    cwd = root.resolve()
    confine = sandbox or Sandbox.from_config()
    read_only = checkout_git(cwd)

    def execute(args: dict[str, Any]) -> str:
        command: str = args["command"]
        if not command.strip():
            raise ToolError("command is empty; give a bash command to run")
        limit = min(float(args.get("timeout", timeout_s)), timeout_s)
        env = {"PAGER": "cat", "GIT_PAGER": "cat", "TERM": "dumb"}
        done = confine.run(["bash", "-c", command], cwd=cwd, writable=[cwd],
                           read_only=read_only, timeout_s=limit, output_limit=output_limit,
                           env={**os.environ, **env})
        output = done.output or "(no output)"
        if done.timed_out:
            raise ToolError(
                f"command timed out after {limit:g} s and was killed with every process it "
                f"started; output so far:\n{output}\n[make it faster, run less at once, or pass "
                f"a timeout up to {timeout_s:g} s]"
            )
        return f"{done.status()} ({done.seconds:.1f} s)\n{output}"

    return Tool("bash", DESCRIPTION, parameters, execute)

