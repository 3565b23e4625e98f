"""[loop] keep_definitions: what a files-form reply's Python file left out that the file had, and
the task does not name, is put back before the file is written (agent_node/loop/keep.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from scripted_model import ScriptedModel, as_json, text
from test_files_coder import block, files_form
from user_repo import BAD_CALC, GOOD_CALC, NOT_UI, PASS, isolate, make_repo, run

from agent_node.loop.keep import put_back
from agent_node.runs import read_events


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


TODO = '''"""A to-do list."""

from dataclasses import dataclass, field


@dataclass
class TodoList:
    items: list[str] = field(default_factory=list)

    def add(self, title: str) -> int:
        self.items.append(title)
        return len(self.items) - 1

    def __len__(self) -> int:
        return len(self.items)

    def first(self) -> str:
        return self.items[0]
'''
PENDING = "\n    def pending(self) -> list[str]:\n        return list(self.items)\n"
# the 1.5B's reply to todo_pending: its new method where `__len__` was, and the docstring gone
TODO_REPLY = TODO[TODO.index("from"):TODO.index("\n    def __len__")] + PENDING


def test_a_method_and_the_docstring_the_reply_left_out_go_back_where_they_were() -> None:
    kept = put_back(TODO, TODO_REPLY, "Add a `pending()` method to `TodoList`.")
    assert kept.names == ("docstring", "TodoList.__len__", "TodoList.first")
    assert kept.content == TODO + PENDING


VALIDATE = '''import string

USERNAME_CHARS = set(string.ascii_lowercase)


def is_valid_username(name: str) -> bool:
    return set(name) <= USERNAME_CHARS
'''


def test_a_top_level_assignment_the_reply_left_out_goes_back_after_the_imports() -> None:
    reply = VALIDATE.replace("USERNAME_CHARS = set(string.ascii_lowercase)\n\n\n", "") + (
        "\n\ndef is_valid_email(email: str) -> bool:\n    return '@' in email\n")
    kept = put_back(VALIDATE, reply, "Add `is_valid_email(email)` to validate.py.")
    assert kept.names == ("USERNAME_CHARS",)
    assert kept.content == VALIDATE + (
        "\n\ndef is_valid_email(email: str) -> bool:\n    return '@' in email\n")


def test_what_the_task_names_or_the_reply_binds_another_way_stays_out() -> None:
    old = "def fetch_user(id):\n    return id\n\n\ndef helper():\n    return 1\n\n\nLIMIT = 3\n"
    renamed = "from limits import LIMIT\n\n\ndef get_user(id):\n    return id\n"
    kept = put_back(old, renamed, "Rename `fetch_user` to `get_user` everywhere.",
                    elsewhere=frozenset({"helper"}))  # moved to another file of the reply
    assert kept.names == () and kept.content == renamed


def test_a_method_goes_back_indented_as_the_reply_indents_its_class() -> None:
    old = "class A:\n    def f(self):\n        return 1\n\n    def g(self):\n        return 2\n"
    reply = "class A:\n  def f(self):\n    return 10\n"
    kept = put_back(old, reply, "make f return 10")
    assert kept.content == ("class A:\n  def f(self):\n    return 10\n\n"
                            "  def g(self):\n    return 2\n")


def test_a_reply_that_does_not_compile_is_left_as_it_came() -> None:
    broken = "class TodoList\n    pass\n"
    assert put_back(TODO, broken, "add pending") .content == broken


CALC = BAD_CALC + "\n\ndef sub(a, b):\n    return a - b\n"
TEST_BOTH = ("import sys\n\nsys.path.insert(0, '.')\nimport calc\n\n"
             "assert calc.add(2, 3) == 5, f'add(2, 3) = {calc.add(2, 3)}'\n"
             "assert calc.sub(5, 3) == 2, 'sub'\n")


def test_a_reply_that_drops_a_function_passes_with_it_put_back(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"calc.py": CALC, "tests/test_calc.py": TEST_BOTH})
    coder = ScriptedModel([text(block("calc.py", GOOD_CALC))], name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(keep_definitions=True))

    assert summary["verdict"] == "pass" and summary["rounds"] == 1 and len(coder.calls) == 1
    events = read_events(Path(summary["run_dir"]))
    (note,) = [e for e in events if e["type"] == "note" and "left out" in e["text"]]
    assert note["text"] == "calc.py: the reply left out `sub`; put back as it was"
    diff = (Path(summary["run_dir"]) / "round-1" / "diff.patch").read_text()
    assert "-def sub" not in diff and "+    return a + b" in diff


def test_off_by_default_the_dropped_function_fails_the_tests(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"calc.py": CALC, "tests/test_calc.py": TEST_BOTH})
    coder = ScriptedModel([text(block("calc.py", GOOD_CALC))] * 2, name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI)]), coder,
                  cfg=files_form(max_rounds=1, coder_max_turns=2))
    assert summary["verdict"] == "fail"
    assert "has no attribute 'sub'" in coder.calls[1]["messages"][-1]["content"]


def test_a_partial_reply_keeps_the_file_and_its_imports_around_it() -> None:
    partial = "def is_valid_email(email: str) -> bool:\n    return '@' in email\n"
    kept = put_back(VALIDATE, partial, "Add `is_valid_email(email)` to validate.py.")
    assert kept.names == ("USERNAME_CHARS", "is_valid_username", "import string")
    assert kept.content == VALIDATE + "\n\n" + partial


def test_the_coder_is_told_an_import_came_back_because_the_file_reads_it() -> None:
    """An import goes back because the file still reads its name, named in the task or not
    (rename_fetch_user's api.py read `fetch_usr`); only a definition is one the task does
    not name."""
    from agent_node.loop.files_coder import _kept_said
    alone = _kept_said("api.py", ("import fetch_usr",))
    assert "does not name" not in alone
    assert "api.py still reads `fetch_usr`, and your file dropped the import" in alone
    both = _kept_said("validate.py", ("USERNAME_CHARS", "import string"))
    assert "left out `USERNAME_CHARS`, which validate.py had and the task does not name" in both
    assert "still reads `string`" in both and "`import string`" not in both
