"""find: list the files in a folder, or those whose path matches a glob."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent_node.tools import Tool
from agent_node.tools.walk import SKIP_DIRS, files_matching

DEFAULT_LIMIT = 200

DESCRIPTION = (
    "Find files in the checkout by glob. A pattern without '/' matches file names at any depth "
    "('*.py', 'test_*'); one with '/' matches the path from the search folder ('src/**/*.ts'). "
    "Without a pattern, lists every file. Skips " + ", ".join(sorted(SKIP_DIRS)) + ". "
    f"Returns at most `limit` paths (default {DEFAULT_LIMIT}), relative to the checkout root."
)

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "pattern": {"type": "string", "description": "Glob, e.g. '*.py' or 'src/**/*.ts'."},
        "path": {"type": "string", "description": "Folder to search, relative to the root; '.'."},
        "limit": {"type": "integer", "minimum": 1, "description": "Most paths to return."},
    },
    "additionalProperties": False,
}


def make_find(root: Path, *, output_limit: int = 12_000) -> Tool:
    def execute(args: dict[str, Any]) -> str:
        pattern = args.get("pattern", "")
        shown, files = files_matching(root, args.get("path", "."), pattern,
                                      "use find without path to list the checkout")
        limit = int(args.get("limit", DEFAULT_LIMIT))
        found: list[str] = []
        more = 0
        used = 0
        for file in files:
            entry = _from_root(root, file)
            if len(found) < limit and used + len(entry) + 1 <= output_limit:
                found.append(entry)
                used += len(entry) + 1
            else:
                more += 1
        if not found:
            what = f"matching {pattern!r} " if pattern else ""
            return f"no files {what}under {shown}"
        if more:
            found.append(f"[{more} more not shown; narrow the pattern or the path]")
        return "\n".join(found)

    return Tool("find", DESCRIPTION, PARAMETERS, execute)


def _from_root(root: Path, file: Path) -> str:
    """The path as found (not resolved: a symlink is listed under its own name)."""
    try:
        return file.relative_to(root.resolve()).as_posix()
    except ValueError:
        return file.as_posix()
