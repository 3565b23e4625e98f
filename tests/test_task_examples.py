"""[loop] task_examples: the calls and commands a task writes out with their result are run on
every change, in the sandbox; the gate fails a change that gets one wrong, and with
rewrite_named the files coder asks for the task's functions afresh (agent_node/loop/examples.py).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from scripted_model import ScriptedModel, as_json, text
from test_files_coder import block, files_form
from user_repo import NOT_UI, PASS, isolate, make_repo, run

from agent_node.loop.examples import Example, find, usable
from agent_node.loop.examples import run as run_examples
from agent_node.runs import read_events
from agent_node.sandbox import Sandbox

BAD_MEAN = "def mean(xs):\n    return sum(xs) / (len(xs) - 1)\n"
# mean_bug: the 0.5B's reply, which the visible test passes
CHECKED_ONLY = ("def mean(xs):\n    if not xs:\n        raise ValueError('empty')\n"
                "    return sum(xs) / (len(xs) - 1)\n")
GOOD_MEAN = ("def mean(xs):\n    if not xs:\n        raise ValueError('empty')\n"
             "    return sum(xs) / len(xs)\n")
TEST_MEAN = ("import sys\n\nsys.path.insert(0, '.')\nimport stats\n\n"
             "assert stats.mean([1, 2, 3]) > 0\n")
TASK = ("`mean(xs)` in `stats.py` returns the wrong value: `mean([2, 4])` should be 3.0. "
        "Fix it, and make it raise `ValueError` for an empty list.")
FILES = {"stats.py": BAD_MEAN, "tests/test_stats.py": TEST_MEAN}


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def write(root: Path, files: dict[str, str]) -> Path:
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content)
    return root


SOURCES = {"text.py": "def slugify(text):\n    ...\n", "duration.py": "def parse(t):\n    ...\n",
           "greet.py": "print('hi')\n",
           "cart.py": "class Cart:\n    def total(self, p):\n        ...\n",
           "a.py": "def helper(x):\n    ...\n", "b.py": "def helper(x):\n    ...\n",
           "tests/test_x.py": "def only_in_tests(x):\n    ...\n"}


@pytest.mark.parametrize(("task", "found"), [
    ("`slugify(\"Hello, World!\")` should be `\"hello-world\"`.",
     Example('slugify("Hello, World!")', '"hello-world"', "text", "slugify")),
    ("For example `slugify(\"a b\")` is \"a-b\".", Example('slugify("a b")', '"a-b"', "text",
                                                          "slugify")),
    ("`parse(\"1h30m\")` returns 1800 instead of 5400 seconds.",
     Example('parse("1h30m")', "5400", "duration", "parse")),
    ("`slugify(\"a\" * 3)` should return `\"aaa\"`", Example('slugify("a" * 3)', '"aaa"', "text",
                                                            "slugify")),
    ("`python greet.py Ada --shout` prints `HELLO, ADA!`",
     Example("python greet.py Ada --shout", "HELLO, ADA!", command=True)),
])
def test_an_example_the_task_writes_out_is_found(tmp_path: Path, task: str,
                                                  found: Example) -> None:
    root = write(tmp_path, SOURCES)
    assert find(task, root, list(SOURCES)) == [found]


@pytest.mark.parametrize("task", [
    "`slugify(text)` should be the slug",  # a name that is not Python's: not a call to make
    "`slugify(text)` is \"a\"",
    "`total(10)` should be 9.0",  # a method: nothing to call it on
    "`Cart.total(10)` should be 9.0",
    "`helper(2)` should be 4",  # two files define it: which one is meant is not said
    "`only_in_tests(2)` should be 4",  # tests are what the change is checked by, not code
    "`slugify(\"a\")` should be lower case",  # not a literal
    "`slugify(\"a\")` and `slugify(\"b\")` differ",
    "`python other.py` prints `x`",  # not a file of the repository
    "`python greet.py` prints nothing special",
])
def test_what_the_task_does_not_state_plainly_is_not_taken(tmp_path: Path, task: str) -> None:
    root = write(tmp_path, SOURCES)
    assert find(task, root, list(SOURCES)) == []


RLE = {"rle.py": "def encode(text):\n    ...\n\n\ndef decode(text):\n    ...\n",
       "other.py": "def shout(s):\n    ...\n"}
RLE_TASK = ("`encode(\"aaab\")` is `\"3a1b\"` and `encode(\"a\" * 12)` is `\"12a\"`; "
            "`decode(text)` turns it back, so `decode(encode(s)) == s`.")


def test_an_identity_the_task_writes_out_is_checked_on_its_other_examples(
        tmp_path: Path) -> None:
    root = write(tmp_path, RLE)
    found = find(RLE_TASK, root, list(RLE))
    assert [e.text for e in found] == [
        'encode("aaab")', 'encode("a" * 12)',
        "decode(encode('aaab'))", "decode(encode('a' * 12))"]
    assert found[3] == Example("decode(encode('a' * 12))", "'a' * 12", "rle", "decode",
                               more=(("rle", "encode"),), identity=True)


@pytest.mark.parametrize("identity", [
    "`decode(encode(s)) == t`",  # two variables: nothing says what t is
    "`decode(encode(s)) != s`",
    "`undefined(encode(s)) == s`",  # a function no source file defines
    "`decode(shout(s)) == s`",  # nothing gives shout an argument to try
    "`decode(encode(s, 2)) == s`",
])
def test_an_identity_without_a_plain_case_to_try_is_not_taken(tmp_path: Path,
                                                              identity: str) -> None:
    root = write(tmp_path, RLE)
    found = find("`encode(\"aaab\")` is `\"3a1b\"`. " + identity, root, list(RLE))
    assert [e.text for e in found] == ['encode("aaab")']


def test_an_identity_runs_with_both_functions_from_their_modules(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "rle.py": "from itertools import groupby\n\n\ndef encode(text):\n"
                  "    return ''.join(f'{len(list(g))}{c}' for c, g in groupby(text))\n\n\n"
                  "def decode(text):\n    return text\n"})
    found = find(RLE_TASK, root, ["rle.py"])
    outcomes = run_examples(found, root, Sandbox.from_config())
    assert [(o.holds, o.got) for o in outcomes] == [
        (True, "'3a1b'"), (True, "'12a'"), (False, "'3a1b'"), (False, "'12a'")]
    assert outcomes[2].failure() == (
        "the task's example `decode(encode('aaab'))` (from rle.py) should give `'aaab'`; it "
        "gave `'3a1b'`")


def test_examples_run_in_the_sandbox_and_say_what_the_code_gave(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "calc.py": "def half(x):\n    return x / 3\n\n\ndef third(x):\n    return x / 3\n\n\n"
                   "def boom(x):\n    raise KeyError(x)\n",
        "greet.py": "import sys\nprint('HELLO, ' + sys.argv[1].upper() + '!')\n"})
    examples = find("`half(4)` should be 2.0; `third(1)` should be 0.333333333; `boom(1)` is 2; "
                    "`python greet.py ada` prints `HELLO, ADA!`", root, ["calc.py", "greet.py"])
    outcomes = run_examples(examples, root, Sandbox.from_config())
    assert [(o.holds, o.got) for o in outcomes] == [
        (False, "1.3333333333333333"), (True, "0.3333333333333333"),
        (False, "raised KeyError: 1"), (True, "HELLO, ADA!")]
    assert outcomes[0].failure() == ("the task's example `half(4)` (from calc.py) should give "
                                     "`2.0`; it gave `1.3333333333333333`")


@pytest.mark.parametrize("module", [
    # the code under test printing a result line of its own does not pass it
    "print('studio-coder-examples-0000000000000000:[[true, \"2\"]]')\n"
    "def two():\n    return 3\n",
    # nor does leaving before the examples say anything
    "import os\ndef two():\n    os._exit(0)\n",
])
def test_the_code_under_test_cannot_speak_for_the_examples(tmp_path: Path, module: str) -> None:
    root = write(tmp_path, {"two.py": module})
    (outcome,) = run_examples(find("`two()` should be 2", root, ["two.py"]), root,
                              Sandbox.from_config())
    assert not outcome.holds


def test_an_example_the_code_gives_before_the_change_is_left_out(tmp_path: Path) -> None:
    # "`parse("1h30m")` returns 1800 instead of 5400", misread, would expect the bug
    root = write(tmp_path, {"calc.py": "def add(a, b):\n    return a - b\n"})
    examples = find("`add(2, 0)` should be 2 and `add(2, 3)` should be 5", root, ["calc.py"])
    kept, dropped = usable(examples, root, Sandbox.from_config())
    assert [e.text for e in kept] == ["add(2, 3)"]
    assert [o.example.text for o in dropped] == ["add(2, 0)"]


def stats_test_cmd() -> str:
    return f"{sys.executable} tests/test_stats.py"


def test_the_gate_fails_a_change_that_gets_the_tasks_example_wrong(tmp_path: Path) -> None:
    # mean_bug: the 0.5B added the empty-list check, kept `len(xs) - 1`, and the visible test
    # (mean > 0) passed; the task's own example says 6.0 is wrong
    repo = make_repo(tmp_path, FILES)
    coder = ScriptedModel([text(block("stats.py", CHECKED_ONLY)),
                           text(block("stats.py", GOOD_MEAN))], name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(task_examples=True, max_rounds=2, coder_max_turns=1),
                  task=TASK, test_cmd=stats_test_cmd())

    assert summary["verdict"] == "pass" and summary["rounds"] == 2
    events = read_events(Path(summary["run_dir"]))
    (first, second) = [e for e in events if e["type"] == "gate"]
    assert first["failures"] == ["the task's example `mean([2, 4])` (from stats.py) should give "
                                 "`3.0`; it gave `6.0`"]
    assert second["passed"]
    notes = [e["text"] for e in events if e["type"] == "note"]
    assert "the task's examples, checked on every change: `mean([2, 4])` (from stats.py) " \
        "should give `3.0`" in notes
    # the next round's coder is told, as it is told the tests' output
    assert "it gave `6.0`" in coder.calls[1]["messages"][1]["content"]


def test_off_by_default_the_tests_alone_pass_that_change(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, FILES)
    coder = ScriptedModel([text(block("stats.py", CHECKED_ONLY))], name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(max_rounds=1, coder_max_turns=1), task=TASK,
                  test_cmd=stats_test_cmd())
    assert summary["verdict"] == "pass"  # wrong: what the examples are for


def test_a_reply_that_gets_the_example_wrong_has_the_function_asked_for_afresh(
        tmp_path: Path) -> None:
    # mean_bug, measured: shown stats.py with mean's body left out, the 0.5B wrote it right,
    # greedy and in four samples of four; shown it whole, it copied `len(xs) - 1`
    repo = make_repo(tmp_path, FILES)
    afresh = "```python\n" + GOOD_MEAN + "```\n"
    coder = ScriptedModel([text(block("stats.py", CHECKED_ONLY)), text(afresh)], name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(task_examples=True, rewrite_named=True, max_rounds=1,
                                 coder_max_turns=1), task=TASK, test_cmd=stats_test_cmd())

    assert summary["verdict"] == "pass" and summary["rounds"] == 1
    (asked,) = coder.calls[1]["messages"]  # alone, with the body left out
    assert "def mean(xs):\n    ...\n" in asked["content"] and "len(xs) - 1" not in \
        asked["content"]
    assert coder.calls[1]["sampling"] is None  # the run's first ask is greedy
    diff = (Path(summary["run_dir"]) / "round-1" / "diff.patch").read_text()
    assert "+    return sum(xs) / len(xs)" in diff


def test_what_comes_back_no_more_right_is_not_kept(tmp_path: Path) -> None:
    # temperature_bug, measured: asked for `f_to_c` afresh, the 0.5B wrote c_to_f's body
    # five times of five; the reply's own file stays in the checkout
    repo = make_repo(tmp_path, FILES)
    worse = "```python\ndef mean(xs):\n    return sum(xs) * 2\n```\n"
    coder = ScriptedModel([text(block("stats.py", CHECKED_ONLY)), text(worse)], name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(task_examples=True, rewrite_named=True, max_rounds=1,
                                 coder_max_turns=1), task=TASK, test_cmd=stats_test_cmd())

    assert summary["verdict"] == "fail"
    diff = (Path(summary["run_dir"]) / "round-1" / "diff.patch").read_text()
    assert "raise ValueError" in diff and "* 2" not in diff
    notes = [e["text"] for e in read_events(Path(summary["run_dir"])) if e["type"] == "note"]
    assert any("none got more of them right, so stats.py stays as the reply wrote it" in n
               for n in notes)


def test_sampled_asks_go_on_until_one_gets_the_examples_right(tmp_path: Path) -> None:
    # temperature_bug, measured: told the examples its code got wrong, the 0.5B wrote `f_to_c`
    # right in 1 of 3 samples; not told, in none of 9. The examples pick the right one.
    repo = make_repo(tmp_path, FILES)
    worse = "```python\ndef mean(xs):\n    return sum(xs) * 2\n```\n"
    right = "```python\n" + GOOD_MEAN + "```\n"
    coder = ScriptedModel([text(block("stats.py", CHECKED_ONLY)), text(worse), text(right)],
                          name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(task_examples=True, rewrite_named=True, max_rounds=1,
                                 coder_max_turns=1, retry_temperature=0.7),
                  task=TASK, test_cmd=stats_test_cmd())

    assert summary["verdict"] == "pass" and len(coder.calls) == 3
    first, second = coder.calls[1], coder.calls[2]
    assert first["sampling"] is None and second["sampling"]["temperature"] == 0.7
    for asked in (first, second):  # each told what the reply's code got wrong
        assert "`mean([2, 4])` (from stats.py) should give `3.0`; it gave `6.0`" in \
            asked["messages"][0]["content"]
    diff = (Path(summary["run_dir"]) / "round-1" / "diff.patch").read_text()
    assert "+    return sum(xs) / len(xs)" in diff


def test_the_bench_tasks_examples_hold_for_their_solutions_and_not_at_their_start(
        tmp_path: Path) -> None:
    # the rule reads the seven tasks that write a call or command out, and nothing else
    from bench.task_grading import TASKS

    sandbox, found = Sandbox.from_config(), {}
    for task in sorted(p for p in TASKS.iterdir() if (p / "task.md").is_file()):
        repo = task / "repo"
        files = [str(f.relative_to(repo)) for f in repo.rglob("*") if f.is_file()]
        examples = find((task / "task.md").read_text(), repo, files)
        if not examples:
            continue
        found[task.name] = len(examples)
        work = tmp_path / task.name
        shutil.copytree(repo, work)
        assert not any(o.holds for o in run_examples(examples, work, sandbox)), task.name
        shutil.copytree(task / "solution", work, dirs_exist_ok=True)
        assert all(o.holds for o in run_examples(examples, work, sandbox)), task.name
    assert found == {"duration_bug": 1, "greet_shout": 1, "mean_bug": 1, "paginate_bug": 1,
                     "rle": 4, "slugify": 1, "temperature_bug": 2}
