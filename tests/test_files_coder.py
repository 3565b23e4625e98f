"""The coder in whole-file form ([loop] coder = "files"): each reply rewrites files, the loop
writes them, runs the tests and asks again while they fail."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from scripted_model import ScriptedModel, as_json, text
from user_repo import (
    BAD_CALC,
    GOOD_CALC,
    NOT_UI,
    PASS,
    TEST_CALC,
    git,
    isolate,
    make_repo,
    run,
)

from agent_node.config import AgentConfig, ConfigError, load_config
from agent_node.loop.files_coder import parse_files, report_of
from agent_node.runs import read_events


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def files_form(**loop: int) -> AgentConfig:
    cfg = AgentConfig()
    cfg.loop.coder = "files"
    for key, value in loop.items():
        setattr(cfg.loop, key, value)
    return cfg


def block(path: str, content: str, lang: str = "python") -> str:
    return f"{path}\n```{lang}\n{content}```\n"


KNOWN = ["calc.py", "tests/test_calc.py", "README.md"]


@pytest.mark.parametrize("before", [
    "calc.py", "`calc.py`", "**calc.py**", "# calc.py", "File: calc.py:", "./calc.py",
    "Here is the fixed `calc.py`:"])
def test_a_path_is_read_from_the_line_before_a_block(before: str) -> None:
    assert parse_files(f"Fixed.\n\n{before}\n```python\nx = 1\n```\n", KNOWN) == [
        ("calc.py", "x = 1\n")]


def test_a_path_in_the_fence_or_a_new_file_is_read_too() -> None:
    reply = "```python calc.py\nx = 1\n```\nsrc/new_mod.py\n```\ny = 2\n```"
    assert parse_files(reply, KNOWN) == [("calc.py", "x = 1\n"), ("src/new_mod.py", "y = 2\n")]


def test_an_unnamed_block_is_the_one_file_shown_only_when_no_block_has_a_path() -> None:
    assert parse_files("```python\nx = 1\n```", KNOWN, default="calc.py") == [
        ("calc.py", "x = 1\n")]
    assert parse_files("```\nx = 1\n```", KNOWN) == []  # no default: nothing to write
    # an example after the named file must not replace it
    reply = block("calc.py", GOOD_CALC) + "Use it like this:\n```python\nadd(1, 2)\n```"
    assert parse_files(reply, KNOWN, default="calc.py") == [("calc.py", GOOD_CALC)]


def test_a_block_holding_only_a_path_names_the_block_after_it_and_is_never_content() -> None:
    # the 0.5B wrote "```python\ntodo.py\n```" and the file in the next block (todo_pending),
    # or the path alone in a block (rle): neither makes the file's content its own name
    reply = "```python\ncalc.py\n```\n```python\nx = 1\n```"
    assert parse_files(reply, KNOWN) == [("calc.py", "x = 1\n")]
    assert parse_files("```python\ncalc.py\n```", KNOWN, default="calc.py") == []


def test_a_file_written_twice_keeps_its_last_content_and_the_report_is_the_prose() -> None:
    reply = "First try.\n" + block("calc.py", BAD_CALC) + "Better:\n" + block("calc.py", GOOD_CALC)
    assert parse_files(reply, KNOWN) == [("calc.py", GOOD_CALC)]
    assert report_of(reply) == "First try.\n\nBetter:"  # the prose, not the blocks' paths
    assert report_of(block("calc.py", GOOD_CALC) + "**tests/test_calc.py**\n```\nx\n```") == ""


def test_the_coder_rewrites_until_the_tests_pass_and_the_run_passes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    coder = ScriptedModel([
        text("Fixed add.\n\n" + block("calc.py", "def add(a, b):\n    return a * b\n")),
        text("Now it adds.\n\n" + block("calc.py", GOOD_CALC)),
    ], name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form())

    assert summary["verdict"] == "pass" and summary["rounds"] == 1
    first = coder.calls[0]
    assert "tools" not in first or not first["tools"]  # no tools in this form
    brief = first["messages"][1]["content"]
    assert "calc.py\n```\n" + BAD_CALC.rstrip("\n") in brief  # the files are shown
    assert "call `finish`" not in brief and "such as `calc.py`" in brief
    assert "finishing with no file changed" not in brief  # no finish in this form
    assert brief.index("calc.py\n```\n") < brief.index("# The task, once more\n\nmake add() add")
    again = coder.calls[1]["messages"][-1]["content"]  # what the second turn was told
    assert "calc.py: replaced" in again and "add(2, 3) = 6" in again
    events = read_events(Path(summary["run_dir"]))
    done = next(e for e in events if e["type"] == "coder_done")
    assert done["stopped"] == "finish" and done["turns"] == 2
    assert done["report"] == "Now it adds."  # the coder's words, nothing of the loop's
    assert (repo / "calc.py").read_text() == BAD_CALC  # nothing reaches the user before approve


def test_a_reply_whose_tests_pass_but_reads_an_undefined_name_is_sent_back(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    untested = GOOD_CALC + "\n\ndef div(a, b):\n    if b == 0:\n        raise DivByZero(a)\n" \
        "    return a / b\n"
    defined = "class DivByZero(Exception):\n    pass\n\n\n" + untested
    coder = ScriptedModel([text(block("calc.py", untested)), text(block("calc.py", defined))],
                          name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form())

    assert summary["verdict"] == "pass" and summary["rounds"] == 1  # fixed within the round
    again = coder.calls[1]["messages"][-1]["content"]
    assert "pass" in again and "calc.py:7 reads `DivByZero`" in again
    done = next(e for e in read_events(Path(summary["run_dir"])) if e["type"] == "coder_done")
    assert done["turns"] == 2


def test_a_reply_with_no_file_gets_one_reminder_then_the_round_ends(tmp_path: Path) -> None:
    coder = ScriptedModel([text("I would change add."), text("Still just words.")],
                          name="coder")
    summary = run(tmp_path, make_repo(tmp_path), ScriptedModel([as_json(NOT_UI)]), coder,
                  cfg=files_form(max_rounds=1))
    assert summary["verdict"] == "fail"
    assert "changed no file" in coder.calls[1]["messages"][-1]["content"]
    done = next(e for e in read_events(Path(summary["run_dir"])) if e["type"] == "coder_done")
    assert done["stopped"] == "answer" and done["turns"] == 2


def test_an_existing_test_the_task_does_not_name_is_not_written_and_the_coder_is_told(
        tmp_path: Path) -> None:
    # signup_email: the 0.5B gave the code back as it was and changed the test's expected
    # values until it passed; the review (advisory) let it through
    repo = make_repo(tmp_path)
    loosened = TEST_CALC.replace("== 5", "== -1")
    coder = ScriptedModel([text(block("calc.py", BAD_CALC) + block("tests/test_calc.py", loosened)
                                + block("tests/test_more.py", "x = 1\n")),
                           text(block("calc.py", GOOD_CALC))], name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form())

    assert summary["verdict"] == "pass"
    told = coder.calls[1]["messages"][-1]["content"]
    assert "tests/test_calc.py: not written: it is an existing test" in told
    writes = [json.loads(e["arguments"])["path"] for e in read_events(Path(summary["run_dir"]))
              if e["type"] == "tool_call"]
    assert writes == ["tests/test_more.py", "calc.py"]  # a new test file is the coder's to add
    diff = (Path(summary["run_dir"]) / "round-1" / "diff.patch").read_text()
    assert "tests/test_calc.py" not in diff


def test_a_test_the_task_names_is_the_coders_to_change(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    fixed_test = TEST_CALC + "assert calc.add(0, 0) == 0\n"
    coder = ScriptedModel([text(block("calc.py", GOOD_CALC)
                                + block("tests/test_calc.py", fixed_test))], name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(), task="fix add and cover 0 + 0 in tests/test_calc.py")
    diff = (Path(summary["run_dir"]) / "round-1" / "diff.patch").read_text()
    assert summary["verdict"] == "pass" and "+assert calc.add(0, 0) == 0" in diff


def test_a_path_outside_the_checkout_is_refused_like_any_write(tmp_path: Path) -> None:
    outside = tmp_path / "outside.py"
    coder = ScriptedModel([text(block("../outside.py", "x = 1\n") + block("calc.py", GOOD_CALC))],
                          name="coder")
    summary = run(tmp_path, make_repo(tmp_path),
                  ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder, cfg=files_form())
    assert not outside.exists()
    writes = [e for e in read_events(Path(summary["run_dir"])) if e["type"] == "tool_call"]
    assert [(w["name"], w["ok"]) for w in writes] == [("write", False), ("write", True)]
    assert summary["verdict"] == "pass"


def test_the_turn_bound_holds(tmp_path: Path) -> None:
    wrong = text(block("calc.py", "def add(a, b):\n    return a * b\n"))
    coder = ScriptedModel([wrong, wrong], name="coder")
    repo = make_repo(tmp_path)
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI)]), coder,
                  cfg=files_form(max_rounds=1, coder_max_turns=2))
    assert summary["verdict"] == "fail" and len(coder.calls) == 2
    assert git(repo, "status", "--porcelain") == ""


def test_the_form_is_checked_when_the_config_is_read(tmp_path: Path) -> None:
    config = tmp_path / "agent-node.toml"
    config.write_text('[loop]\ncoder = "files"\n')
    assert load_config(config).loop.coder == "files"
    config.write_text('[loop]\ncoder = "diff"\n')
    with pytest.raises(ConfigError, match=r"loop.coder' must be one of 'tools', 'files', "
                                          r"not 'diff'"):
        load_config(config)


def test_a_file_given_back_unchanged_is_not_written_and_the_model_is_told(
        tmp_path: Path) -> None:
    coder = ScriptedModel([
        text("Done.\n\n" + block("calc.py", BAD_CALC)),  # the file as it was
        text(block("calc.py", GOOD_CALC)),
    ], name="coder")
    summary = run(tmp_path, make_repo(tmp_path),
                  ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(max_rounds=1))
    told = coder.calls[1]["messages"][-1]["content"]
    assert "calc.py: unchanged" in told and "Nothing has changed yet" in told
    assert "add(2, 3)" not in told  # no test run for an unchanged checkout
    writes = [e for e in read_events(Path(summary["run_dir"])) if e["type"] == "tool_call"]
    assert len(writes) == 1 and summary["verdict"] == "pass"


def test_the_reminder_shows_the_form_with_a_file_of_this_repository(tmp_path: Path) -> None:
    coder = ScriptedModel([text("I would change add."), text("Still just words.")],
                          name="coder")
    run(tmp_path, make_repo(tmp_path), ScriptedModel([as_json(NOT_UI)]), coder,
        cfg=files_form(max_rounds=1))
    reminder = coder.calls[1]["messages"][-1]["content"]
    # the file as it is, not a made-up file or a placeholder the model would copy
    assert "calc.py\n```\n" + BAD_CALC in reminder


def test_blank_lines_are_not_the_change_and_each_reply_is_told_what_it_changed(
        tmp_path: Path) -> None:
    coder = ScriptedModel([
        text(block("calc.py", "\n" + BAD_CALC + "\n\n")),  # only blank lines added
        text(block("calc.py", "def add(a, b):\n    return a * b\n")),
        text(block("calc.py", GOOD_CALC)),
    ], name="coder")
    summary = run(tmp_path, make_repo(tmp_path),
                  ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(max_rounds=1))
    blank, wrong = (c["messages"][-1]["content"] for c in coder.calls[1:])
    assert "Nothing has changed yet" in blank and "add(2, 3)" not in blank
    assert "- calc.py: 1 line added, 1 removed" in wrong
    # not the diff itself: the Qwen coders copied its marks into the files they wrote
    assert "+    return a * b" not in wrong and "```diff" not in wrong
    assert "add(2, 3) = 6" in wrong  # and the tests' output
    assert summary["verdict"] == "pass"


def test_replies_after_the_first_are_sampled_when_retry_temperature_is_set(
        tmp_path: Path) -> None:
    wrong = "def add(a, b):\n    return a * b\n"
    coder = ScriptedModel([text(block("calc.py", wrong)), text(block("calc.py", GOOD_CALC))],
                          name="coder")
    run(tmp_path, make_repo(tmp_path), ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
        cfg=files_form(retry_temperature=0.7))
    first, second = coder.calls
    assert first["sampling"] is None  # greedy: the model's best guess
    assert second["sampling"] == {"temperature": 0.7, "top_p": 0.8, "seed": 1001}

    coder = ScriptedModel([text(block("calc.py", wrong)), text(block("calc.py", GOOD_CALC))],
                          name="coder")
    (tmp_path / "again").mkdir()
    run(tmp_path / "again", make_repo(tmp_path / "again"),
        ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder, cfg=files_form())
    assert [c["sampling"] for c in coder.calls] == [None, None]  # the default stays greedy


def test_a_coder_of_no_words_gives_the_review_no_report_to_weigh(tmp_path: Path) -> None:
    orch = ScriptedModel([as_json(NOT_UI), as_json(PASS)])
    run(tmp_path, make_repo(tmp_path), orch,
        ScriptedModel([text(block("calc.py", GOOD_CALC))], name="coder"), cfg=files_form())
    review = orch.calls[1]["messages"][-1]["content"]
    assert "The coder wrote no report; judge the diff and the tests." in review
    assert "a claim, not evidence" not in review


def test_a_python_file_that_would_no_longer_compile_is_not_written_and_the_model_is_told_why(
        tmp_path: Path) -> None:
    marked = "def add(a, b):\n-    return a - b\n+    return a + b\n"  # a diff, as a file
    coder = ScriptedModel([text(block("calc.py", marked)), text(block("calc.py", GOOD_CALC))],
                          name="coder")
    repo = make_repo(tmp_path)
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(max_rounds=1))
    told = coder.calls[1]["messages"][-1]["content"]
    assert "calc.py: not written: it would not compile: line 2" in told
    assert "`-    return a - b`" in told and "a diff's mark, not code" in told
    assert "calc.py stays as it was" in told and "Your changes so far: none" in told
    assert "add(2, 3)" not in told  # no test run on a checkout the reply did not mean
    events = read_events(Path(summary["run_dir"]))
    assert [e["arguments"] for e in events if e["type"] == "tool_call"] == [
        '{"path": "calc.py"}']  # only the good file was written
    assert summary["verdict"] == "pass" and summary["rounds"] == 1


def test_a_file_that_did_not_compile_before_or_is_new_or_not_python_is_written_as_given(
        tmp_path: Path) -> None:
    from agent_node.loop.files_coder import _breaks

    (tmp_path / "old.py").write_text("def f[T](x: T) -> T: ...\n" if sys.version_info < (3, 12)
                                     else "print 'py2'\n")  # this Python cannot compile it
    (tmp_path / "page.html").write_text("<p>\n")
    (tmp_path / "ok.py").write_text("x = 1\n")
    assert _breaks(tmp_path, "old.py", "y = (\n") == ""
    assert _breaks(tmp_path, "new.py", "y = (\n") == ""
    assert _breaks(tmp_path, "page.html", "+ <p>\n") == ""
    assert _breaks(tmp_path, "ok.py", "x = 2\n") == ""
    assert "line 1" in _breaks(tmp_path, "ok.py", "x = (\n")
    assert "diff's mark" not in _breaks(tmp_path, "ok.py", "x = (\n")
    assert "would not compile" in _breaks(tmp_path, "ok.py", "x = 1\0\n")  # a null byte
    # nested past what the compiler takes: not judged, and nothing raises
    assert _breaks(tmp_path, "ok.py", "x = " + "+".join(["a"] * 200_000) + "\n") == ""


def test_a_failed_rounds_edits_to_existing_tests_are_put_back_before_the_next(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    edited = "import calc\n\nassert calc.add(2, 3) == -2, 'the edited expectation'\n"
    coder = ScriptedModel([
        text(block("tests/test_calc.py", edited)),  # round 1: the test bent to the code
        text(block("calc.py", GOOD_CALC)),  # round 2: the code fixed
    ], name="coder")
    # a task that names the test lets the coder write it; the gate holds it to the original
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(coder_max_turns=1),
                  task="make add() add, as tests/test_calc.py checks")

    assert summary["verdict"] == "pass" and summary["rounds"] == 2
    brief2 = coder.calls[1]["messages"][1]["content"]
    shown = brief2[brief2.index("# The files, as they are now"):brief2.index("# How the work")]
    assert "the edited expectation" not in brief2  # neither the edit nor its stale test output
    assert TEST_CALC.rstrip("\n") in shown  # the test as the user wrote it
    assert "edited existing tests (tests/test_calc.py); they are back as they were" in brief2
    assert "add(2, 3) = -1" in brief2  # what the tests say now, on the code as it is
    diff = (Path(summary["run_dir"]) / "round-2" / "diff.patch").read_text()
    assert "tests/test_calc.py" not in diff and "+    return a + b" in diff
    notes = [e["text"] for e in read_events(Path(summary["run_dir"])) if e["type"] == "note"]
    assert any("put back as they were before round 2" in n for n in notes)


def test_test_edits_the_review_accepted_stay_for_the_next_round(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    renamed = TEST_CALC + "\nassert calc.plus(1, 1) == 2\n"  # the task asks for the new name
    coder = ScriptedModel([
        text(block("tests/test_calc.py", renamed) + block("calc.py", GOOD_CALC
                                                           + "\n\nplus = add\n")),
        text(block("calc.py", GOOD_CALC + "\n\ndef plus(a, b):\n    return a + b\n")),
    ], name="coder")
    wants_more = {"verdict": "fail", "reasons": ["plus must be a def"],
                  "fixes": ["define plus with def"], "tests_change_ok": True}
    orch = ScriptedModel([as_json(NOT_UI), as_json(wants_more), as_json(PASS)])
    summary = run(tmp_path, repo, orch, coder, cfg=files_form(coder_max_turns=1))

    assert summary["verdict"] == "pass" and summary["rounds"] == 2
    brief2 = coder.calls[1]["messages"][1]["content"]
    assert "calc.plus(1, 1)" in brief2 and "they are back as they were" not in brief2


def test_with_refuse_repeats_a_reply_giving_back_the_files_before_it_ends_the_round(
        tmp_path: Path) -> None:
    times = text(block("calc.py", "def add(a, b):\n    return a * b\n"))
    minus = text(block("calc.py", "def add(a, b):\n    return a - b\n"))
    again = text("Fixed it properly this time.\n\n"  # other words, the same file
                 + block("calc.py", "def add(a, b):\n    return a - b\n"))
    script = [times, minus, times, minus, again, text(block("calc.py", GOOD_CALC))]

    coder = ScriptedModel(list(script), name="coder")
    summary = run(tmp_path, make_repo(tmp_path), ScriptedModel([as_json(NOT_UI)]), coder,
                  cfg=files_form(max_rounds=1, coder_max_turns=6, refuse_repeats=True))
    assert summary["verdict"] == "fail" and len(coder.calls) == 5  # an older reply goes on
    done = next(e for e in read_events(Path(summary["run_dir"])) if e["type"] == "coder_done")
    assert done["stopped"] == "repeat" and done["turns"] == 5
    assert "reply 5 gave back the files of the one before" in done["report"]

    coder = ScriptedModel(list(script), name="coder")  # off: the turns left are asked for
    (tmp_path / "off").mkdir()
    summary = run(tmp_path / "off", make_repo(tmp_path / "off"),
                  ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(max_rounds=1, coder_max_turns=6))
    assert summary["verdict"] == "pass" and len(coder.calls) == 6
