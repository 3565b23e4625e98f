"""write: create or replace a whole file, atomically."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from agent_node.tools import Tool, ToolError
from agent_node.tools.paths import confine, relative

DESCRIPTION = (
    "Write a whole text file in the checkout, creating it and its folders if needed, or "
    "replacing it. To change part of an existing file, prefer edit."
)

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "path": {"type": "string", "description": "File path relative to the checkout root."},
        "content": {"type": "string", "description": "The file's complete new content."},
    },
    "required": ["path", "content"],
    "additionalProperties": False,
}

# Read once: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` so a reader sees the old file or the new one, never half."""
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        if mode is not None:
            os.chmod(tmp, mode)
        else:
            os.chmod(tmp, 0o666 & ~_UMASK)  # what open() would have made, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_write(root: Path) -> Tool:
    def execute(args: dict[str, Any]) -> str:
        # confine() resolves symlinks: a link inside the checkout is written through to its
        # target, and a link (or linked folder) pointing outside is refused.
        path = confine(root, args["path"])
        shown = relative(root, path)
        if path.is_dir():
            raise ToolError(f"{shown} is a directory; give the path of a file inside it")
        parent = path.parent
        for folder in [parent, *parent.parents]:
            if folder.exists() and not folder.is_dir():
                raise ToolError(
                    f"cannot create {shown}: {relative(root, folder)} is a file, not a folder"
                )
        existed = path.exists()
        parent.mkdir(parents=True, exist_ok=True)
        content: str = args["content"]
        atomic_write(path, content)
        lines = content.count("\n") + (0 if content.endswith("\n") or not content else 1)
        verb = "replaced" if existed else "created"
        return f"{verb} {shown} ({len(content.encode('utf-8'))} bytes, {lines} lines)"

    return Tool("write", DESCRIPTION, PARAMETERS, execute)
