"""Names a change reads that nothing defines, found by Python's own compiler before any test runs.

A small model's fix often raises an exception or calls a helper it never wrote. When no test
reaches that line the tests pass, and the change fails the first time the line runs: on the task
bench, Qwen2.5-Coder 1.5B made `withdraw` raise an `InsufficientFunds` it never defined, and the
visible tests, which never overdraw, passed it.

Only what the compiler can see is judged. A module that binds names where it cannot (a star
import, `globals()`, `exec`, a module `__getattr__`) is not checked at all, nor is one that does
not compile (the tests report that), and only names on lines the change added are reported.

`unset_attributes` finds the same mistake one level down: a method reading `self.tax_rate` in a
class that sets `tax_rate` nowhere. It is not a gate failure (code outside the class may set
it); with `[loop] define_missing` the files coder asks for it (define.py).

The same mistake across files (a change that takes `fetch_usr` out of db.py while report.py
still calls `db.fetch_usr`) is found in stale.py, which also holds `broken_by_change`, what the
gate is told of both. This module holds the reads of undefined names and the helpers both use.
"""

from __future__ import annotations

import ast
import builtins
import re
import symtable
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent_node.loop.context import is_test_path

MODULE_NAMES = frozenset({"__name__", "__file__", "__doc__", "__builtins__", "__spec__",
                          "__loader__", "__package__", "__path__", "__annotations__",
                          "__dict__", "__debug__", "__cached__", "__all__"})
DYNAMIC = re.compile(r"\bimport\s+\*|\bglobals\s*\(|\bvars\s*\(\s*\)|\bexec\s*\(|"
                     r"^def __getattr__\b|\b__builtins__\b|\bbuiltins\.\w+\s*=", re.M)
HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@")


MAX_UNBOUND = 8  # reads of undefined names listed for one change
# How each failure this module and stale.py report begins ("calc.py:7 reads `x`",
# "report.py:9 uses `f`")
FAILURE = re.compile(r"^\S+:\d+ (?:reads|uses) `")
# Names a model reads without their import, and the standard library module each comes from
# (the 0.5B wrote `Counter(words)` and no import; asked to define it, it wrote a class Counter).
# Only names that one module is known for: `count` or `choice` could be anything.
STDLIB_EXPORTS = {
    **dict.fromkeys(("Counter", "defaultdict", "OrderedDict", "deque", "namedtuple",
                     "ChainMap"), "collections"),
    **dict.fromkeys(("dataclass", "asdict", "astuple"), "dataclasses"),
    **dict.fromkeys(("Any", "Optional", "Union", "List", "Dict", "Tuple", "Callable",
                     "Iterable", "Iterator", "Sequence", "Mapping", "TypeVar", "Generic",
                     "Protocol", "NamedTuple", "TypedDict", "Literal"), "typing"),
    "Path": "pathlib",
    **dict.fromkeys(("datetime", "timedelta", "timezone"), "datetime"),
    **dict.fromkeys(("Decimal", "ROUND_HALF_UP", "ROUND_HALF_EVEN"), "decimal"),
    "Fraction": "fractions",
    **dict.fromkeys(("reduce", "partial", "lru_cache", "wraps", "total_ordering",
                     "cached_property"), "functools"),
    **dict.fromkeys(("groupby", "islice", "zip_longest", "permutations", "combinations"),
                    "itertools"),
    **dict.fromkeys(("Enum", "IntEnum", "auto"), "enum"),
    **dict.fromkeys(("ABC", "abstractmethod"), "abc"),
    "contextmanager": "contextlib",
    "deepcopy": "copy",
    **dict.fromkeys(("heappush", "heappop", "heapify"), "heapq"),
    **dict.fromkeys(("bisect_left", "bisect_right", "insort"), "bisect"),
    **dict.fromkeys(("itemgetter", "attrgetter"), "operator"),
    **dict.fromkeys(("ascii_lowercase", "ascii_uppercase", "ascii_letters"), "string"),
    "dedent": "textwrap",
}
MAX_SCANNED = 500  # Python files searched for where a missing name is defined
MAX_SCANNED_BYTES = 200_000
SKIPPED_DIRS = frozenset({"node_modules", "site-packages", "venv", "__pycache__"})


