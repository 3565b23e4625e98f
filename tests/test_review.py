"""A round's verdict (agent_node/loop/review.py): the gate's failures, else the review, binding
or advisory; an unasked change to existing tests fails either way."""

from __future__ import annotations

from pathlib import Path

import pytest
from scripted_model import ScriptedModel, as_json, call
from user_repo import NOT_UI, fix_calc, isolate, make_repo, run

from agent_node.config import AgentConfig
from agent_node.runs import read_events


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def test_coder_that_edits_a_test_to_pass_is_flagged_and_fails(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    cheat = [call("write", path="tests/test_calc.py", content="assert True\n"),
             call("finish", summary="tests pass now")]
    # The judge is told about the edit; it says the test change was not asked for.
    review = {"verdict": "pass", "reasons": ["tests pass"], "fixes": [],
              "tests_change_ok": False}
    orch = ScriptedModel([as_json(NOT_UI), as_json(review)], name="orch")
    cfg = AgentConfig()
    cfg.loop.max_rounds = 1
    summary = run(tmp_path, repo, orch, ScriptedModel(cheat, name="coder"), cfg=cfg)

    review_prompt = orch.calls[1]["messages"][-1]["content"]
    assert "changes or deletes existing tests: tests/test_calc.py (modified)" in review_prompt
    assert summary["verdict"] == "fail"
    assert any("changed existing tests" in r and "tests/test_calc.py" in r
               for r in summary["reasons"])


REFUSAL = {"reasons": ["add() now adds, but the task wanted subtraction"], "verdict": "fail",
           "fixes": ["make add() subtract"], "tests_change_ok": True}


def test_a_binding_review_fails_a_change_the_tests_pass(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    cfg = AgentConfig()
    cfg.loop.max_rounds = 1
    orch = ScriptedModel([as_json(NOT_UI), as_json(REFUSAL)], name="orch")
    summary = run(tmp_path, repo, orch, ScriptedModel(fix_calc(), name="coder"), cfg=cfg)
    assert summary["verdict"] == "fail"
    (verdict,) = [e for e in read_events(Path(summary["run_dir"]))
                  if e["type"] == "round_verdict"]
    assert verdict["review"] == "fail" and verdict["fixes"] == ["make add() subtract"]


def test_an_advisory_review_is_recorded_and_shown_but_the_gate_decides(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    cfg = AgentConfig()
    cfg.loop.review = "advisory"
    orch = ScriptedModel([as_json(NOT_UI), as_json(REFUSAL)], name="orch")
    summary = run(tmp_path, repo, orch, ScriptedModel(fix_calc(), name="coder"), cfg=cfg)

    assert summary["verdict"] == "pass" and summary["rounds"] == 1
    (verdict,) = [e for e in read_events(Path(summary["run_dir"]))
                  if e["type"] == "round_verdict"]
    assert verdict["verdict"] == "pass" and verdict["review"] == "fail"
    assert verdict["fixes"] == []
    assert "loop.review is advisory" in verdict["reasons"][0]
    assert "the task wanted subtraction" in " ".join(summary["reasons"])  # shown at approval


def test_an_advisory_review_still_fails_an_unasked_test_change(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    cfg = AgentConfig()
    cfg.loop.review = "advisory"
    cfg.loop.max_rounds = 1
    cheat = [call("write", path="tests/test_calc.py", content="assert True\n"),
             call("finish", summary="tests pass now")]
    review = {**REFUSAL, "tests_change_ok": False}
    orch = ScriptedModel([as_json(NOT_UI), as_json(review)], name="orch")
    summary = run(tmp_path, repo, orch, ScriptedModel(cheat, name="coder"), cfg=cfg)
    assert summary["verdict"] == "fail"
    assert any("changed existing tests" in r for r in summary["reasons"])
    assert not any("advisory" in r for r in summary["reasons"])  # it did not pass
