"""[loop] rewrite_named: when a files-form reply changes nothing, the functions the task names
are asked for afresh, their bodies left out, and what the model writes replaces them
(agent_node/loop/rewrite.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from scripted_model import ScriptedModel, as_json, text
from test_files_coder import block, files_form
from user_repo import BAD_CALC, NOT_UI, PASS, isolate, make_repo, run

from agent_node.loop.rewrite import blanked, named_functions, splice
from agent_node.runs import read_events

PAGES = '''\
"""Pages, numbered from 1."""


def page_count(total: int, per_page: int) -> int:
    """How many pages `total` items fill."""
    return total // per_page + 1


class Pager:
    def page(self, items, n):
        start = n * 3
        return items[start:start + 3]
'''
TASK = ("`page_count(total, per_page)` says 4 pages for 9 items at 3 a page, and "
        "`Pager.page` skips the first page; fix both in `pages.py`. Keep `helper`.")


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def test_the_functions_the_task_names_are_found_in_the_first_file_defining_them(
        tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_pages.py").write_text("def page_count():\n    pass\n")
    (tmp_path / "pages.py").write_text(PAGES)
    paths = ["tests/test_pages.py", "pages.py"]
    assert named_functions(TASK, tmp_path, paths) == ("pages.py", ("page_count", "Pager.page"))
    assert named_functions("Fix `nothing_here`.", tmp_path, paths) == ("", ())


def test_their_bodies_are_left_out_and_their_signatures_and_docstrings_kept() -> None:
    assert blanked(PAGES, ("page_count", "Pager.page")) == PAGES.replace(
        "    return total // per_page + 1\n", "    ...\n").replace(
        "        start = n * 3\n        return items[start:start + 3]\n", "        ...\n")


CONVERT = ('def c_to_f(c):\n    """Celsius to Fahrenheit."""\n    return c * 9 / 5 + 32\n\n\n'
           'def f_to_c(f):\n    """Fahrenheit to Celsius."""\n    return f * 9 / 5 + 32\n')


def test_asked_again_for_the_examples_the_other_functions_bodies_are_left_out_too() -> None:
    # temperature_bug: shown `c_to_f` whole beside `f_to_c` blanked, the 0.5B copied its body
    from agent_node.loop.rewrite import ask

    model = ScriptedModel([text("```\ndef f_to_c(f):\n    return (f - 32) * 5 / 9\n```")] * 2)
    ask(model, "fix `f_to_c`", "convert.py", ("f_to_c",), CONVERT,
        wrong=["the task's example `f_to_c(32)` should give `0.0`; it gave `89.6`"])
    ask(model, "fix `f_to_c`", "convert.py", ("f_to_c",), CONVERT)
    with_examples, without = (r["messages"][0]["content"] for r in model.calls)
    assert "return c * 9 / 5 + 32" not in with_examples
    assert '    """Celsius to Fahrenheit."""\n    ...\n' in with_examples
    assert "return c * 9 / 5 + 32" in without and "return f * 9 / 5" not in without


def test_what_the_model_writes_replaces_each_function_where_it_was_reindented() -> None:
    reply = ("Here:\n\n```python\ndef page_count(total, per_page):\n"
             "    return (total + per_page - 1) // per_page\n\n\n"
             "def page(self, items, n):\n    start = (n - 1) * 3\n"
             "    return items[start:start + 3]\n```\n")
    assert splice(PAGES, reply, ("page_count", "Pager.page")) == (
        '"""Pages, numbered from 1."""\n\n\n'
        "def page_count(total, per_page):\n    return (total + per_page - 1) // per_page\n\n\n"
        "class Pager:\n    def page(self, items, n):\n        start = (n - 1) * 3\n"
        "        return items[start:start + 3]\n")
    # the 0.5B's habit: the file's path in a block of its own, then the code
    assert splice(PAGES, "```python\npages.py\n```\n" + reply.split("\n\n", 1)[1],
                  ("page_count", "Pager.page")) == splice(PAGES, reply,
                                                          ("page_count", "Pager.page"))
    assert splice(PAGES, "```\ndef other():\n    pass\n```", ("page_count",)) == ""
    assert splice(PAGES, "```\ndef page_count(:\n```", ("page_count",)) == ""
    unchanged = "```\ndef page_count(total: int, per_page: int) -> int:\n" \
        '    """How many pages `total` items fill."""\n    return total // per_page + 1\n```'
    assert splice(PAGES, unchanged, ("page_count",)) == ""


@pytest.mark.parametrize(("reply", "why"), [
    ("```\ndef other():\n    pass\n```", "its reply has none of `page_count` as a function "
     "that compiles"),
    # the 0.5B gave back the wrong body it was asked to replace, three times sampled
    ("```\ndef page_count(total: int, per_page: int) -> int:\n"
     '    """How many pages `total` items fill."""\n    return total // per_page + 1\n```',
     "its reply gave `page_count` back as they are"),
])
def test_an_ask_that_puts_nothing_in_says_why(reply: str, why: str) -> None:
    from agent_node.loop.rewrite import ask

    got = ask(ScriptedModel([text(reply)]), TASK, "pages.py", ("page_count",), PAGES)
    assert (got.source, got.why) == ("", why)


FIXED = "```python\ndef add(a, b):\n    return a + b\n```\n"


def test_a_reply_that_changes_nothing_gets_the_named_function_asked_for_afresh(
        tmp_path: Path) -> None:
    # paginate_bug: the 1.5B gave pages.py back as it was four times; shown the file with the
    # bodies of `paginate` and `page_count` left out, it wrote both right at once.
    repo = make_repo(tmp_path)
    coder = ScriptedModel([text(block("calc.py", BAD_CALC)), text(FIXED)], name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(rewrite_named=True), task="make `add` add")

    assert summary["verdict"] == "pass" and summary["rounds"] == 1
    (asked,) = coder.calls[1]["messages"]  # alone: the task, the file without the body
    assert "def add(a, b):\n    ...\n" in asked["content"] and "a - b" not in asked["content"]
    assert "Write `add` whole" in asked["content"]
    events = read_events(Path(summary["run_dir"]))
    notes = [e["text"] for e in events if e["type"] == "note"]
    assert any("`add` asked for afresh" in n for n in notes)
    diff = (Path(summary["run_dir"]) / "round-1" / "diff.patch").read_text()
    assert "+    return a + b" in diff


def test_off_by_default_an_unchanged_reply_is_only_sent_back(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    coder = ScriptedModel([text(block("calc.py", BAD_CALC))] * 2, name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI)]), coder,
                  cfg=files_form(max_rounds=1, coder_max_turns=2), task="make `add` add")
    assert summary["verdict"] == "fail"
    assert all(len(c["messages"]) > 1 for c in coder.calls)  # never asked alone


def test_a_reply_with_no_file_gets_the_named_function_asked_for_afresh_before_a_reminder(
        tmp_path: Path) -> None:
    # rle: asked to implement `encode` and `decode`, the 0.5B answered "```python\nrle.py\n```"
    # (a path in an empty block) four times; top_words: the task's own words, four times.
    repo = make_repo(tmp_path)
    coder = ScriptedModel([text("```python\ncalc.py\n```"), text(FIXED)], name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(rewrite_named=True), task="make `add` add")

    assert summary["verdict"] == "pass" and summary["rounds"] == 1
    (asked,) = coder.calls[1]["messages"]
    assert "def add(a, b):\n    ...\n" in asked["content"]
    assert len(coder.calls) == 2  # no reminder was needed


def test_a_reply_with_no_file_after_a_change_is_reminded_not_rewritten(tmp_path: Path) -> None:
    # once the checkout holds a change, prose in a reply does not put the functions afresh
    # over it: the coder is reminded how to write a file
    repo = make_repo(tmp_path)
    half = BAD_CALC.replace("a - b", "a - b + 0")
    coder = ScriptedModel([text(block("calc.py", half)), text("I changed add."),
                           text(block("calc.py", half))], name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI)] + [as_json(PASS)] * 2), coder,
                  cfg=files_form(rewrite_named=True, max_rounds=1, coder_max_turns=3),
                  task="make `add` add")
    assert summary["verdict"] == "fail"
    assert all(len(c["messages"]) > 1 for c in coder.calls)  # never asked alone
    assert "changed no file" in coder.calls[2]["messages"][-1]["content"]


TWO = "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a + b\n"
# the visible test holds `add` to the task, and only keeps `sub` from breaking
TEST_TWO = ("import sys\n\nsys.path.insert(0, '.')\nimport calc\n\n"
            "assert calc.add(2, 3) == 5\nassert calc.sub(3, 1) in (2, 4)\n")


@pytest.mark.parametrize("sub, kept", [("return a - b", True), ("return 0", False)])
def test_a_named_function_a_passing_change_left_alone_is_asked_for_afresh(
        tmp_path: Path, sub: str, kept: bool) -> None:
    # bank_errors: the 0.5B made `withdraw` raise for a zero amount, left `deposit` (which the
    # task names beside it) as it was, and the visible tests, which only withdraw, passed it
    repo = make_repo(tmp_path, {"calc.py": TWO, "tests/test_calc.py": TEST_TWO})
    fixed_add = TWO.replace("return a - b", "return a + b", 1)
    coder = ScriptedModel([text(block("calc.py", fixed_add)),
                           text(f"```python\ndef sub(a, b):\n    {sub}\n```")], name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(rewrite_named=True), task="Fix `add` and `sub` in `calc.py`.")

    assert summary["verdict"] == "pass" and summary["rounds"] == 1
    (asked,) = coder.calls[1]["messages"]  # alone: `sub` blanked, the changed `add` whole
    assert "def sub(a, b):\n    ...\n" in asked["content"]
    assert "def add(a, b):\n    return a + b" in asked["content"]
    notes = [e["text"] for e in read_events(Path(summary["run_dir"])) if e["type"] == "note"]
    said = next(n for n in notes if "left `sub`, which the task names, as it was" in n)
    diff = (Path(summary["run_dir"]) / "round-1" / "diff.patch").read_text()
    assert "+    return a + b" in diff
    if kept:
        assert "put in calc.py, and the checks still pass" in said
        assert "+    return a - b" in diff
    else:
        assert "the checks fail with it, so calc.py stays as the change left it" in said
        assert "return 0" not in diff


def test_a_bare_method_name_one_class_defines_is_that_method(tmp_path: Path) -> None:
    (tmp_path / "bank.py").write_text("class Account:\n    def deposit(self, a):\n        pass\n\n"
                                      "    def withdraw(self, a):\n        pass\n")
    task = "Make `Account.withdraw(amount)` raise, and both `deposit` and `withdraw` check."
    assert named_functions(task, tmp_path, ["bank.py"]) == (
        "bank.py", ("Account.withdraw", "Account.deposit"))
