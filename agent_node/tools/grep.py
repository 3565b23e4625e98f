"""grep: search file contents with a regular expression (pure Python, bounded)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from agent_node.tools import Tool, ToolError
from agent_node.tools.truncate import clip_line
from agent_node.tools.walk import SKIP_DIRS, files_matching, is_binary

DEFAULT_LIMIT = 100
MAX_FILE_BYTES = 2_000_000  # larger files are data or bundles, not code to search

DESCRIPTION = (
    "Search the contents of text files in the checkout with a Python regular expression. "
    "Returns matching lines as 'path:line: text'. Use path to search one folder or file, glob "
    "to filter file names ('*.py'), ignore_case for case-insensitive matching. Skips binary "
    "files, files over 2 MB and " + ", ".join(sorted(SKIP_DIRS)) + ". "
    f"Returns at most `limit` lines (default {DEFAULT_LIMIT})."
)

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "pattern": {"type": "string", "description": "Python regular expression."},
        "path": {"type": "string", "description": "Folder or file to search; default '.'."},
        "glob": {"type": "string", "description": "Only files whose name matches, e.g. '*.py'."},
        "ignore_case": {"type": "boolean", "description": "Match regardless of case."},
        "limit": {"type": "integer", "minimum": 1, "description": "Most matching lines."},
    },
    "required": ["pattern"],
    "additionalProperties": False,
}


def make_grep(root: Path, *, output_limit: int = 12_000) -> Tool:
    real_root = root.resolve()

    def execute(args: dict[str, Any]) -> str:
        try:
            regex = re.compile(args["pattern"], re.IGNORECASE if args.get("ignore_case") else 0)
        except re.error as e:
            raise ToolError(
                f"pattern {args['pattern']!r} is not a valid regular expression ({e}); "
                "escape special characters such as ( [ . * with a backslash"
            ) from e
        glob = args.get("glob", "")
        shown, files = files_matching(root, args.get("path", "."), glob,
                                      "use find to see the checkout's files")
        limit = int(args.get("limit", DEFAULT_LIMIT))
        hits: list[str] = []
        more = 0
        used = 0
        for file in files:
            # A symlinked file may point outside the checkout; its target is not ours to read.
            real = file.resolve()
            if not real.is_relative_to(real_root) or not real.is_file():
                continue
            try:
                if real.stat().st_size > MAX_FILE_BYTES or is_binary(real):
                    continue
                text = real.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            name = file.relative_to(real_root).as_posix()
            for number, line in enumerate(text.splitlines(), 1):
                if not regex.search(line):
                    continue
                hit = f"{name}:{number}: {clip_line(line, 300)}"
                if len(hits) < limit and used + len(hit) + 1 <= output_limit:
                    hits.append(hit)
                    used += len(hit) + 1
                else:
                    more += 1
        if not hits:
            where = f" in files matching {glob!r}" if glob else ""
            return f"no match for {args['pattern']!r} under {shown}{where}"
        if more:
            hits.append(f"[{more} more matching lines not shown; narrow the pattern or the path]")
        return "\n".join(hits)

    return Tool("grep", DESCRIPTION, PARAMETERS, execute)
