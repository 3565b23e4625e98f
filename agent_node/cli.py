"""`agent-node`: a tiny dispatcher; each subcommand is a module function `main(argv) -> int`.

Exit codes: 0 success, 1 the work failed, 2 bad usage or input, 3 inference node or tunnel
unreachable.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("agent_node.loop.cli", "run_main", "run a task: agent-node run TASK --repo DIR"),
    "approve": ("agent_node.loop.cli", "approve_main", "bring a passed run onto your branch"),
    "reject": ("agent_node.loop.cli", "reject_main", "drop a run and its branch"),
    "runs": ("agent_node.loop.cli", "runs_main", "list runs and their verdicts"),
    "check-ui": ("agent_node.qa.cli", "main", "visual QA alone: agent-node check-ui URL --spec F"),
    "status": ("agent_node.status", "main", "tunnel, inference health, models, memory"),
    "bridge": ("agent_node.bridge", "main", "OpenAI-compatible endpoint on 127.0.0.1"),
    "demo": ("agent_node.demo", "main", "the embedded default, end to end"),
}


def usage() -> str:
    lines = ["usage: agent-node COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stderr if not argv else sys.stdout)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"agent-node: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    # The agent node runs no MLX; an OpenBLAS preload (the Makefile exports one for MLX) would
    # reach Chromium and Playwright's driver, which hang with it.
    kept = [p for p in os.environ.get("LD_PRELOAD", "").split() if "openblas" not in p]
    os.environ.pop("LD_PRELOAD", None)
    if kept:
        os.environ["LD_PRELOAD"] = " ".join(kept)
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
