"""A name the coder's change reads that nothing defines, asked for alone and put in by the loop.

    [loop] define_missing = true      # with coder = "files"

On the task bench Qwen2.5-Coder 1.5B made `withdraw` raise an `InsufficientFunds` it never
defined, eight replies running, whatever the gate said and however it was asked: told to plan
first, its plan's first line was "Define `InsufficientFunds` as a subclass of `Exception`", and
the file it wrote next still had no such class. Asked for that one definition on its own, it
writes it. So when the tests are run on a files-form reply and the names check finds a read of
a name that no file of the repository defines (one another file defines is the coder's import
to write, and the message says which), the loop asks the coder's model for that definition
alone, takes from its reply the one top-level class, function or assignment that binds the
name, and puts it into the file after its docstring and imports. The code is the model's; only
its place is the loop's. The write goes through the `write` tool like any other, and the record
shows the call and the write.

The same holds for an attribute: asked for `Order.tax()` reading a new `tax_rate` field, it
wrote `self.subtotal() * self.tax_rate` and no field, twice (names.unset_attributes finds such
a read in a plain class that sets the attribute nowhere). It is asked for that one line of the
class body, which goes after the class's fields (else its docstring, else first).
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass

from agent_node import prompts
from agent_node.loop.names import Unbound, Unset
from agent_node.loop.pysource import (
    binds,
    first_block,
    gap,
    is_docstring,
    parse,
    put_after,
    source_of,
    top,
)
from agent_node.model import Model, Reply

MAX_ASKED = 3  # names asked for after one reply
DEFINITION_TOKENS = 400  # one definition's reply


@dataclass(frozen=True)
class Defined:
    """What one ask gave: the reply, and the file with the definition put in ("" if none)."""

    unbound: Unbound | Unset
    reply: Reply
    source: str  # the whole file with the definition in it; "" when the reply had none
    why: str = ""  # why nothing was put in


def ask(model: Model, task: str, unbound: Unbound | Unset, source: str) -> Defined:
    """Ask `model` for the definition of `unbound.name` alone (a module's name, or the
    attribute a class never sets); `source` is the file now."""
    where = {"task": task, "path": unbound.path, "source": source.rstrip("\n"),
             "line": unbound.line, "missing": unbound.name}
    prompt = (prompts.render("loop/define_member", owner=unbound.owner, **where)
              if isinstance(unbound, Unset) else prompts.render("loop/define_missing", **where))
    reply = model.chat([{"role": "user", "content": prompt}], max_tokens=DEFINITION_TOKENS)
    if isinstance(unbound, Unset):
        line = member_of(reply.text, unbound.owner, unbound.name)
        put = insert_member(source, unbound.owner, line) if line else ""
        if not put:
            return Defined(unbound, reply, "", f"its reply has no line defining "
                                                f"`{unbound.name}` that fits `{unbound.owner}`")
        return Defined(unbound, reply, put)
    definition = definition_of(reply.text, unbound.name)
    if not definition:
        return Defined(unbound, reply, "", f"its reply has no top-level definition of "
                                            f"`{unbound.name}` that compiles")
    return Defined(unbound, reply, insert(source, definition))


def definition_of(text: str, name: str) -> str:
    """The source of the top-level statement in `text`'s code (its first fenced block, or the
    whole text when there is none) that binds `name`: a class, a function (with its decorators)
    or an assignment. "" when there is none or the code does not compile."""
    code = first_block(text)
    tree = parse(code)
    node = next((n for n in tree.body if name in binds(n)), None) if tree is not None else None
    return "" if node is None else source_of(node, code.splitlines()) + "\n"


def insert(source: str, definition: str) -> str:
    """`source` with `definition` (one top-level statement) put in after the module's docstring,
    `from __future__` and import statements at its top, with PEP 8's blank lines."""
    tree = parse(source) or ast.Module(body=[], type_ignores=[])
    defined = parse(definition)
    node = defined.body[0] if defined is not None and defined.body else None
    prev = top(tree)
    return put_after(source, tree, prev, definition.strip("\n"), gap(prev, node), node)


def member_of(text: str, owner: str, name: str) -> str:
    """The source, unindented, of the statement in `text`'s code (its first fenced block, or the
    whole text) that binds `name` in class `owner`: at top level (the line alone) or in the body
    of a class `owner` the reply wrote out. "" when there is none or it does not compile."""
    code = textwrap.dedent(first_block(text))
    tree = parse(code)
    if tree is None:
        return ""
    lines = code.splitlines()
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == owner), None)
    for node in (cls.body if cls is not None else tree.body):
        if name in binds(node):
            return textwrap.dedent(source_of(node, lines)) + "\n"
    return ""


def insert_member(source: str, owner: str, member: str) -> str:
    """`source` with `member` (one statement, unindented) put in class `owner`'s body: after
    its last field or class attribute, else after its docstring, else first. "" when the file
    has no such class or would not compile with it."""
    tree = parse(source)
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == owner),
               None) if tree is not None else None
    if cls is None:
        return ""
    body = cls.body
    fields = [s for s in body if isinstance(s, ast.Assign | ast.AnnAssign)]
    after = fields[-1] if fields else body[0] if is_docstring(body[0]) else None
    lines = source.splitlines()
    at = (after.end_lineno or after.lineno) if after is not None else body[0].lineno - 1
    indent = " " * body[0].col_offset
    new = [indent + line if line.strip() else "" for line in member.rstrip("\n").splitlines()]
    parsed = parse(member)
    if parsed is not None and parsed.body and isinstance(parsed.body[0], ast.FunctionDef
                                                         | ast.AsyncFunctionDef):
        new = [""] + new if after is not None else new + [""]  # a blank line between methods
    lines[at:at] = new
    out = "\n".join(lines) + "\n"
    return out if parse(out) is not None else ""
