"""The functions a task names, written afresh from their signatures when a reply changed nothing.

    [loop] rewrite_named = true      # with coder = "files"

Asked to fix `paginate` and `page_count` in pages.py, Qwen2.5-Coder 1.5B gave the file back as
it was, four times over two rounds, told each time that nothing had changed: shown the code, a
small model copies it. Shown the same file with those two functions' bodies left out (their
signatures and docstrings kept) and asked to write them, it wrote both right at once. So when a
files-form reply changes nothing, the functions the task names in backticks (`paginate`,
`Registry.register`) that a Python file of the repository defines are asked for alone, that way,
once a round; what comes back replaces each function where it was, re-indented to its place,
and the round goes on to the tests. The code is the model's; only its place is the loop's.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_node import prompts
from agent_node.loop.pysource import blocks, is_docstring, parse, reindent, source_of
from agent_node.model import Model, Reply

MAX_NAMED = 3  # functions asked for at once
REWRITE_TOKENS = 1200  # the reply's bound: a few whole functions
NAMED = re.compile(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)(?:\([^`]*\))?`")
Function = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True)
class Rewritten:
    """What one ask gave: the reply, and the file with the functions replaced ("" if none)."""

    path: str
    names: tuple[str, ...]
    reply: Reply
    source: str
    why: str = ""  # why nothing was replaced


def named_functions(task: str, root: Path, paths: list[str]) -> tuple[str, tuple[str, ...]]:
    """The first Python file of `paths` (tests left out) that defines functions the task names
    in backticks, and those names (`name` or `Class.method`; a bare `deposit` that one class
    defines is `Account.deposit`); ("", ()) when there is none."""
    wanted = list(dict.fromkeys(NAMED.findall(task)))
    for path, tree in python_files(root, paths).items():
        found = list(dict.fromkeys(q for n in wanted if (q := _qualified(tree, n))))
        if found:
            return path, tuple(found[:MAX_NAMED])
    return "", ()


def _qualified(tree: ast.Module, name: str) -> str:
    """`name` as `tree` defines it: a top-level function or `Class.method` as given, or a bare
    method name (`deposit`) that exactly one top-level class defines, as `Class.method`; ""
    when it defines none."""
    if _function(tree, name) is not None:
        return name
    if "." in name:
        return ""
    owners = [n.name for n in tree.body if isinstance(n, ast.ClassDef)
              and _function(tree, f"{n.name}.{name}") is not None]
    return f"{owners[0]}.{name}" if len(owners) == 1 else ""


def function_sources(source: str, names: tuple[str, ...]) -> dict[str, str]:
    """The source of each of `names` (`name` or `Class.method`) that `source` defines, as
    written, by name."""
    tree = parse(source)
    lines = source.splitlines()
    return {n: source_of(f, lines) for n in names
            if tree is not None and (f := _function(tree, n)) is not None}


def python_files(root: Path, paths: list[str]) -> dict[str, ast.Module]:
    """The Python files of `paths` that compile, tests left out, by path in their order; links
    and files out of bounds are not read."""
    out: dict[str, ast.Module] = {}
    for path in dict.fromkeys(paths):
        name = path.rsplit("/", 1)[-1]
        if not path.endswith(".py") or name.startswith("test_") or path.startswith("tests/"):
            continue
        f = root / path
        if f.is_symlink() or not f.resolve().is_relative_to(root.resolve()) or not f.is_file():
            continue
        tree = parse(f.read_text(errors="replace"))
        if tree is not None:
            out[path] = tree
    return out


def blanked(source: str, names: tuple[str, ...], others: bool = False) -> str:
    """`source` with each named function's body left out: its docstring, if any, then `...`;
    with `others`, every other function's and method's body too."""
    tree = parse(source)
    if tree is None:
        return source
    lines = source.splitlines()
    found = [f for n in names if (f := _function(tree, n)) is not None]
    if others:
        found += [f for f in _functions(tree) if f not in found]
    for f in sorted(found, key=lambda f: f.lineno, reverse=True):  # bottom up: lines stay put
        body = f.body[1:] if is_docstring(f.body[0]) and len(f.body) > 1 else f.body
        if body is f.body and is_docstring(f.body[0]):
            continue  # only a docstring: nothing to leave out
        first, last = body[0].lineno, f.end_lineno or f.lineno
        lines[first - 1:last] = [" " * body[0].col_offset + "..."]
    return "\n".join(lines) + "\n"


def ask(model: Model, task: str, path: str, names: tuple[str, ...], source: str,
        sampling: dict[str, Any] | None = None, wrong: list[str] | None = None) -> Rewritten:
    """Ask `model` to write the functions `names` of `path` (now `source`) afresh (greedy, or
    with `sampling`); `wrong`: the task's examples the code as it is gets wrong, said too, and
    then the bodies of the file's other functions are left out as well: shown the wrong
    `f_to_c` blanked beside `c_to_f` whole, the 0.5B wrote `c_to_f`'s body into it, greedy and
    sampled alike, and wrote the conversion right once `c_to_f`'s body was left out too."""
    prompt = prompts.render("loop/rewrite_named", task=task, path=path,
                            source=blanked(source, names, others=bool(wrong)).rstrip("\n"),
                            names=names, wrong=wrong or [])
    reply = model.chat([{"role": "user", "content": prompt}], max_tokens=REWRITE_TOKENS,
                       sampling=sampling)
    new = splice(source, reply.text, names)
    if not new:
        what, put = ", ".join(f"`{n}`" for n in names), _put_in(source, reply.text, names)
        why = (f"its reply has none of {what} as a function that compiles" if put is None
               else f"its reply gave {what} back as they are" if put == source
               else f"{path} would not compile with its {what}")
        return Rewritten(path, names, reply, "", why)
    return Rewritten(path, names, reply, new)


