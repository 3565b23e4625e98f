"""What the loop shows and checks for the coder as it works: the repository's files and the
tests' output in the brief, the tests' result after each change, no finish before a change."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from scripted_model import ScriptedModel, as_json, call
from user_repo import BAD_CALC, GOOD_CALC, NOT_UI, PASS, isolate, make_repo, run

from agent_node.config import AgentConfig
from agent_node.loop.context import repo_context
from agent_node.model import Reply
from agent_node.runs import read_events


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def checks_on(**loop: int) -> AgentConfig:
    """The [loop] keys this file is about, on (they are off by default until the bench says)."""
    cfg = AgentConfig()
    cfg.loop.brief_chars, cfg.loop.tests_first = 12_000, True
    cfg.loop.test_after_edit, cfg.loop.finish_needs_change = True, True
    for key, value in loop.items():
        setattr(cfg.loop, key, value)
    return cfg


def _tool_results(coder: ScriptedModel) -> list[str]:
    return [m["content"] for m in coder.calls[-1]["messages"] if m["role"] == "tool"]


def test_the_brief_shows_the_files_and_the_tests_run_before_any_change(tmp_path: Path) -> None:
    coder = ScriptedModel([call("write", path="calc.py", content=GOOD_CALC),
                           call("finish", summary="fixed")], name="coder")
    run(tmp_path, make_repo(tmp_path), ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
        cfg=checks_on())
    brief = coder.calls[0]["messages"][1]["content"]
    assert "calc.py\n```\n" + BAD_CALC.rstrip("\n") + "\n```" in brief
    assert "The tests, run before any change" in brief and "fail (exit 1)" in brief
    assert "add(2, 3) = -1" in brief  # the failing assertion itself


def test_each_edit_shows_the_coder_the_tests_result(tmp_path: Path) -> None:
    coder = ScriptedModel([call("write", path="calc.py",
                                content="def add(a, b):\n    return a * b\n"),
                           call("write", path="calc.py", content=GOOD_CALC),
                           call("finish", summary="fixed")], name="coder")
    summary = run(tmp_path, make_repo(tmp_path),
                  ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder, cfg=checks_on())
    wrong, right, _ = _tool_results(coder) + [""]
    assert wrong.startswith("replaced calc.py") and "fail (exit 1)" in wrong
    assert "add(2, 3) = 6" in wrong
    assert right.startswith("replaced calc.py") and right.endswith("pass.")
    assert summary["verdict"] == "pass"


def test_finish_is_refused_while_nothing_changed_and_the_coder_goes_on(tmp_path: Path) -> None:
    coder = ScriptedModel([call("finish", summary="nothing to do"),
                           call("write", path="calc.py", content=GOOD_CALC),
                           call("finish", summary="fixed")], name="coder")
    summary = run(tmp_path, make_repo(tmp_path),
                  ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder, cfg=checks_on())
    assert summary["verdict"] == "pass" and summary["rounds"] == 1
    refusal = _tool_results(coder)[0]
    assert refusal.startswith("error: finish refused") and "no file" in refusal
    calls = [e for e in read_events(Path(summary["run_dir"])) if e["type"] == "tool_call"]
    assert [(c["name"], c["ok"], c.get("refused", False)) for c in calls] == [
        ("finish", False, True), ("write", True, False), ("finish", True, False)]


def _allowed(options: dict) -> list[str] | None:
    """The tools a call may pick from, as the coder asked the node (None: any tool)."""
    choice = options["tool_choice"]
    if choice == "required":
        return None
    return [t["function"]["name"] for t in choice["allowed_tools"]["tools"]]


def test_finish_is_withheld_from_the_call_until_the_checkout_changes_while_the_prompt_keeps_it(
        tmp_path: Path) -> None:
    coder = ScriptedModel([call("read", path="calc.py"),
                           call("write", path="calc.py", content=GOOD_CALC),
                           call("finish", summary="fixed")], name="coder")
    run(tmp_path, make_repo(tmp_path), ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
        cfg=checks_on())
    allowed = [_allowed(c) for c in coder.calls]
    assert allowed[0] is not None and allowed[1] is not None and allowed[2] is None
    assert "finish" not in allowed[0] and {"read", "edit", "write"} <= set(allowed[0])
    assert allowed[0] == allowed[1]
    listed = [[t["name"] for t in c["tools"]] for c in coder.calls]
    assert all("finish" in names for names in listed) and listed[0] == listed[2]


def test_with_the_check_off_every_call_may_finish(tmp_path: Path) -> None:
    coder = ScriptedModel([call("finish", summary="nothing to do")], name="coder")
    run(tmp_path, make_repo(tmp_path), ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
        cfg=checks_on(finish_needs_change=False, max_rounds=1))
    assert [_allowed(c) for c in coder.calls] == [None]


def test_a_repeated_call_is_not_run_again_and_its_tool_is_withheld_for_one_turn(
        tmp_path: Path) -> None:
    coder = ScriptedModel([call("read", path="calc.py"), call("read", path="calc.py"),
                           call("write", path="calc.py", content=GOOD_CALC),
                           call("read", path="calc.py"), call("finish", summary="fixed")],
                          name="coder")
    summary = run(tmp_path, make_repo(tmp_path),
                  ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=checks_on(refuse_repeats=True, test_after_edit=False))
    assert summary["verdict"] == "pass"
    results = _tool_results(coder)
    assert "return a - b" in results[0]
    assert results[1].startswith("error: not run: this read call is the same as your last one")
    calls = [e for e in read_events(Path(summary["run_dir"])) if e["type"] == "tool_call"]
    assert [(c["name"], c["ok"], c.get("refused", False)) for c in calls] == [
        ("read", True, False), ("read", False, True), ("write", True, False),
        ("read", True, False), ("finish", True, False)]
    allowed = [_allowed(c) for c in coder.calls]
    assert "read" in allowed[1] and "finish" not in allowed[1]  # nothing repeated yet
    assert "read" not in allowed[2] and "finish" not in allowed[2]  # after the repeat
    assert allowed[3] is None  # changed: any tool, read included, for the call after the write


def test_a_repeat_is_run_when_the_guard_is_off(tmp_path: Path) -> None:
    coder = ScriptedModel([call("read", path="calc.py"), call("read", path="calc.py"),
                           call("write", path="calc.py", content=GOOD_CALC),
                           call("finish", summary="fixed")], name="coder")
    run(tmp_path, make_repo(tmp_path), ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
        cfg=checks_on(test_after_edit=False))
    first, second = _tool_results(coder)[:2]
    assert first == second and "return a - b" in second


def test_with_edit_first_the_first_call_may_only_change_a_file(tmp_path: Path) -> None:
    coder = ScriptedModel([call("write", path="calc.py", content=GOOD_CALC),
                           call("read", path="calc.py"), call("finish", summary="fixed")],
                          name="coder")
    run(tmp_path, make_repo(tmp_path), ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
        cfg=checks_on(edit_first=True, test_after_edit=False))
    allowed = [_allowed(c) for c in coder.calls]
    assert sorted(allowed[0] or []) == ["edit", "write"] and allowed[1:] == [None, None]


def test_edit_first_needs_the_files_in_the_brief(tmp_path: Path) -> None:
    coder = ScriptedModel([call("read", path="calc.py"),
                           call("write", path="calc.py", content=GOOD_CALC),
                           call("finish", summary="fixed")], name="coder")
    run(tmp_path, make_repo(tmp_path), ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
        cfg=checks_on(edit_first=True, brief_chars=0, test_after_edit=False))
    assert "read" in (_allowed(coder.calls[0]) or [])


def test_in_a_fix_round_finish_is_withheld_until_something_changes_since_the_last_check(
        tmp_path: Path) -> None:
    half = "def add(a, b):\n    return a * b\n"  # a change, and still wrong
    coder = ScriptedModel([call("write", path="calc.py", content=half),
                           call("finish", summary="fixed"),
                           call("read", path="calc.py"),
                           call("write", path="calc.py", content=GOOD_CALC),
                           call("finish", summary="fixed now")], name="coder")
    summary = run(tmp_path, make_repo(tmp_path),
                  ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=checks_on(test_after_edit=False))
    assert summary["verdict"] == "pass" and summary["rounds"] == 2
    allowed = [_allowed(c) for c in coder.calls]
    # round 2 starts from round 1's change, yet finish waits for a change of its own
    assert allowed[1] is None and "finish" not in allowed[2] and "finish" not in allowed[3]
    assert allowed[4] is None


def test_a_change_undone_is_no_change_again(tmp_path: Path) -> None:
    """The check is the gate's own: a diff against the start, not "was anything written"."""
    coder = ScriptedModel([call("write", path="calc.py", content=GOOD_CALC),
                           call("write", path="calc.py", content=BAD_CALC),
                           call("finish", summary="done")], name="coder")
    cfg = checks_on(max_rounds=1, coder_max_turns=3)
    summary = run(tmp_path, make_repo(tmp_path), ScriptedModel([as_json(NOT_UI)]), coder,
                  cfg=cfg)
    calls = [e for e in read_events(Path(summary["run_dir"])) if e["type"] == "tool_call"]
    assert (calls[-1]["name"], calls[-1].get("refused")) == ("finish", True)
    assert summary["verdict"] == "fail"


