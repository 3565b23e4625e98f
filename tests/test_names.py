"""The gate's undefined-name check: a line the change added that reads a name nothing defines
fails the round before any test has to reach it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent_node.loop.names import (
    Unset,
    added_lines,
    unbound_in_change,
    undefined_names,
    unset_attributes,
    unset_in_change,
)

BANK = '''\
import os


class Account:
    def withdraw(self, amount):
        if amount > self.balance:
            raise InsufficientFunds("not enough")
        spent = [a for a in range(3)]
        print(len(spent), os.sep, __name__)
        return helper(amount)


def helper(amount):
    global calls
    calls = 1
    return amount + calls


try:
    import json
except ImportError:
    json = None
'''


def test_a_raised_exception_nothing_defines_is_found_with_its_line() -> None:
    assert undefined_names(BANK) == [("InsufficientFunds", 7)]


def test_locals_builtins_imports_comprehensions_and_declared_globals_are_bound() -> None:
    fixed = "class InsufficientFunds(Exception):\n    pass\n\n\n" + BANK
    assert undefined_names(fixed) == []


def test_a_closure_reads_its_enclosing_function_but_not_a_name_nowhere() -> None:
    src = "def f():\n    x = 1\n\n    def g():\n        return x + y\n    return g\n"
    assert undefined_names(src) == [("y", 5)]


def test_a_class_body_reads_its_own_names_and_a_method_does_not() -> None:
    src = "class C:\n    A = 1\n    B = A + 1\n\n    def m(self):\n        return A\n"
    assert undefined_names(src) == [("A", 6)]


def test_a_module_that_binds_names_where_the_compiler_cannot_see_is_not_judged() -> None:
    for src in ["from os.path import *\nprint(join)\n", "globals()['x'] = 1\nprint(x)\n",
                "exec('x = 1')\nprint(x)\n", "def __getattr__(name):\n    return name\n\nx\n"]:
        assert undefined_names(src) == [], src


def test_a_module_that_does_not_compile_is_left_to_the_tests() -> None:
    assert undefined_names("def f(:\n    pass\n") == []


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def test_only_lines_the_change_added_are_reported(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "bank.py").write_text("def old():\n    return legacy_helper()\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    (repo / "bank.py").write_text("def old():\n    return legacy_helper()\n\n\n"
                                  "def new(a):\n    if a < 0:\n        raise Overdrawn(a)\n"
                                  "    return a\n")
    (repo / "notes.txt").write_text("uses Overdrawn\n")
    git(repo, "add", "-A")
    patch = git(repo, "diff", "--cached")
    assert added_lines(patch)["bank.py"] == {3, 4, 5, 6, 7, 8}
    found = unbound_in_change(repo, patch)
    assert [(u.path, u.line, u.name) for u in found] == [("bank.py", 7, "Overdrawn")]
    assert "define or import `Overdrawn`" in found[0].failure()


def test_a_name_another_module_defines_is_to_be_imported_from_there(tmp_path: Path) -> None:
    (tmp_path / "errors.py").write_text("class ConfigError(Exception):\n    pass\n")
    (tmp_path / "config.py").write_text("def load(path):\n    raise ConfigError(path)\n")
    patch = ("+++ b/config.py\n@@ -0,0 +1,2 @@\n+def load(path):\n"
             "+    raise ConfigError(path)\n")
    (found,) = unbound_in_change(tmp_path, patch)
    assert found.defined_in == ("errors.py",)
    assert "`ConfigError` is defined in errors.py" in found.failure()
    assert "`from errors import ConfigError`" in found.failure()


def test_a_standard_library_module_never_imported_is_to_be_imported(tmp_path: Path) -> None:
    # slugify: the 1.5B called `re.sub` with no `import re`
    (tmp_path / "text.py").write_text("def slug(s):\n    return re.sub('x', '', s)\n")
    patch = "+++ b/text.py\n@@ -0,0 +1,2 @@\n+def slug(s):\n+    return re.sub('x', '', s)\n"
    (found,) = unbound_in_change(tmp_path, patch)
    assert found.stdlib and "standard library: `import re`" in found.failure()
    (tmp_path / "util.py").write_text("re = None\n")  # the repository's own `re` comes first
    (found,) = unbound_in_change(tmp_path, patch)
    assert not found.stdlib and "`from util import re`" in found.failure()


def test_a_changed_file_that_is_a_link_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.py"
    secret.write_text("print(undefined_secret_name)\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "calc.py").symlink_to(secret)
    patch = "+++ b/calc.py\n@@ -0,0 +1 @@\n+print(undefined_secret_name)\n"
    assert unbound_in_change(tree, patch) == []
    (tree / "lib").symlink_to(tmp_path, target_is_directory=True)  # a folder link, too
    patch = "+++ b/lib/secret.py\n@@ -0,0 +1 @@\n+print(undefined_secret_name)\n"
    assert unbound_in_change(tree, patch) == []


def test_a_file_nested_past_what_the_compiler_takes_is_not_judged_and_breaks_nothing() -> None:
    assert undefined_names("x = " + "+".join(["a"] * 200_000) + "\n") == []  # RecursionError
    assert undefined_names("x = " + "-" * 100_000 + "1\n") == []  # the parser's MemoryError


# ---------------------------------------------------------------- attributes a class never sets

ORDER = '''\
from dataclasses import dataclass, field


@dataclass
class Order:
    customer: str
    lines: list = field(default_factory=list)

    def subtotal(self):
        return round(sum(line.amount() for line in self.lines), 2)

    def tax(self):
        return round(self.subtotal() * self.tax_rate, 2)
'''


def test_a_method_reading_an_attribute_its_class_never_sets_is_found_with_its_line() -> None:
    # invoice_tax: the 1.5B wrote `tax()` reading a `tax_rate` field it never declared
    assert unset_attributes(ORDER) == [("Order", "tax_rate", 13)]


def test_fields_class_attributes_methods_and_stores_in_any_method_set_an_attribute() -> None:
    source = '''\
class Cart:
    LIMIT = 3
    __slots__ = ("items", "owner")

    def __init__(self, owner):
        self.owner = owner
        self.items, self.total = [], 0

    @property
    def size(self):
        return len(self.items) + self.LIMIT + self.total

    def add(self, item):
        self.items.append(item)
        self.last = item
        return self.size + len(self.owner) + self.check() + self.__class__.__name__

    def check(self):
        return self.last

    @classmethod
    def empty(cls):
        return cls.LIMIT

    @staticmethod
    def parse(text):
        return text.strip
'''
    assert unset_attributes(source) == []


def test_a_class_something_else_may_set_attributes_on_is_not_judged() -> None:
    read = "    def f(self):\n        return self.x\n"
    for head in ("class A(Base):\n", "@frozen\nclass A:\n", "class A(metaclass=M):\n",
                 "class A:\n    def __getattr__(self, name):\n        return 1\n\n",
                 "class A:\n    def __init__(self, **kw):\n        self.__dict__.update(kw)\n\n",
                 "class A:\n    def __init__(self, k):\n        setattr(self, k, 1)\n\n"):
        assert unset_attributes(head + read) == [], head
    assert unset_attributes("class A(object):\n" + read) == [("A", "x", 3)]
    assert unset_attributes("class A(\n") == []  # does not compile: the tests say so


def test_only_attributes_read_on_lines_the_change_added_are_reported(tmp_path: Path) -> None:
    (tmp_path / "order.py").write_text(ORDER)
    patch = ("--- a/order.py\n+++ b/order.py\n@@ -11,0 +12,2 @@\n"
             "+    def tax(self):\n+        return round(self.subtotal() * self.tax_rate, 2)\n")
    assert unset_in_change(tmp_path, patch) == [Unset("order.py", 13, "Order", "tax_rate")]
    signature_only = "--- a/order.py\n+++ b/order.py\n@@ -11,0 +12,1 @@\n+    def tax(self):\n"
    assert unset_in_change(tmp_path, signature_only) == []