@dataclass(frozen=True)
class Unbound:
    path: str
    line: int
    name: str
    defined_in: tuple[str, ...] = ()  # the repository's modules that define it at top level

    @property
    def stdlib(self) -> bool:
        """A module of Python's standard library (`re`, `json`): its import is the fix."""
        return self.name in sys.stdlib_module_names and not self.defined_in

    def import_line(self) -> str:
        """The one import that binds the name, when there is one to write: from the one
        module of the repository that defines it (tests left out), of a standard library
        module, or of a name a standard library module is known for; "" otherwise."""
        homes = [p for p in self.defined_in if not is_test_path(p)]
        if len(homes) == 1:
            return f"from {module_of(homes[0])} import {self.name}"
        if self.defined_in:
            return ""
        if self.stdlib:
            return f"import {self.name}"
        module = STDLIB_EXPORTS.get(self.name)
        return f"from {module} import {self.name}" if module else ""

    def failure(self) -> str:
        where = (f"; `{self.name}` is defined in {', '.join(self.defined_in)}: import it from "
                 f"there (`from {module_of(self.defined_in[0])} import {self.name}`)"
                 if self.defined_in else
                 f"; `{self.name}` is a module of Python's standard library: `import {self.name}`"
                 if self.stdlib else f"; define or import `{self.name}`")
        return (f"{self.path}:{self.line} reads `{self.name}`, which {self.path} never defines or "
                f"imports (Python's compiler finds no binding for it, so that line raises "
                f"NameError when it runs, tested or not){where}")


@dataclass(frozen=True)
class Unset:
    """A read of `self.<name>` in a method of class `owner` that the class never sets."""

    path: str
    line: int
    owner: str
    name: str


def module_of(path: str) -> str:
    """The import name of a repository file: pkg/errors.py -> pkg.errors."""
    parts = path[:-3].split("/") if path.endswith(".py") else path.split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def undefined_names(source: str, filename: str = "<module>") -> list[tuple[str, int]]:
    """(name, line) of each read of a global name that the module never binds, imports or has
    from builtins, in line order; [] when it does not compile, binds names dynamically or is
    nested deeper than the compiler or this walk can go (the model's file is hostile input)."""
    if DYNAMIC.search(source):
        return []
    try:
        return _undefined(source, filename)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []


def _undefined(source: str, filename: str) -> list[tuple[str, int]]:
    top = symtable.symtable(source, filename, "exec")
    tree = ast.parse(source, filename)
    bound = set(MODULE_NAMES) | set(dir(builtins))
    read: set[str] = set()
    tables = [top]
    while tables:
        table = tables.pop()
        tables.extend(table.get_children())
        module = table is top
        for sym in table.get_symbols():
            name = sym.get_name()
            if module and (sym.is_assigned() or sym.is_imported() or sym.is_namespace()):
                bound.add(name)
            elif sym.is_declared_global() and sym.is_assigned():
                bound.add(name)  # `global x` then `x = ...` in a function
            if sym.is_referenced() and (sym.is_global() or module):
                read.add(name)
    missing = read - bound
    if not missing:
        return []
    keys: dict[tuple[str, int], list[symtable.SymbolTable]] = {}
    tables = list(top.get_children())
    while tables:
        table = tables.pop()
        tables.extend(table.get_children())
        keys.setdefault((table.get_name(), table.get_lineno()), []).append(table)
    found: set[tuple[str, int]] = set()

    def visit(node: ast.AST, chain: list[symtable.SymbolTable | None]) -> None:
        for child in ast.iter_child_nodes(node):
            scope = _scope_name(child)
            if scope:
                match = keys.get((scope, getattr(child, "lineno", 0)), [])
                visit(child, [*chain, match[0] if len(match) == 1 else None])
                continue
            if (isinstance(child, ast.Name) and isinstance(child.ctx, ast.Load)
                    and child.id in missing and _reads_global(chain, child.id)):
                found.add((child.id, child.lineno))
            visit(child, chain)

    visit(tree, [top])
    return sorted(found, key=lambda x: (x[1], x[0]))