def test_by_default_the_checks_are_off_the_coder_sees_a_file_list_and_may_finish_at_once(
        tmp_path: Path) -> None:
    cfg = AgentConfig()
    cfg.loop.max_rounds = 1
    coder = ScriptedModel([call("write", path="calc.py", content=GOOD_CALC),
                           call("finish", summary="fixed")], name="coder")
    run(tmp_path, make_repo(tmp_path), ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
        cfg=cfg)
    brief = coder.calls[0]["messages"][1]["content"]
    assert "- calc.py" in brief and "return a - b" not in brief and "run before" not in brief
    assert _tool_results(coder)[0].startswith("replaced calc.py") and "tests" not in \
        _tool_results(coder)[0]


def test_files_the_task_names_come_first_and_what_does_not_fit_is_outlined(
        tmp_path: Path) -> None:
    (tmp_path / "big.py").write_text("import os\n\n\nclass Big:\n    def one(self):\n"
                                     + "        x = 1\n" * 400 + "\n\ndef two():\n    pass\n")
    (tmp_path / "small.py").write_text("def small():\n    return 1\n")
    (tmp_path / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    shown = repo_context(tmp_path, ["big.py", "logo.png", "small.py"], "fix small()", 600)
    assert [p for p, _ in shown.whole] == ["small.py"]
    assert shown.outlines == [("big.py", ["class Big:", "    def one(self):", "def two():"])]
    assert repo_context(tmp_path, ["small.py"], "x", 0).whole == []


def test_a_link_the_coder_made_to_a_hidden_file_is_never_shown(tmp_path: Path) -> None:
    """The sandbox hides the record key from the coder; a link to it in the checkout must not
    bring it into the next round's brief (read by the loop, outside the sandbox) or the record."""
    from agent_node.loop import orchestrator

    key = Path(os.environ["STUDIO_CODER_KEY"])  # made 0600 when the run starts
    work: list[Path] = []
    real = orchestrator.Checkout.create

    def create(*args: Any, **kw: Any) -> Any:
        checkout = real(*args, **kw)
        work.append(checkout.work)
        return checkout

    def link(messages: object, options: object) -> Reply:  # what `ln -sf` in its bash leaves
        (work[0] / "calc.py").unlink()
        (work[0] / "calc.py").symlink_to(key)
        return call("finish", summary="linked")

    coder = ScriptedModel([link, call("finish", summary="again")], name="coder")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(orchestrator.Checkout, "create", create)
        summary = run(tmp_path, make_repo(tmp_path), ScriptedModel([as_json(NOT_UI)]), coder,
                      cfg=checks_on(max_rounds=2, tests_first=False, finish_needs_change=False))
    secret = key.read_text().strip()
    assert len(coder.calls) == 2 and "calc.py" in coder.calls[1]["messages"][1]["content"]
    assert secret not in coder.calls[1]["messages"][1]["content"]  # round 2's brief
    assert not any(secret in f.read_text(errors="replace")
                   for f in Path(summary["run_dir"]).rglob("*") if f.is_file())
