"""What a whole-file reply left out of a Python file, and the task never named, put back.

    [loop] keep_definitions = true      # with coder = "files"

Asked to add two methods to `TodoList`, Qwen2.5-Coder 1.5B wrote them where `__len__` had been,
and gave the same file back for two rounds while the tests said "object of type 'TodoList' has
no len()". Asked for `is_valid_email`, it rewrote validate.py without `USERNAME_CHARS`, which
`is_valid_username` still reads. A small model rewriting a whole file drops what it was not
thinking about. So before a files-form reply's file is written, each top-level class, function
or assignment the file had, each method (or class attribute) of a class the reply still has,
and the module's docstring, that the reply left out is put back as it was, unless:
- the task names it (a word of the task: "rename `fetch_user`", "remove `legacy`"),
- the reply binds that name some other way (an import, another assignment), or
- another file of the same reply defines it (a move, which the names check then holds to its
  import).
A definition goes back after the one it followed in the old file (the nearest one the reply
kept), or, with none, after the docstring and imports (top level) or at the end of its class;
re-indented to the class as the reply wrote it. Then a name the old file imported, which the file
now reads and no longer imports, is imported again as before. So a reply that gives only the
function it adds, under the file's path, keeps the file around it. When the file with everything
put back would not compile, the reply's file is written as it came. The code is the user's; only
its place is the loop's, and the coder is told what was put back.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from agent_node.loop.pysource import (
    add_import,
    binds,
    gap,
    is_docstring,
    parse,
    put_after,
    source_of,
    top,
)


@dataclass(frozen=True)
class Kept:
    """A reply's file with what it left out put back."""

    content: str
    names: tuple[str, ...]  # what went back: "USERNAME_CHARS", "TodoList.__len__", "docstring"


def put_back(old: str, new: str, task: str, elsewhere: frozenset[str] = frozenset()) -> Kept:
    """`new` (a reply's whole file) with what `old` (the file now) had and `new` left out put
    back; `elsewhere`: names the reply's other files define at top level."""
    old_tree, new_tree = parse(old), parse(new)
    if old_tree is None or new_tree is None:
        return Kept(new, ())
    named = set(re.findall(r"\w+", task))
    old_lines = old.splitlines()
    content, names = new, []
    docstring = _docstring(old_tree, old_lines)
    if docstring and not _docstring(new_tree, new.splitlines()):
        content = docstring + "\n\n" + content.lstrip("\n")
        names.append("docstring")
    tree = parse(content)  # parsed again only after something is put in
    bound = _bound_at(tree.body) if tree is not None else set()
    for node in old_tree.body:  # top level, in the old file's order
        if tree is None:
            return Kept(new, ())
        gone = binds(node)
        if gone and not gone & (bound | named | elsewhere):
            content = _insert_top(content, tree, old_tree, node, old_lines)
            names.append(", ".join(sorted(gone)))
            tree = parse(content)
            bound |= gone
        elif isinstance(node, ast.ClassDef) and node.name in bound:
            for member in node.body:
                cls = _class(tree, node.name) if tree is not None else None
                if cls is None:
                    break
                gone = binds(member)
                if gone and not gone & (_bound_at(cls.body) | named):
                    content = _insert_member(content, cls, node, member, old_lines)
                    names.append(", ".join(f"{node.name}.{n}" for n in sorted(gone)))
                    tree = parse(content)
    if tree is not None:  # then the imports of what the file now reads and no longer imports
        content, imported = _put_imports_back(content, tree, old_tree)
        names += imported
    if not names or parse(content) is None:
        return Kept(new, ())
    return Kept(content, tuple(names))


def _put_imports_back(content: str, tree: ast.Module,
                      old_tree: ast.Module) -> tuple[str, list[str]]:
    """`content` with each name the old file imported at top level, the new one no longer binds
    and still reads, imported again as the old file did, after the new file's own imports."""
    bound = _bound_at(tree.body)
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
            and isinstance(n.ctx, ast.Load)}
    statements, names = [], []
    for node in old_tree.body:
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        wanted = [a for a in node.names if a.name != "*"
                  and (a.asname or a.name).split(".")[0] in read - bound]
        if not wanted:
            continue
        aliases = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in wanted)
        statements.append(f"import {aliases}" if isinstance(node, ast.Import) else
                          f"from {'.' * node.level}{node.module or ''} import {aliases}")
        names += [(a.asname or a.name).split(".")[0] for a in wanted]
        bound |= set(names)
    if not statements:
        return content, []
    return add_import(content, "\n".join(statements)) or content, [f"import {n}" for n in names]


def top_level_names(source: str) -> frozenset[str]:
    """The names a module defines at top level (classes, functions, assignments)."""
    tree = parse(source)
    return frozenset() if tree is None else frozenset(
        n for node in tree.body for n in binds(node))


def _insert_top(content: str, tree: ast.Module, old_tree: ast.Module, node: ast.stmt,
                old_lines: list[str]) -> str:
    prev = _kept_before(old_tree.body, node, tree.body) or top(tree)
    return put_after(content, tree, prev, source_of(node, old_lines), gap(prev, node), node)


def _insert_member(content: str, cls: ast.ClassDef, old_cls: ast.ClassDef, member: ast.stmt,
                   old_lines: list[str]) -> str:
    lines = content.splitlines()
    source = _reindent(source_of(member, old_lines), member.col_offset,
                       cls.body[0].col_offset).splitlines()
    if len(cls.body) == 1 and _is_pass(cls.body[0]):  # the reply's body is only `pass`
        lines[cls.body[0].lineno - 1:cls.body[0].end_lineno or cls.body[0].lineno] = source
        return "\n".join(lines) + "\n"
    after = _kept_before(old_cls.body, member, cls.body) or cls.body[-1]
    at = after.end_lineno or after.lineno
    blank = [""] if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef) else []
    lines[at:at] = blank + source
    return "\n".join(lines) + "\n"


def _kept_before(old_body: list[ast.stmt], node: ast.stmt,
                 new_body: list[ast.stmt]) -> ast.stmt | None:
    """The statement of `new_body` that binds what the nearest definition before `node` in
    `old_body` bound (the one the reply kept); None when there is none."""
    for prev in reversed(old_body[:old_body.index(node)]):
        names = binds(prev)
        for stmt in new_body:
            if names and names & binds(stmt):
                return stmt
    return None


def _reindent(source: str, was: int, now: int) -> str:
    """A member's lines moved from a class body indented `was` to one indented `now`: each
    indent level as the reply's (4 -> 2: 8 -> 4), a continuation line shifted as its first."""
    if was == now or was == 0:
        return source
    out = []
    for line in source.splitlines():
        lead = len(line) - len(line.lstrip(" "))
        moved = lead * now // was if lead % was == 0 else lead + now - was
        out.append(" " * moved + line[lead:] if line.strip() else line)
    return "\n".join(out)


def _bound_at(body: list[ast.stmt]) -> set[str]:
    """Every name a body binds: its definitions and its imports."""
    names = set()
    for node in body:
        names |= binds(node)
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _class(tree: ast.Module, name: str) -> ast.ClassDef | None:
    return next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)


def _docstring(tree: ast.Module, lines: list[str]) -> str:
    """The module docstring's source as written; "" when there is none."""
    return source_of(tree.body[0], lines) if tree.body and is_docstring(tree.body[0]) else ""


def _is_pass(node: ast.stmt) -> bool:
    return isinstance(node, ast.Pass) or (isinstance(node, ast.Expr)
                                          and isinstance(node.value, ast.Constant)
                                          and node.value.value is Ellipsis)
