"""Confine every path a tool is given to the worktree root.

A path is relative to the root. Absolute paths, `..` that climbs out, and symlinks whose target
lies outside the root (the file itself or any parent directory) are refused, for reads and writes
alike, so a tool can never touch a file outside the worktree.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from agent_node.tools import ToolError


def confine(root: Path, path: str) -> Path:
    """The real location of `path` inside `root`, symlinks resolved; ToolError if it escapes."""
    if not isinstance(path, str) or not path.strip():
        raise ToolError(
            "path is empty; give a path relative to the worktree root, e.g. 'src/app.py'"
        )
    if "\x00" in path:
        raise ToolError(f"path {path!r} contains a NUL byte; give a plain relative path")
    if path.startswith("~"):
        raise ToolError(
            f"path {path!r} starts with '~' (a home directory); every path is relative to the "
            "worktree root (e.g. 'src/app.py', or '.' for the root itself)"
        )
    if PurePosixPath(path).is_absolute():
        raise ToolError(
            f"path {path!r} is absolute; every path is relative to the worktree root "
            "(e.g. 'src/app.py', or '.' for the root itself)"
        )
    real_root = root.resolve()
    # Lexical check first, for a clear message about `..` before any symlink is looked at.
    depth = 0
    for part in PurePosixPath(path).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                raise ToolError(
                    f"path {path!r} climbs out of the worktree with '..'; "
                    "only files under the worktree root can be used"
                )
        elif part != ".":
            depth += 1
    # resolve() follows every symlink on the way, dangling ones included, so a link in a
    # parent directory or a link to a file that does not exist yet is judged by its target.
    resolved = (real_root / path).resolve()
    if resolved != real_root and not resolved.is_relative_to(real_root):
        raise ToolError(
            f"path {path!r} leads outside the worktree through a symlink (to {resolved}); "
            "only files under the worktree root can be used"
        )
    return resolved


def relative(root: Path, path: Path) -> str:
    """`path` as the model should see it: relative to the root, with forward slashes."""
    try:
        rel = path.relative_to(root.resolve())
    except ValueError:
        return str(path)
    return rel.as_posix() or "."