def _scope_name(node: ast.AST) -> str:
    """The name symtable gives the scope `node` opens, or "" when it opens none."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return node.name
    return {ast.Lambda: "lambda", ast.ListComp: "listcomp", ast.SetComp: "setcomp",
            ast.DictComp: "dictcomp", ast.GeneratorExp: "genexpr"}.get(type(node), "")


def _reads_global(chain: list[symtable.SymbolTable | None], name: str) -> bool:
    """Whether `name` read in the innermost scope of `chain` resolves to the module's globals.
    A scope without the name (a default or decorator is read in the scope around it) defers to
    the one around it; a scope that could not be matched is not judged."""
    for table in reversed(chain):
        if table is None:
            return False
        try:
            sym = table.lookup(name)
        except KeyError:
            continue
        return sym.is_global() or table.get_type() == "module"
    return False


def added_lines(patch: str) -> dict[str, set[int]]:
    """Per file of a unified diff (`git diff`), the line numbers its added lines have now."""
    out: dict[str, set[int]] = {}
    current: set[int] | None = None
    line = 0
    for text in patch.splitlines():
        if text.startswith("+++ "):
            target = text[4:]
            current = out.setdefault(target[2:], set()) if target.startswith("b/") else None
        elif text.startswith("@@"):
            m = HUNK.match(text)
            line = int(m.group(1)) if m else 0
        elif current is None or text.startswith(("---", "diff ", "index ")):
            continue
        elif text.startswith("+"):
            current.add(line)
            line += 1
        elif text.startswith(" "):
            line += 1
    return out


def unbound_in_change(tree: Path, patch: str) -> list[Unbound]:
    """Reads of undefined names on the lines the change (`patch`) added to Python files
    (relative to `tree`: the commit's files, or the coder's checkout). A link, or a path whose
    real place is outside `tree`, is not read: it may be anything, a secret included."""
    added = added_lines(patch)
    root = tree.resolve()
    found: list[Unbound] = []
    for path, lines in added.items():
        f = tree / path
        if (not path.endswith(".py") or not lines or f.is_symlink()
                or not f.resolve().is_relative_to(root) or not f.is_file()):
            continue
        source = f.read_text(errors="replace")
        found += [Unbound(path, n, name) for name, n in undefined_names(source, path)
                  if n in lines]
    if not found:
        return []
    homes = defined_in(tree, {u.name for u in found})
    return [Unbound(u.path, u.line, u.name, tuple(p for p in homes.get(u.name, [])
                                                   if p != u.path)) for u in found]


def defined_in(tree: Path, names: set[str]) -> dict[str, list[str]]:
    """For each of `names`, the Python files of `tree` that bind it at top level (a class,
    function or assignment), by their paths; links and files out of bounds are not read."""
    pattern = re.compile(r"^(?:class|def|async\s+def)\s+(" + "|".join(map(re.escape, names))
                         + r")\b|^(" + "|".join(map(re.escape, names)) + r")\s*(?::[^=]*)?=",
                         re.M)
    out: dict[str, list[str]] = {}
    for rel, f in python_files(tree):
        for m in pattern.finditer(f.read_text(errors="replace")):
            out.setdefault(m.group(1) or m.group(2), []).append(rel)
    return {k: sorted(set(v)) for k, v in out.items()}


def python_files(tree: Path) -> Iterator[tuple[str, Path]]:
    """(path, file) of the first MAX_SCANNED Python files of `tree`, in path order, that are
    worth reading: no link, nothing hidden or vendored, nothing out of bounds or over
    MAX_SCANNED_BYTES."""
    root = tree.resolve()
    for n, f in enumerate(sorted(tree.rglob("*.py"))):
        if n >= MAX_SCANNED:
            break
        rel = f.relative_to(tree).as_posix()
        if (f.is_symlink() or any(part.startswith(".") or part in SKIPPED_DIRS
                                  for part in rel.split("/"))
                or not f.resolve().is_relative_to(root) or not f.is_file()
                or f.stat().st_size > MAX_SCANNED_BYTES):
            continue
        yield rel, f


def failures(found: list[Unbound]) -> list[str]:
    """What the gate and the coder are told of `found`: one sentence each, at most
    MAX_UNBOUND of them, and how many more there are."""
    out = [u.failure() for u in found[:MAX_UNBOUND]]
    if len(found) > MAX_UNBOUND:
        out.append(f"... and {len(found) - MAX_UNBOUND} more reads of undefined names")
    return out


# ---------------------------------------------------------------- attributes a class never sets

OBJECT_ATTRIBUTES = frozenset(dir(object)) | {"__dict__", "__weakref__", "__module__"}
DATACLASS = frozenset({"dataclass", "dataclasses.dataclass"})


def unset_attributes(source: str) -> list[tuple[str, str, int]]:
    """(class, attribute, line) of each read of `self.<attribute>` in a method of a top-level
    class that binds it nowhere: no field or class attribute, no method or property of that
    name, no store to `self.<attribute>` in any of its methods. Only plain classes are judged
    (no bases but `object`, no decorator but `dataclass`, no `__getattr__`, `__getattribute__`,
    `setattr` or `__dict__`), since anything else may set it where this cannot see; [] when the
    module does not compile."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    found = []
    for cls in tree.body:
        if isinstance(cls, ast.ClassDef) and _plain(cls):
            try:
                found += [(cls.name, name, line) for name, line in _unset_in(cls)]
            except RecursionError:
                continue
    return sorted(found, key=lambda x: (x[2], x[1]))


