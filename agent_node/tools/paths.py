"""Confine every path a tool is given to the checkout root, and keep it out of git's folders.

A path is relative to the root. Absolute paths, `..` that climbs out, and symlinks whose target
lies outside the root (the file itself or any parent directory) are refused, for reads and writes
alike, so a tool can never touch a file outside the checkout. So is any path through a component
named `.git` (in any letter case, or with the characters macOS ignores in names), before or after
symlinks are resolved: git's own files are the orchestrator's, and a `.git` file that says
`gitdir: <somewhere>` would point git at another repository.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from agent_node.tools import ToolError

# Code points HFS+ ignores in file names, so ".g\u200cit" is ".git" there (git checks the same).
_IGNORED = dict.fromkeys(map(ord, "\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                                  "\u206a\u206b\u206c\u206d\u206e\u206f\ufeff"))


def is_git_name(name: str) -> bool:
    """Is `name` (one path component) git's folder or file, as a filesystem may see it?"""
    return name.translate(_IGNORED).casefold() == ".git"


def confine(root: Path, path: str) -> Path:
    """The real location of `path` inside `root`, symlinks resolved; ToolError if it escapes
    or goes through `.git`."""
    if not isinstance(path, str) or not path.strip():
        raise ToolError(
            "path is empty; give a path relative to the checkout root, e.g. 'src/app.py'"
        )
    if "\x00" in path:
        raise ToolError(f"path {path!r} contains a NUL byte; give a plain relative path")
    if path.startswith("~"):
        raise ToolError(
            f"path {path!r} starts with '~' (a home directory); every path is relative to the "
            "checkout root (e.g. 'src/app.py', or '.' for the root itself)"
        )
    if PurePosixPath(path).is_absolute():
        raise ToolError(
            f"path {path!r} is absolute; every path is relative to the checkout root "
            "(e.g. 'src/app.py', or '.' for the root itself)"
        )
    if any(is_git_name(part) for part in PurePosixPath(path).parts):
        raise ToolError(_git_refusal(path))
    real_root = root.resolve()
    # Lexical check first, for a clear message about `..` before any symlink is looked at.
    depth = 0
    for part in PurePosixPath(path).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                raise ToolError(
                    f"path {path!r} climbs out of the checkout with '..'; "
                    "only files under the checkout root can be used"
                )
        elif part != ".":
            depth += 1
    # resolve() follows every symlink on the way, dangling ones included, so a link in a
    # parent directory or a link to a file that does not exist yet is judged by its target.
    resolved = (real_root / path).resolve()
    if resolved != real_root and not resolved.is_relative_to(real_root):
        raise ToolError(
            f"path {path!r} leads outside the checkout through a symlink (to {resolved}); "
            "only files under the checkout root can be used"
        )
    if any(is_git_name(part) for part in resolved.relative_to(real_root).parts):
        raise ToolError(_git_refusal(path, resolved.relative_to(real_root).as_posix()))
    return resolved


def _git_refusal(path: str, via: str = "") -> str:
    through = f" (a symlink leads it to {via})" if via else ""
    return (f"path {path!r} goes into .git{through}; git's files are not the coder's to read "
            "or write. Change the project's files; the orchestrator commits them itself")


def relative(root: Path, path: Path) -> str:
    """`path` as the model should see it: relative to the root, with forward slashes."""
    try:
        rel = path.relative_to(root.resolve())
    except ValueError:
        return str(path)
    return rel.as_posix() or "."