def splice(source: str, text: str, names: tuple[str, ...]) -> str:
    """`source` with each of `names` that `text`'s code (its first fenced block that compiles
    and defines one of them) defines put in place of the function of that name, re-indented to
    it; "" when none is, when that changes nothing, or when the file would not compile. The 0.5B
    put the file's path in a block of its own before the code."""
    out = _put_in(source, text, names)
    return out if out is not None and out != source and parse(out) is not None else ""


def _put_in(source: str, text: str, names: tuple[str, ...]) -> str | None:
    """`source` with the functions `text` writes put in (see `splice`); None when it writes
    none of them."""
    code, written = next(((code, tree) for code in blocks(text)
                          if (tree := parse(code)) is not None
                          and any(_function(tree, n) or _function(tree, n.rsplit(".", 1)[-1])
                                  for n in names)), ("", None))
    if written is None:
        return None
    out = source
    for name in names:
        new = _function(written, name) or _function(written, name.rsplit(".", 1)[-1])
        tree = parse(out)
        old = _function(tree, name) if tree is not None else None
        if new is None or old is None:
            continue
        text_new = reindent(source_of(new, code.splitlines()), new.col_offset, old.col_offset)
        lines = out.splitlines()
        first = min([old.lineno] + [d.lineno for d in old.decorator_list])
        lines[first - 1:old.end_lineno or old.lineno] = text_new.splitlines()
        out = "\n".join(lines) + "\n"
    return out


def _functions(tree: ast.Module) -> list[Function]:
    """The top-level functions of `tree` and the methods of its top-level classes."""
    out: list[Function] = []
    for node in tree.body:
        body = node.body if isinstance(node, ast.ClassDef) else [node]
        out += [n for n in body if isinstance(n, Function)]
    return out


def _function(tree: ast.Module, name: str) -> Function | None:
    """The top-level function `name`, or the method `Class.method` of a top-level class."""
    owner, _, attr = name.rpartition(".")
    body: list[ast.stmt] = tree.body
    if owner:
        cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == owner),
                   None)
        if cls is None:
            return None
        body = cls.body
    return next((n for n in body if isinstance(n, Function) and n.name == attr), None)
