"""Python source as the loop edits it for the coder: top-level statements found, read as
written and put in with PEP 8's blank lines (`keep` and `define` put the model's code back or in;
only its place is the loop's)."""

from __future__ import annotations

import ast

FENCE = "```"


def parse(source: str) -> ast.Module | None:
    """The module's tree; None when it does not compile."""
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def binds(node: ast.stmt) -> set[str]:
    """The names a class, function or assignment statement binds (none for others)."""
    if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        return {node.name}
    if isinstance(node, ast.Assign):
        return {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return {node.target.id}
    return set()


def source_of(node: ast.stmt, lines: list[str]) -> str:
    """A statement's source as written, its decorators included."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return "\n".join(lines[first - 1:node.end_lineno or node.lineno]).rstrip()


def is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
        and isinstance(node.value.value, str)


def top(tree: ast.Module) -> ast.stmt | None:
    """The module's docstring or the last of the imports at its top; None when it has neither."""
    last = None
    for i, stmt in enumerate(tree.body):
        if not (i == 0 and is_docstring(stmt) or isinstance(stmt, ast.Import | ast.ImportFrom)):
            break
        last = stmt
    return last


def put_after(content: str, tree: ast.Module, prev: ast.stmt | None, text: str, between: str,
              node: ast.stmt | None) -> str:
    """`content` (`tree`, its statements) with `text` (top-level statements; `node`, the one it
    holds, if one) after `prev` (None: at the top): `between` before it, PEP 8's gap after it."""
    lines = content.splitlines()
    at = 0 if prev is None else prev.end_lineno or prev.lineno
    following = next((stmt for stmt in tree.body if stmt.lineno > at), None)
    head = "\n".join(lines[:at]).rstrip("\n")
    tail = "\n".join(lines[at:]).strip("\n")
    if head:
        text = head + between + text
    if tail:
        text += gap(node, following) + tail
    return text + "\n"


def add_import(source: str, line: str) -> str:
    """`source` with the import statements `line` (one or more lines) after the imports at its
    top (after its docstring, when it has none); "" when either does not compile."""
    tree = parse(source)
    node = parse(line)
    if tree is None or node is None or not node.body:
        return ""
    prev = top(tree)
    between = "\n" if isinstance(prev, ast.Import | ast.ImportFrom) else "\n\n"
    return put_after(source, tree, prev, line, between, node.body[0])


def gap(before: ast.stmt | None, after: ast.stmt | None) -> str:
    """Two blank lines next to a class or function, one between other statements (PEP 8)."""
    return "\n\n\n" if is_block(before) or is_block(after) else "\n\n"


def is_block(node: ast.stmt | None) -> bool:
    return isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)


def first_block(text: str) -> str:
    """The code of a reply's first fenced block; the whole text when it has none."""
    start = text.find(FENCE)
    if start < 0:
        return text
    body = text[text.find("\n", start) + 1:] if "\n" in text[start:] else ""
    end = body.find(FENCE)
    return body if end < 0 else body[:end]


def blocks(text: str) -> list[str]:
    """The code of each of a reply's fenced blocks, in order; [text] when it has none."""
    out, rest = [], text
    while (start := rest.find(FENCE)) >= 0:
        line_end = rest.find("\n", start)
        if line_end < 0:
            break
        body = rest[line_end + 1:]
        end = body.find(FENCE)
        out.append(body if end < 0 else body[:end])
        if end < 0:
            break
        rest = body[end + len(FENCE):]
    return out or [text]


def reindent(source: str, was: int, now: int) -> str:
    """`source`'s lines moved from indent `was` to indent `now`, blank lines left blank."""
    if was == now:
        return source
    out = []
    for line in source.splitlines():
        lead = len(line) - len(line.lstrip(" "))
        out.append(" " * (max(0, lead - was) + now) + line[lead:] if line.strip() else "")
    return "\n".join(out)
