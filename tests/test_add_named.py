"""[loop] rewrite_named, for functions that do not exist yet: when a files-form reply changes
nothing and the task names no function the repository defines, the new functions it names as
calls are asked for alone and put at the end of their class, or file (agent_node/loop/added.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scripted_model import ScriptedModel, as_json, text
from test_files_coder import files_form
from user_repo import NOT_UI, PASS, isolate, make_repo, run

from agent_node.loop.added import Wanted, add, wanted
from agent_node.runs import read_events

TODO = '''\
"""A to-do list."""

from dataclasses import dataclass, field


@dataclass
class TodoList:
    items: list = field(default_factory=list)

    def add(self, title: str) -> int:
        self.items.append([title, False])
        return len(self.items) - 1
'''
TASK = ("Add two methods to `TodoList` in `todo.py`: `pending()` returns the titles not done; "
        "`clear_done()` removes the done ones and returns how many. Keep `add(title)` as it is.")
METHODS = ("Here they are:\n\n```python\ndef pending(self):\n"
           "    return [t for t, done in self.items if not done]\n\n"
           "def clear_done(self):\n    before = len(self.items)\n"
           "    self.items = [i for i in self.items if not i[1]]\n"
           "    return before - len(self.items)\n```\n")


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def test_the_new_functions_go_in_the_class_the_task_names_or_else_the_file(
        tmp_path: Path) -> None:
    (tmp_path / "todo.py").write_text(TODO)
    (tmp_path / "cli.py").write_text("def main():\n    pass\n")
    paths = ["todo.py", "cli.py"]
    # `add(title)` is named as a call, but TodoList defines it: it is not new
    assert wanted(TASK, tmp_path, paths) == Wanted("todo.py", "TodoList",
                                                   ("pending", "clear_done"))
    assert wanted("Add `is_valid(x)` to `cli.py`.", tmp_path, paths) == Wanted(
        "cli.py", "", ("is_valid",))
    assert wanted("Add `is_valid(x)` somewhere.", tmp_path, paths) is None  # no place
    assert wanted("Fix `main()` in `cli.py`.", tmp_path, paths) is None  # nothing new


def test_what_the_model_writes_goes_at_the_end_of_the_class_reindented() -> None:
    out = add(TODO, METHODS, Wanted("todo.py", "TodoList", ("pending", "clear_done")))
    assert out == TODO + (
        "\n    def pending(self):\n        return [t for t, done in self.items if not done]\n"
        "\n    def clear_done(self):\n        before = len(self.items)\n"
        "        self.items = [i for i in self.items if not i[1]]\n"
        "        return before - len(self.items)\n")
    # written inside a class of its own, or at the file's top level, it is found all the same
    nested = "```python\nclass TodoList:\n    def pending(self):\n        return []\n```"
    assert add(TODO, nested, Wanted("todo.py", "TodoList", ("pending",))).endswith(
        "\n    def pending(self):\n        return []\n")
    top = add("X = 1\n", "```\ndef is_valid(x):\n    return bool(x)\n```",
              Wanted("cli.py", "", ("is_valid",)))
    assert top == "X = 1\n\n\ndef is_valid(x):\n    return bool(x)\n"


@pytest.mark.parametrize("reply", [
    "I would add them.", "```python\ndef other(self):\n    pass\n```",
    "```python\ndef pending(self)\n    return\n```"])
def test_a_reply_without_one_of_them_that_compiles_puts_nothing_in(reply: str) -> None:
    assert add(TODO, reply, Wanted("todo.py", "TodoList", ("pending",))) == ""


TEST_SUB = ("import sys\n\nsys.path.insert(0, '.')\nimport calc\n\n"
            "assert calc.add(2, 3) == 5\nassert calc.sub(5, 3) == 2\n")


def test_a_reply_that_changes_nothing_gets_the_new_function_asked_for_alone(
        tmp_path: Path) -> None:
    # todo_pending: the 0.5B answered with the path alone in a block, or gave todo.py back
    repo = make_repo(tmp_path, {"calc.py": "def add(a, b):\n    return a + b\n",
                                "tests/test_calc.py": TEST_SUB})
    coder = ScriptedModel([text("```python\ncalc.py\n```"),
                           text("```python\ndef sub(a, b):\n    return a - b\n```")],
                          name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(rewrite_named=True), task="Add `sub(a, b)` to `calc.py`.")

    assert summary["verdict"] == "pass" and summary["rounds"] == 1
    (asked,) = coder.calls[1]["messages"]  # alone: the task, the file as it is
    assert "def add(a, b):\n    return a + b" in asked["content"]
    assert "Write `sub`, the new function, whole" in asked["content"]
    notes = [e["text"] for e in read_events(Path(summary["run_dir"])) if e["type"] == "note"]
    assert any("`sub` asked for alone and put at the end of calc.py" in n for n in notes)
    diff = (Path(summary["run_dir"]) / "round-1" / "diff.patch").read_text()
    assert "+def sub(a, b):\n+    return a - b" in diff
