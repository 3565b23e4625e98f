"""A rename the change made, carried to the uses it missed.

    [loop] define_missing = true      # with coder = "files"

Asked to rename `fetch_usr` to `fetch_user` everywhere, Qwen2.5-Coder 0.5B renamed it in db.py
and api.py and gave report.py back as it was, still calling `db.fetch_usr`, told by the names
check (stale.stale_uses) that the line fails. Which name is now which is the model's decision,
written in its own change: a line that removed `def fetch_usr(user_id: int) -> dict | None:`
and a line that added the same `def` under the new name, in one module. So when the checks
fail and a file still uses a name the change renamed that way, the loop writes the new name in
its place, at exactly those uses (`db.fetch_usr`, `from db import fetch_usr` and the module's
reads of the name that import binds), as an editor's rename would. Nothing else is touched.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent_node.events import Note
from agent_node.loop.names import module_of
from agent_node.loop.stale import Stale, stale_uses

DEF = re.compile(r"^([-+])((?:async\s+)?def|class)\s+([A-Za-z_]\w*)(.*)$")


def renames(patch: str) -> dict[str, dict[str, str]]:
    """Per Python file of a unified diff, {old: new} for each top-level `def` or `class` line it
    removed whose twin it added with only the name changed."""
    out: dict[str, dict[str, str]] = {}
    current = ""
    removed: dict[tuple[str, str], str] = {}  # (keyword, rest of the line) -> old name
    added: list[tuple[str, str, str]] = []
    for line in patch.splitlines() + ["--- end"]:
        if line.startswith("--- "):
            for keyword, rest, new in added:
                old = removed.get((keyword, rest))
                if old and old != new:
                    out.setdefault(current, {})[old] = new
            current = line[6:] if line.startswith("--- a/") else ""
            removed, added = {}, []
            continue
        m = DEF.match(line)
        if m and current.endswith(".py") and not line.startswith(("---", "+++")):
            sign, keyword, name, rest = m.groups()
            if sign == "-":
                removed[(keyword, rest)] = name
            else:
                added.append((keyword, rest, name))
    return out


def carry(tree: Path, patch: str, emit: Callable[[Any], object], round_no: int) -> str:
    """Write the new name at each use `stale_uses` finds of a name the change renamed
    (`renames`); what the coder is told, one line per file ("" when none was carried)."""
    renamed = {module_of(path): names for path, names in renames(patch).items()}
    by_file: dict[str, list[Stale]] = {}
    for s in stale_uses(tree, patch):
        if s.name in renamed.get(module_of(s.module), {}):
            by_file.setdefault(s.path, []).append(s)
    said = []
    for path, uses in by_file.items():
        f = tree / path
        module = module_of(uses[0].module)
        source = f.read_text(errors="replace")
        new = _renamed(source, module, renamed[module])
        if not new or new == source:
            continue
        f.write_text(new)
        what = ", ".join(sorted({f"`{s.name}` -> `{renamed[module][s.name]}`" for s in uses}))
        emit(Note(text=f"{path} still used names the change renamed in {uses[0].module} "
                  f"({what}); the new names put in at those uses", round=round_no))
        said.append(f"{path}: it still used {what} renamed in {uses[0].module}; the new "
                    f"names are now in {path}. Keep them when you write the file again.")
    return "\n".join(said)


def _renamed(source: str, module: str, names: dict[str, str]) -> str:
    """`source` with the uses of `module`'s renamed `names` renamed: `module.old` after `import
    module`, `from module import old` and the reads that import binds; "" if it does not
    compile."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ""
    spots: list[tuple[int, int, int, str]] = []  # (line, start col, end col, new name)
    aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
               for a in n.names if a.name == module}
    imported: dict[str, str] = {}  # a name `from module import old` binds -> the new name
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module == module:
            for a in node.names:
                if a.name in names:
                    spots += _word(source, node, a.name, names[a.name])
                    if a.asname is None:
                        imported[a.name] = names[a.name]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id in aliases and node.attr in names
              and node.end_lineno == node.lineno and node.end_col_offset is not None):
            end = node.end_col_offset
            spots.append((node.lineno, end - len(node.attr), end, names[node.attr]))
    if imported:
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id in imported and node.end_col_offset:
                spots.append((node.lineno, node.col_offset, node.end_col_offset,
                              imported[node.id]))
    lines = source.splitlines(keepends=True)
    for line, start, end, new in sorted(set(spots), reverse=True):  # right to left
        text = lines[line - 1].encode()
        lines[line - 1] = (text[:start] + new.encode() + text[end:]).decode()
    return "".join(lines)


def _word(source: str, node: ast.ImportFrom, name: str,
          new: str) -> list[tuple[int, int, int, str]]:
    """Where `name` stands in the import statement `node` (the first whole word of it after
    `import`, on whichever of its lines)."""
    lines = source.splitlines()
    for n in range(node.lineno, (node.end_lineno or node.lineno) + 1):
        text = lines[n - 1].encode()
        after = text.find(b" import ") + 8 if n == node.lineno else 0
        m = re.compile(rb"(?<![\w.])" + re.escape(name.encode()) + rb"(?!\w)").search(text,
                                                                                    after)
        if m:
            return [(n, m.start(), m.end(), new)]
    return []
