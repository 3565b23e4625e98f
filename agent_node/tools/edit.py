"""edit: replace one exact, unique piece of a file with another."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from agent_node.tools import Tool, ToolError
from agent_node.tools.paths import confine, relative
from agent_node.tools.truncate import clip_line
from agent_node.tools.walk import is_binary
from agent_node.tools.write import atomic_write

DESCRIPTION = (
    "Edit a file in the checkout by exact replacement: `old` must occur exactly once in the "
    "file (whitespace and indentation included) and is replaced by `new`. Include enough "
    "surrounding lines in `old` to make it unique. Read the file first to copy the text exactly."
)

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "path": {"type": "string", "description": "File path relative to the checkout root."},
        "old": {"type": "string", "description": "The exact text to replace; must be unique."},
        "new": {"type": "string", "description": "The text to put in its place."},
    },
    "required": ["path", "old", "new"],
    "additionalProperties": False,
}


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _closest_line_hint(text: str, old: str, shown: str) -> str:
    """Point at where the model probably meant: the file line most like old's first line."""
    wanted = next((ln for ln in old.splitlines() if ln.strip()), "")
    if not wanted:
        return ""
    lines = text.splitlines()
    stripped = wanted.strip()
    for number, line in enumerate(lines, 1):
        if line.strip() == stripped and line != wanted:
            return (
                f" Line {number} has the same text with different indentation or spacing: "
                f"{clip_line(line, 200)!r}; copy it exactly (read {shown} around that line)."
            )
    best = difflib.get_close_matches(wanted, lines, n=1, cutoff=0.6)
    if best:
        number = lines.index(best[0]) + 1
        return (
            f" The closest line is {number}: {clip_line(best[0], 200)!r}; "
            f"read {shown} near line {number} and copy the text exactly."
        )
    return f" No line resembles {clip_line(wanted, 200)!r}; read {shown} to see what it holds."


def make_edit(root: Path) -> Tool:
    def execute(args: dict[str, Any]) -> str:
        path = confine(root, args["path"])
        shown = relative(root, path)
        old: str = args["old"]
        new: str = args["new"]
        if not old:
            raise ToolError(
                "old is empty; give the exact text to replace (use write for a new file)"
            )
        if old == new:
            raise ToolError("old and new are the same; there is nothing to change")
        if not path.exists():
            raise ToolError(f"{shown} does not exist; use write to create it")
        if path.is_dir():
            raise ToolError(f"{shown} is a directory; give the path of a file")
        if is_binary(path):
            raise ToolError(f"{shown} is a binary file; edit only changes text files")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ToolError(f"{shown} is not UTF-8 text; edit only changes UTF-8 text files") from e
        # A file with Windows line endings: match and write in its own convention.
        if "\r\n" in text and "\r\n" not in old:
            old = old.replace("\n", "\r\n")
            new = new.replace("\n", "\r\n")
        # Overlapping matches count too: "aa" in "aaa" is ambiguous.
        starts = []
        at = text.find(old)
        while at != -1:
            starts.append(at)
            at = text.find(old, at + 1)
        if not starts:
            raise ToolError(
                f"old text not found in {shown}." + _closest_line_hint(text, old, shown)
            )
        if len(starts) > 1:
            lines = [_line_of(text, i) for i in starts[:20]]
            where = ", ".join(map(str, lines)) + (", ..." if len(starts) > 20 else "")
            raise ToolError(
                f"old text occurs {len(starts)} times in {shown} (starting on lines {where}); "
                "include more surrounding lines in old so it matches exactly once"
            )
        at = starts[0]
        atomic_write(path, text[:at] + new + text[at + len(old) :])
        first = _line_of(text, at)
        last = first + new.count("\n")
        span = f"line {first}" if last == first else f"lines {first}-{last}"
        return f"edited {shown}: replaced 1 occurrence, now {span}"

    return Tool("edit", DESCRIPTION, PARAMETERS, execute)
