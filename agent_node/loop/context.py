"""What the coder is shown up front: the repository's files, whole while they fit, else outlined.

    shown = repo_context(work, files, task, budget_chars=12_000)
    shown.whole      # [(path, text)]: files in full, the ones the task names first
    shown.outlines   # [(path, [lines])]: the rest of the source files, as their def/class lines

A small model spends its turns finding and reading files, and often never gets to the change;
a repository of a few small files fits in a brief whole, as aider adds files to its chat. Past
the budget a file is outlined (its top-level and class-level `def`/`class` lines, for Python;
the names for other languages are not parsed) and the coder reads what it needs. Binary files,
files that are not UTF-8 and files the walk skips (`tools.walk.SKIP_DIRS`) are never shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from agent_node.tools.walk import SKIP_DIRS, is_binary

OUTLINE = re.compile(r"^(?:    )?(?:async\s+)?(?:def|class)\s+\w+.*$")
TEXT_SUFFIXES = (".py", ".md", ".txt", ".toml", ".cfg", ".ini", ".json", ".yml", ".yaml",
                 ".html", ".htm", ".css", ".js", ".jsx", ".ts", ".tsx", ".sh", ".rs", ".go",
                 ".java", ".c", ".h", ".cpp", ".rb", ".j2", ".vue", ".svelte", "")
MAX_OUTLINE_LINES = 40
FILES_BRIEF_CHARS = 12_000  # the budget when [loop] coder = "files" and brief_chars is 0
TEST_PATH = re.compile(r"(^|/)tests?/|(^|/)test_|_test\.")


def is_test_path(path: str) -> bool:
    return bool(TEST_PATH.search(path))


def inside(work: Path, f: Path) -> bool:
    """A regular file whose real path is in the checkout: a link a coder made (to a key, a
    config) is never read into a brief, a prompt or the record."""
    try:
        return f.is_file() and f.resolve().is_relative_to(work.resolve())
    except (OSError, RuntimeError):  # a link loop
        return False


def shown_sources(whole: list[tuple[str, str]]) -> list[str]:
    """The files shown whole that are not tests, in the brief's order (the task's first)."""
    return [path for path, _ in whole if not is_test_path(path)]


@dataclass
class Shown:
    whole: list[tuple[str, str]] = field(default_factory=list)
    outlines: list[tuple[str, list[str]]] = field(default_factory=list)
    chars: int = 0


def named_in(path: str, task: str) -> bool:
    """Whether the task names the file: its path, its name, or a stem longer than 3 letters."""
    stem = Path(path).stem
    return path in task or Path(path).name in task or (stem in task and len(stem) > 3)


def _rank(path: str, task: str) -> tuple[int, int, str]:
    """Files the task names come first, then source, then tests, then the rest."""
    named = named_in(path, task)
    test = is_test_path(path)
    source = Path(path).suffix in (".py", ".js", ".ts", ".html", ".css", ".go", ".rs")
    kind = 0 if source and not test else 1 if test else 2
    return (0 if named else 1, kind, path)


def repo_context(work: Path, files: list[str], task: str, budget_chars: int) -> Shown:
    shown = Shown()
    if budget_chars <= 0:
        return shown
    for path in sorted(files, key=lambda p: _rank(p, task)):
        f = work / path
        if any(part in SKIP_DIRS for part in Path(path).parts) or not inside(work, f):
            continue
        if Path(path).suffix.lower() not in TEXT_SUFFIXES or is_binary(f):
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if shown.chars + len(text) <= budget_chars:
            shown.whole.append((path, text))
            shown.chars += len(text)
            continue
        if path.endswith(".py"):
            lines = [ln.rstrip() for ln in text.splitlines() if OUTLINE.match(ln)]
            lines = lines[:MAX_OUTLINE_LINES]
            cost = sum(len(ln) + 1 for ln in lines)
            if lines and shown.chars + cost <= budget_chars:
                shown.outlines.append((path, lines))
                shown.chars += cost
    return shown


def read_file(root: Path, path: str) -> str:
    """A file of the checkout as text; "" when there is none (a new file to write) or it is a
    link out of the checkout."""
    try:
        return (root / path).read_text(encoding="utf-8") if path and inside(root, root / path) \
            else ""
    except (OSError, UnicodeDecodeError):
        return ""
