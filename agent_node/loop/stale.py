"""Uses, in other files, of names the change took out of a module, found before any test runs.

A change that takes `fetch_usr` out of db.py (a rename) while report.py still calls
`db.fetch_usr`, which no visible test imported, passes the tests and fails the first time that
line runs. `stale_uses` finds such uses; `broken_by_change` is what the gate and the coder are
told of both mistakes, these and the reads of undefined names that names.py finds.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from agent_node.loop.context import is_test_path
from agent_node.loop.names import (
    DYNAMIC,
    MAX_UNBOUND,
    failures,
    module_of,
    python_files,
    unbound_in_change,
)

TOP_LEVEL_DEF = re.compile(r"^-(?:class|def|async\s+def)\s+([A-Za-z_]\w*)"
                           r"|^-([A-Za-z_]\w*)\s*(?::[^=]*)?=(?!=)")


@dataclass(frozen=True)
class Stale:
    """A use, in `path`, of the name `name` that the change took out of the module `module`."""

    path: str
    line: int
    module: str  # the repository file the name was taken out of
    name: str

    def failure(self) -> str:
        return (f"{self.path}:{self.line} uses `{self.name}` from {self.module}, which the change "
                f"took out of {self.module} (so that line raises ImportError or AttributeError "
                f"when it runs, tested or not): change {self.path} to match, or keep "
                f"`{self.name}` in {self.module}")


def removed_definitions(patch: str) -> dict[str, set[str]]:
    """Per Python file of a unified diff, the names of the top-level classes, functions and
    assignments its removed lines defined (deleted files included)."""
    out: dict[str, set[str]] = {}
    current = ""
    for text in patch.splitlines():
        if text.startswith("--- "):
            current = text[6:] if text.startswith("--- a/") else ""
        elif current.endswith(".py") and (m := TOP_LEVEL_DEF.match(text)) \
                and not text.startswith("---"):
            out.setdefault(current, set()).add(m.group(1) or m.group(2))
    return out


def stale_uses(tree: Path, patch: str) -> list[Stale]:
    """Uses, in the other Python files of `tree` (tests left out: they are run), of a top-level
    name the change (`patch`) took out of a module: `from db import fetch_usr`, or `db.fetch_usr`
    after `import db`. A name the module still binds (or may bind: a star import, a module
    `__getattr__`) is not judged; links and files out of bounds are not read."""
    removed = removed_definitions(patch)
    root = tree.resolve()
    gone: dict[str, tuple[str, set[str]]] = {}  # import name -> (path, names gone)
    for path, defined in removed.items():
        f = tree / path
        if is_test_path(path) or f.is_symlink():
            continue
        if f.is_file() and f.resolve().is_relative_to(root):
            source = f.read_text(errors="replace")
            if DYNAMIC.search(source):
                continue
            try:
                still = _top_level_bound(ast.parse(source))
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                continue
            defined = defined - still
        if defined:
            gone[module_of(path)] = (path, defined)
    if not gone:
        return []
    found: list[Stale] = []
    for rel, f in python_files(tree):
        if is_test_path(rel):
            continue
        try:
            found += _uses(ast.parse(f.read_text(errors="replace")), rel, gone)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
    return sorted(found, key=lambda s: (s.path, s.line, s.name))


def _top_level_bound(tree: ast.Module) -> set[str]:
    """The names a module binds in its own scope: its top-level classes, functions, imports and
    assignments, in any block (`if`, `try`, `with`, `for`), and names a function declares
    `global`. A function's or a class's own names (its locals, its methods) are not."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for n in ast.iter_child_nodes(node):
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                out.add(n.name)
                continue  # its body binds names of its own scope
            if isinstance(n, ast.Lambda):
                continue
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                out.add(n.id)
            elif isinstance(n, ast.Import | ast.ImportFrom):
                out.update((a.asname or a.name).split(".")[0] for a in n.names)
            visit(n)

    visit(tree)
    return out | {name for n in ast.walk(tree) if isinstance(n, ast.Global) for name in n.names}


def _uses(tree: ast.Module, path: str, gone: dict[str, tuple[str, set[str]]]) -> list[Stale]:
    found: list[Stale] = []
    aliases: dict[str, str] = {}  # a name bound by `import db` (or `as`) -> its module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module in gone:
            where, names = gone[node.module]
            if where != path:
                found += [Stale(path, node.lineno, where, a.name) for a in node.names
                          if a.name in names]
        elif isinstance(node, ast.Import):
            aliases.update({a.asname or a.name: a.name for a in node.names if a.name in gone})
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases):
            where, names = gone[aliases[node.value.id]]
            if node.attr in names and where != path:
                found.append(Stale(path, node.lineno, where, node.attr))
    return found


def broken_by_change(tree: Path, patch: str) -> list[str]:
    """What the gate and the coder are told of the lines the change breaks whether or not a test
    runs them: reads of names nothing defines (`unbound_in_change`), then uses elsewhere of names
    the change took away (`stale_uses`); at most MAX_UNBOUND of each."""
    stale = [s.failure() for s in stale_uses(tree, patch)]
    if len(stale) > MAX_UNBOUND:
        stale = stale[:MAX_UNBOUND] + [f"... and {len(stale) - MAX_UNBOUND} more uses of names "
                                       "the change took away"]
    return failures(unbound_in_change(tree, patch)) + stale
