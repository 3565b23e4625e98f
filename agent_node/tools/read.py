"""read: a text file's lines, numbered, optionally a range of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent_node.tools import Tool, ToolError
from agent_node.tools.paths import confine, relative
from agent_node.tools.truncate import clip_line
from agent_node.tools.walk import is_binary

DEFAULT_LINES = 2000

DESCRIPTION = (
    "Read a text file in the checkout. Lines come numbered (number, tab, text). By default up to "
    f"{DEFAULT_LINES} lines from the start; use offset (1-based first line) and limit (number of "
    "lines) to read a part of a long file. The reply says how to continue when it stops early."
)

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "path": {"type": "string", "description": "File path relative to the checkout root."},
        "offset": {"type": "integer", "minimum": 1, "description": "First line to read (1-based)."},
        "limit": {"type": "integer", "minimum": 1, "description": "How many lines to read."},
    },
    "required": ["path"],
    "additionalProperties": False,
}


def make_read(root: Path, *, output_limit: int = 12_000) -> Tool:
    def execute(args: dict[str, Any]) -> str:
        path = confine(root, args["path"])
        shown = relative(root, path)
        if not path.exists():
            raise ToolError(
                f"{shown} does not exist; use find to list files (e.g. pattern '*{path.suffix}')"
            )
        if path.is_dir():
            raise ToolError(f"{shown} is a directory; use find with path '{shown}' to list it")
        if is_binary(path):
            size = path.stat().st_size
            raise ToolError(f"{shown} is a binary file ({size} bytes); read only opens text files")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ToolError(
                f"{shown} is not UTF-8 text (bad byte at offset {e.start}); "
                "read only opens UTF-8 text files"
            ) from e
        if not text:
            return f"{shown} is empty (0 lines)"
        lines = text.splitlines()
        total = len(lines)
        first = int(args.get("offset", 1))
        if first > total:
            raise ToolError(
                f"offset {first} is past the end of {shown}, which has {total} lines; "
                f"use an offset from 1 to {total}"
            )
        count = int(args.get("limit", DEFAULT_LINES))
        width = len(str(min(total, first + count - 1)))
        out: list[str] = []
        used = 0
        last = first - 1
        for number in range(first, min(total, first + count - 1) + 1):
            line = f"{number:>{width}}\t{clip_line(lines[number - 1])}"
            # Stop on a whole line rather than cutting the middle out of a file listing.
            if out and used + len(line) + 1 > output_limit:
                break
            out.append(line)
            used += len(line) + 1
            last = number
        if last < total:
            out.append(
                f"[lines {first}-{last} of {total} in {shown}; "
                f"read with offset={last + 1} to continue]"
            )
        return "\n".join(out)

    return Tool("read", DESCRIPTION, PARAMETERS, execute)