def _plain(cls: ast.ClassDef) -> bool:
    if cls.keywords or any(not (isinstance(b, ast.Name) and b.id == "object") for b in cls.bases):
        return False
    for d in cls.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if ast.unparse(target) not in DATACLASS:
            return False
    return not any(
        isinstance(n, ast.Name) and n.id in ("setattr", "vars", "__dict__")
        or isinstance(n, ast.Attribute) and n.attr == "__dict__"
        or isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        and n.name in ("__getattr__", "__getattribute__", "__setattr__")
        for n in ast.walk(cls))


def _unset_in(cls: ast.ClassDef) -> list[tuple[str, int]]:
    bound = set(OBJECT_ATTRIBUTES)
    methods = []
    for stmt in cls.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(stmt.name)
        else:  # a field, a class attribute: whatever the class body stores
            bound |= {n.id for n in ast.walk(stmt)
                      if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            bound |= {(a.asname or a.name).split(".")[0] for a in stmt.names}
        if (isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__"
                                                 for t in stmt.targets)):
            bound |= {c.value for c in ast.walk(stmt.value)
                      if isinstance(c, ast.Constant) and isinstance(c.value, str)}
        if (isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef) and stmt.args.args
                and not any(ast.unparse(d) == "staticmethod" for d in stmt.decorator_list)):
            methods.append((stmt, stmt.args.args[0].arg))  # `self`, or `cls`
    reads = []
    for method, me in methods:
        for n in ast.walk(method):
            if not (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                    and n.value.id == me):
                continue
            if isinstance(n.ctx, ast.Store | ast.Del):
                bound.add(n.attr)
            else:
                reads.append((n.attr, n.lineno))
    return sorted({(name, line) for name, line in reads if name not in bound},
                  key=lambda x: (x[1], x[0]))


def unset_in_change(tree: Path, patch: str) -> list[Unset]:
    """Reads of attributes their class never sets (`unset_attributes`) on the lines the change
    (`patch`) added to Python files of `tree`; links and files out of bounds are not read."""
    root = tree.resolve()
    found: list[Unset] = []
    for path, lines in added_lines(patch).items():
        f = tree / path
        if (not path.endswith(".py") or not lines or f.is_symlink()
                or not f.resolve().is_relative_to(root) or not f.is_file()):
            continue
        found += [Unset(path, line, owner, name)
                  for owner, name, line in unset_attributes(f.read_text(errors="replace"))
                  if line in lines]
    return found
