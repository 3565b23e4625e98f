"""Walk the files of a checkout for `find` and `grep`: skip tool folders, match globs."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

# Folders that are never the coder's work and can hold many thousands of files.
SKIP_DIRS = frozenset(
    ".git node_modules .venv venv __pycache__ .mypy_cache .pytest_cache .ruff_cache .tox".split()
)


def iter_files(start: Path) -> Iterator[Path]:
    """Every file under `start` in sorted order, skipping SKIP_DIRS and anything git's (a `.git`
    folder or file, in any case); symlinked folders are not entered (they could lead outside the
    checkout, or loop)."""
    from agent_node.tools.paths import is_git_name

    if start.is_file():
        yield start
        return
    for dirpath, dirnames, filenames in os.walk(start):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not is_git_name(d))
        for name in sorted(filenames):
            if not is_git_name(name):
                yield Path(dirpath) / name


def files_matching(root: Path, path: str, glob: str, missing_hint: str
                   ) -> tuple[str, Iterator[Path]]:
    """(`path` as shown to the model, the files under it whose relative path matches `glob`).

    `path` is confined to the checkout; a path that does not exist is a ToolError ending in
    `missing_hint`.
    """
    from agent_node.tools import ToolError
    from agent_node.tools.paths import confine, relative

    start = confine(root, path)
    shown = relative(root, start)
    if not start.exists():
        raise ToolError(f"{shown} does not exist; {missing_hint}")

    def matching() -> Iterator[Path]:
        for file in iter_files(start):
            rel = file.relative_to(start).as_posix() if start.is_dir() else file.name
            if not glob or glob_matches(glob, rel):
                yield file

    return shown, matching()


@lru_cache(maxsize=64)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")  # zero or more whole folders
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        elif c == "{":
            end = pattern.find("}", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                alts = pattern[i + 1 : end].split(",")
                out.append("(?:" + "|".join(re.escape(a) for a in alts) + ")")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def glob_matches(pattern: str, rel_path: str) -> bool:
    """Does `rel_path` (posix, relative to the search folder) match `pattern`?

    A pattern without '/' matches the file name at any depth (`*.py`, like `find -name`);
    one with '/' matches the whole relative path, `**` standing for any number of folders.
    """
    while pattern.startswith("./"):
        pattern = pattern[2:]
    if "/" not in pattern:
        return _glob_regex(pattern).match(rel_path.rsplit("/", 1)[-1]) is not None
    return _glob_regex(pattern).match(rel_path) is not None


def is_binary(path: Path) -> bool:
    """A NUL byte in the first 8 KiB: the same test git and grep use."""
    with path.open("rb") as f:
        return b"\x00" in f.read(8192)
