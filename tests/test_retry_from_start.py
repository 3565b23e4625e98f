"""[loop] retry_from_start: a round whose change fails the tests (or the task's examples) is
undone before the next, whose coder starts again from the start, told what was wrong with the
attempt; with the files coder and retry_temperature, its first reply is sampled."""

from __future__ import annotations

from pathlib import Path

import pytest
from scripted_model import ScriptedModel, as_json, text
from test_files_coder import block, files_form
from user_repo import BAD_CALC, GOOD_CALC, NOT_UI, PASS, TEST_CALC, git, isolate, make_repo, run

from agent_node.loop.checkout import Checkout
from agent_node.runs import read_events

WRONG = "def add(a, b):\n    return a * b\n"


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def briefs(coder: ScriptedModel) -> list[str]:
    return [c["messages"][1]["content"] for c in coder.calls if len(c["messages"]) == 2
            and c["messages"][0]["role"] == "system"]


def test_a_round_whose_tests_fail_is_undone_and_the_next_starts_from_the_start(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    coder = ScriptedModel([
        text(block("calc.py", WRONG) + block("helper.py", "X = 1\n")),  # round 1: wrong
        text(block("calc.py", GOOD_CALC)),  # round 2
    ], name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(retry_from_start=True, coder_max_turns=1, tests_first=True,
                                 retry_temperature=0.7))

    assert summary["verdict"] == "pass" and summary["rounds"] == 2
    first, second = briefs(coder)
    assert "its change is undone: the checkout\nis as it was at the start" in second
    assert "still holds its changes" not in second
    assert "add(2, 3) = 6" in second  # what was wrong with the attempt
    # the files as at the start, and the tests run before any change: round 1's brief, to
    # where it says what failed (and so one prefix the node's cache serves)
    assert second.startswith(first[:first.index("# The task, once more")].rstrip())
    assert "return a - b" in second and "return a * b\n```" not in second
    # a fresh draw: greedy, round 2's first reply would be round 1's again
    assert [c["sampling"] for c in coder.calls] == [
        None, {"temperature": 0.7, "top_p": 0.8, "seed": 2000}]
    diff = (Path(summary["run_dir"]) / "round-2" / "diff.patch").read_text()
    assert "helper.py" not in diff and "+    return a + b" in diff
    notes = [e["text"] for e in read_events(Path(summary["run_dir"])) if e["type"] == "note"]
    assert any("round 1's change (calc.py, helper.py) is undone" in n for n in notes)


def test_off_by_default_the_next_round_fixes_the_change_in_place(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    coder = ScriptedModel([text(block("calc.py", WRONG) + block("helper.py", "X = 1\n")),
                           text(block("calc.py", GOOD_CALC))], name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(coder_max_turns=1, retry_temperature=0.7))

    assert summary["verdict"] == "pass" and summary["rounds"] == 2
    second = briefs(coder)[1]
    assert "still holds its changes" in second and "return a * b" in second
    assert coder.calls[1]["sampling"] is None
    diff = (Path(summary["run_dir"]) / "round-2" / "diff.patch").read_text()
    assert "helper.py" in diff


def test_a_change_that_edited_the_tests_is_undone_whole_and_its_test_output_left_out(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    edited = "import calc\n\nassert calc.add(2, 3) == -2, 'the edited expectation'\n"
    wrong = "def add(a, b):\n    return a - b - 4\n"
    coder = ScriptedModel([
        text(block("tests/test_calc.py", edited) + block("calc.py", wrong)),
        text(block("calc.py", GOOD_CALC)),
    ], name="coder")
    # the task names the test, so the coder may write it; the gate holds it to the original
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(retry_from_start=True, coder_max_turns=1),
                  task="make add() add, as tests/test_calc.py checks")

    assert summary["verdict"] == "pass" and summary["rounds"] == 2
    second = briefs(coder)[1]
    assert "it edited existing tests (tests/test_calc.py), which must stay" in second
    assert "the edited expectation" not in second and "a - b - 4" not in second
    diff = (Path(summary["run_dir"]) / "round-2" / "diff.patch").read_text()
    assert "tests/test_calc.py" not in diff


def test_a_round_failed_only_by_the_review_is_not_undone(tmp_path: Path) -> None:
    # the tests pass: what the review asks for is built on the change, not from the start
    repo = make_repo(tmp_path)
    coder = ScriptedModel([text(block("calc.py", GOOD_CALC)),
                           text(block("calc.py", GOOD_CALC + "\n\nplus = add\n"))],
                          name="coder")
    wants_more = {"verdict": "fail", "reasons": ["no plus"], "fixes": ["add plus = add"],
                  "tests_change_ok": True}
    orch = ScriptedModel([as_json(NOT_UI), as_json(wants_more), as_json(PASS)])
    summary = run(tmp_path, repo, orch, coder,
                  cfg=files_form(retry_from_start=True, coder_max_turns=1))

    assert summary["verdict"] == "pass" and summary["rounds"] == 2
    assert "still holds its changes" in briefs(coder)[1]


def test_undo_restores_modified_and_deleted_files_and_removes_added_ones(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"calc.py": BAD_CALC, "tests/test_calc.py": TEST_CALC,
                                ".gitignore": "*.log\n", "notes.md": "keep\n"})
    base = git(repo, "rev-parse", "HEAD").strip()
    co = Checkout.create(repo, tmp_path / "co", base)
    (co.work / "calc.py").write_text(GOOD_CALC)
    (co.work / "notes.md").unlink()
    (co.work / "pkg").mkdir()
    (co.work / "pkg" / "new.py").write_text("x = 1\n")
    (co.work / "run.log").write_text("ignored\n")

    assert sorted(co.undo(base)) == ["calc.py", "notes.md", "pkg/new.py"]
    assert (co.work / "calc.py").read_text() == BAD_CALC
    assert (co.work / "notes.md").read_text() == "keep\n"
    assert not (co.work / "pkg" / "new.py").exists()
    assert (co.work / "run.log").exists()  # ignored: never part of a change
    assert not co.changed(base)
    assert co.undo(base) == []
