"""The task's own examples, run by the loop: a call or a command it writes out with a result.

    [loop] task_examples = true

    `mean([2, 4])` should be 3.0                       mean([2, 4]) == 3.0, from stats.py
    `slugify("Hello, World!")` is `"hello-world"`
    `parse_duration("1h30m")` returns 1800 instead of 5400 seconds        ... == 5400
    `python greet.py Ada --shout` prints `HELLO, ADA!`                 its output, stripped
    `decode(encode(s)) == s`, and `encode("aaab")` given   decode(encode("aaab")) == "aaab"

A user who writes "`f(x)` should be y" has written a test. A small coder's change can pass the
repository's tests and still get the task's own example wrong (the 0.5B kept `len(xs) - 1` in
mean_bug and added only the empty-list check); the loop checks the change against what the task
says, rather than take the coder's word that it is done.

Only what the task states plainly is taken, by rule, never by a model: a call in backticks to a
function that one source file of the repository defines at its top level, whose other names are
Python's builtins (so `paginate(list(range(10)), 1, 3)`, not `page_count(total, per_page)`),
followed by "should be", "should return", "is", "returns", "gives" or "prints" and a literal
(backticked or not); "returns A instead of B" expects B. A command is `python FILE ...` with
FILE a source file of the repository, and what it prints. An identity, `A == B` in backticks
over such functions and one variable (`decode(encode(s)) == s`), is checked for each argument
the task's other examples give the function applied to that variable (`encode("aaab")`).
An example the code already gives before the change is dropped (`usable`): it checks nothing
the task asks to change, and a misread sentence would otherwise fail a right change.

The examples run in the sandbox, in one process, on the tree under test; the code under test
runs inside it, so, like the test command, a hostile change could fake their result. They make
the verdict more honest, not the sandbox stronger.
"""

from __future__ import annotations

import ast
import builtins
import copy
import json
import re
import secrets
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from agent_node.loop.pysource import parse
from agent_node.sandbox import Sandbox

MAX_EXAMPLES = 8
FAILURE = "the task's example "  # how the gate's failure for one begins
TIMEOUT_S = 60.0
SHOWN_CHARS = 200  # of a result the model is shown
_TICKED = re.compile(r"`([^`\n]+)`")
_VERBS = (r"should\s+(?:be|return|give|print)|must\s+(?:be|return|give|print)|is|returns|gives"
          r"|prints|==|->|→")
# a literal after the verb: backticked, quoted, bracketed, a number, or True/False/None
_LITERAL = (r"`[^`\n]+`|\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|\[[^\]\n]*\]|\([^)\n]*\)"
            r"|\{[^}\n]*\}|-?\d+(?:\.\d+)?(?:e-?\d+)?|True|False|None")
_AFTER = re.compile(rf"\s*,?\s*(?:{_VERBS})\s+(?P<got>{_LITERAL})"
                    rf"(?:\s+(?:seconds?\s+)?instead\s+of\s+(?P<want>{_LITERAL}))?")
_BUILTINS = frozenset(dir(builtins))


@dataclass(frozen=True)
class Example:
    """One example: `call` (a Python expression, or a command line when `command`) and the
    result the task states, `expected` (a Python literal, or the text printed)."""

    text: str  # as the task writes the call, for the model and the record
    expected: str  # as the task writes the result
    module: str = ""  # the module that defines the function called ("" for a command)
    name: str = ""  # the function called
    command: bool = False
    more: tuple[tuple[str, str], ...] = ()  # other (module, function) an identity calls
    identity: bool = False  # `expected` is an expression too, evaluated with the call

    def describe(self) -> str:
        what = "prints" if self.command else "should give"
        where = f" (from {self.module.replace('.', '/')}.py)" if self.module else ""
        return f"`{self.text}`{where} {what} `{self.expected}`"


@dataclass(frozen=True)
class Outcome:
    example: Example
    holds: bool
    got: str  # repr of the result, the output, or what went wrong

    def failure(self) -> str:
        return (f"{FAILURE}{self.example.describe()}; it gave "
                f"`{self.got[:SHOWN_CHARS]}`")


