"""The functions a task asks to add, asked for alone when a reply changed nothing.

    [loop] rewrite_named = true      # with coder = "files"

Asked to "add two methods to `TodoList` in `todo.py`: `pending()` ... `clear_done()` ...",
Qwen2.5-Coder 0.5B answered with the path alone in a block, or gave todo.py back as it was, in
every round of every run: shown a whole file to change, a small model copies it. `rewrite_named`
asks for the functions a task names afresh, but these do not exist yet, so there was nothing to
ask for. Now, when a reply changes nothing and the task names no function the repository
defines, the functions it names as calls in backticks (`pending()`, `is_valid_email(email)`)
that no Python file of the repository defines are asked for alone: as methods of the class the
task names (`TodoList`), or else as functions of the file it names (`validate.py`). What comes
back goes at the end of that class's body, or of the file; the code is the model's, only its
place is the loop's.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_node import prompts
from agent_node.loop.pysource import blocks, parse, reindent, source_of
from agent_node.loop.rewrite import MAX_NAMED, REWRITE_TOKENS, Function, Rewritten, python_files
from agent_node.model import Model

CALLED = re.compile(r"`([A-Za-z_]\w*)\([^`]*\)`")  # `pending()`, `is_valid_email(email)`
NAMED = re.compile(r"`([A-Za-z_][\w.]*)`")


@dataclass(frozen=True)
class Wanted:
    """New functions to ask for: `names`, to go in `path`, as methods of `owner` ("": at top
    level)."""

    path: str
    owner: str
    names: tuple[str, ...]


def wanted(task: str, root: Path, paths: list[str]) -> Wanted | None:
    """The functions the task names as calls that no Python file of `paths` defines (as a
    function or a method of any class), and where they go: the first class the task names that
    one of those files defines, else the first of those files the task names; None when there
    are no such functions or no such place."""
    files = python_files(root, paths)
    defined = {n.name for tree in files.values() for n in _defs(tree)}
    names = tuple(n for n in dict.fromkeys(CALLED.findall(task)) if n not in defined)
    if not names:
        return None
    named = list(dict.fromkeys(NAMED.findall(task)))
    for name in named:
        for path, tree in files.items():
            if any(isinstance(n, ast.ClassDef) and n.name == name for n in tree.body):
                return Wanted(path, name, names[:MAX_NAMED])
    for name in named:
        if name in files:
            return Wanted(name, "", names[:MAX_NAMED])
    return None


def ask(model: Model, task: str, want: Wanted, source: str,
        sampling: dict[str, Any] | None = None) -> Rewritten:
    """Ask `model` for the new functions `want` names alone (greedy, or with `sampling`);
    `source` is the file as it is now."""
    prompt = prompts.render("loop/add_named", task=task, path=want.path, owner=want.owner,
                            names=want.names, source=source.rstrip("\n"))
    reply = model.chat([{"role": "user", "content": prompt}], max_tokens=REWRITE_TOKENS,
                       sampling=sampling)
    new = add(source, reply.text, want)
    what = ", ".join(f"`{n}`" for n in want.names)
    return Rewritten(want.path, want.names, reply, new,
                     "" if new else f"its reply has none of {what} as a function that compiles "
                                    f"and fits {want.path}")


def add(source: str, text: str, want: Wanted) -> str:
    """`source` with each of `want.names` that `text`'s code (its first fenced block that
    compiles and defines one) writes, at top level or in a class, put at the end of class
    `want.owner`'s body, or of the file; "" when it writes none or the file would not compile."""
    found: list[tuple[Function, list[str]]] = []
    for code in blocks(text):
        tree = parse(code)
        if tree is None:
            continue
        lines = code.splitlines()
        found = [(f, lines) for f in _defs(tree) if isinstance(f, Function)
                 and f.name in want.names]
        if found:
            break
    tree = parse(source)
    if not found or tree is None:
        return ""
    lines = source.rstrip("\n").splitlines()
    if want.owner:
        cls = next((n for n in tree.body if isinstance(n, ast.ClassDef)
                    and n.name == want.owner), None)
        if cls is None:
            return ""
        at, indent = cls.end_lineno or cls.lineno, cls.body[0].col_offset
    else:
        at, indent = len(lines), 0
    new: list[str] = []
    for f, code_lines in dict((f.name, (f, c)) for f, c in found).values():
        written = reindent(source_of(f, code_lines), f.col_offset, indent)
        new += [""] * (1 if want.owner else 2) + written.splitlines()
    lines[at:at] = new
    out = "\n".join(lines) + "\n"
    return out if parse(out) is not None else ""


def _defs(tree: ast.Module) -> list[ast.ClassDef | Function]:
    """The top-level classes and functions of `tree` and the methods of its classes."""
    out: list[ast.ClassDef | Function] = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef | Function):
            out.append(node)
        if isinstance(node, ast.ClassDef):
            out += [n for n in node.body if isinstance(n, Function)]
    return out