def find(task: str, root: Path, sources: list[str]) -> list[Example]:
    """The examples `task` writes out for functions and scripts of `sources` (paths relative to
    `root`; test files are left out)."""
    defined = _defined_once(root, [p for p in sources if _is_source(p)])
    scripts = {p for p in sources if _is_source(p)}
    out: list[Example] = []
    for m in _TICKED.finditer(task):
        after = _AFTER.match(task, m.end())
        if after is None:
            continue
        result = _unticked(after.group("want") or after.group("got"))
        example = _call(m.group(1), result, defined) or _command(m.group(1), result, scripts)
        if example is not None and example not in out:
            out.append(example)
    for m in _TICKED.finditer(task):
        out += [e for e in _identity(m.group(1), out, defined) if e not in out]
    return out[:MAX_EXAMPLES]


def run(examples: list[Example], tree: Path, sandbox: Sandbox, *, timeout_s: float = TIMEOUT_S,
        read_only: list[Path] | None = None) -> list[Outcome]:
    """Each example run on the files in `tree`, in the sandbox, writing only there (but not to
    `read_only` inside it)."""
    if not examples:
        return []
    mark = f"studio-coder-examples-{secrets.token_hex(8)}:"
    done = sandbox.run([sys.executable, "-I", "-c", _script(examples, mark)], cwd=tree,
                       writable=[tree], read_only=read_only or [], timeout_s=timeout_s,
                       output_limit=64_000,
                       env={"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"})
    lines = [ln for ln in done.output.splitlines() if ln.startswith(mark)]
    try:
        results = json.loads(lines[-1][len(mark):]) if lines else None
    except json.JSONDecodeError:
        results = None
    if not isinstance(results, list) or len(results) != len(examples):
        why = (f"timed out after {timeout_s:.0f} s" if done.timed_out
               else f"exited {done.exit_code} before giving a result: "
               + done.output.strip()[-SHOWN_CHARS:])
        return [Outcome(e, False, f"the run {why}") for e in examples]
    return [Outcome(e, bool(r[0]), str(r[1])) for e, r in zip(examples, results, strict=True)]


def usable(examples: list[Example], tree: Path, sandbox: Sandbox, *,
           read_only: list[Path] | None = None) -> tuple[list[Example], list[Outcome]]:
    """(the examples to check changes against, the ones dropped because the code before the
    change already gives them)."""
    outcomes = run(examples, tree, sandbox, read_only=read_only)
    return [o.example for o in outcomes if not o.holds], [o for o in outcomes if o.holds]


def said(kept: list[Example], dropped: list[Outcome]) -> str:
    """What the record says of the task's examples: those checked on every change, and those
    left out because the code before the change gives them already (`usable`)."""
    out = ["the task's examples, checked on every change: "
           + ("; ".join(e.describe() for e in kept) if kept else "none")]
    if dropped:
        out.append("left out, as the code gives them already: "
                   + "; ".join(f"{o.example.describe()} (it gives `{o.got}`)" for o in dropped))
    return ". ".join(out)


def _call(text: str, result: str, defined: dict[str, str]) -> Example | None:
    try:
        tree = ast.parse(text, mode="eval")
        ast.literal_eval(result)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
        return None
    name = call.func.id
    others = {n.id for n in ast.walk(call) if isinstance(n, ast.Name)} - {name}
    if name not in defined or not others <= _BUILTINS:
        return None
    return Example(text, result, defined[name], name)


def _identity(text: str, found: list[Example], defined: dict[str, str]) -> list[Example]:
    """`decode(encode(s)) == s`, one example for each argument the calls in `found` give a
    function that the identity applies to its one variable alone (`encode("aaab")` found:
    `decode(encode("aaab"))` expected to give `"aaab"`)."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return []
    body = tree.body
    if not (isinstance(body, ast.Compare) and len(body.ops) == 1
            and isinstance(body.ops[0], ast.Eq)):
        return []
    calls = [n for n in ast.walk(body) if isinstance(n, ast.Call)]
    called = {c.func.id for c in calls if isinstance(c.func, ast.Name)}
    if len(called) != len(calls) or not called or not called <= defined.keys():
        return []
    free = {n.id for n in ast.walk(body) if isinstance(n, ast.Name)} - called - _BUILTINS
    if len(free) != 1:
        return []
    (var,) = free
    applied = {c.func.id for c in calls if isinstance(c.func, ast.Name) and not c.keywords
               and len(c.args) == 1 and isinstance(c.args[0], ast.Name) and c.args[0].id == var}
    names = sorted(called)
    out = []
    for e in found:
        if e.command or e.identity or e.name not in applied:
            continue
        arg = ast.parse(e.text, mode="eval").body
        if not (isinstance(arg, ast.Call) and len(arg.args) == 1 and not arg.keywords):
            continue
        filled = _Fill(var, arg.args[0]).visit(copy.deepcopy(body))
        out.append(Example(ast.unparse(filled.left), ast.unparse(filled.comparators[0]),
                           defined[names[0]], names[0],
                           more=tuple((defined[n], n) for n in names[1:]), identity=True))
    return out


class _Fill(ast.NodeTransformer):
    def __init__(self, name: str, value: ast.expr) -> None:
        self.name, self.value = name, value

    def visit_Name(self, node: ast.Name) -> ast.expr:
        return self.value if node.id == self.name else node


def _command(text: str, result: str, scripts: set[str]) -> Example | None:
    try:
        words = shlex.split(text)
    except ValueError:
        return None
    if len(words) < 2 or words[0] not in ("python", "python3") or words[1] not in scripts:
        return None
    return Example(text, result, command=True)


def _defined_once(root: Path, paths: list[str]) -> dict[str, str]:
    """{function name: module} for the top-level functions exactly one of `paths` defines."""
    seen: dict[str, list[str]] = {}
    for path in paths:
        f = root / path
        if not path.endswith(".py") or f.is_symlink() or not f.is_file():
            continue
        tree = parse(f.read_text(errors="replace"))
        for node in tree.body if tree is not None else []:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                seen.setdefault(node.name, []).append(path.removesuffix(".py").replace("/", "."))
    return {name: mods[0] for name, mods in seen.items() if len(set(mods)) == 1}


def _is_source(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return not (path.startswith("tests/") or "/tests/" in path or name.startswith("test_")
                or name.endswith("_test.py") or name == "conftest.py")


def _unticked(text: str) -> str:
    return text[1:-1] if text.startswith("`") and text.endswith("`") else text


def _script(examples: list[Example], mark: str) -> str:
    """A Python program printing, after `mark`, [[holds, what it gave], ...]."""
    cases = [[e.command, [[e.module, e.name], *e.more], e.text, e.expected, e.identity]
             for e in examples]
    return f"""\
import ast, importlib, json, math, shlex, subprocess, sys
sys.path.insert(0, ".")
out = []
for command, names, text, expected, identity in {cases!r}:
    try:
        if command:
            words = shlex.split(text)
            done = subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True,
                                  timeout=30)
            got = done.stdout.strip()
            ok = got == expected.strip()
            if not ok and done.returncode:
                got += " (exit %d) " % done.returncode + done.stderr.strip()[-300:]
        else:
            functions = {{name: getattr(importlib.import_module(module), name)
                          for module, name in names}}
            value = eval(text, dict(functions))
            want = eval(expected, dict(functions)) if identity else ast.literal_eval(expected)
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                          for v in (value, want))
            ok = (math.isclose(value, want, rel_tol=1e-6, abs_tol=1e-9) if numbers
                  else value == want)
            got = repr(value)
    except BaseException as e:
        ok, got = False, "raised %s: %s" % (type(e).__name__, e)
    out.append([bool(ok), got[:1000]])
print({mark!r} + json.dumps(out))
"""
