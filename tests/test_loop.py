"""The agent loop's decisions, driven by scripted models over real git repos in tmp_path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from scripted_model import ScriptedModel, as_json, call, text
from user_repo import (
    BAD_CALC,
    GOOD_CALC,
    NOT_UI,
    PASS,
    TEST_CALC,
    calc_test_cmd,
    fingerprint,
    fix_calc,
    git,
    isolate,
    make_repo,
    run,
)

from agent_node.config import AgentConfig
from agent_node.loop import cli
from agent_node.qa.result import Failure, QAResult, VisualVerdict
from agent_node.runs import find_run, read_events, summarize
from studio_common.net import free_port

TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def test_happy_path_passes_and_approve_makes_one_commit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    before = git(repo, "rev-parse", "HEAD").strip()
    orch = ScriptedModel([as_json(NOT_UI), as_json(PASS)], name="orch")
    summary = run(tmp_path, repo, orch, ScriptedModel(fix_calc(), name="coder"))

    assert summary["verdict"] == "pass" and summary["rounds"] == 1
    assert (repo / "calc.py").read_text() == BAD_CALC  # nothing reaches the user before approve
    assert orch.calls[0]["response_format"]["required"]  # structured calls carry their schema
    run_dir = Path(summary["run_dir"])
    assert "+    return a + b" in (run_dir / "round-1" / "diff.patch").read_text()
    assert "add is fixed" in (run_dir / "report.html").read_text()

    assert cli.approve_main([summary["run_id"]]) == 0
    assert git(repo, "rev-list", "--count", f"{before}..HEAD").strip() == "1"
    assert git(repo, "rev-parse", "HEAD~1").strip() == before
    message = git(repo, "log", "-1", "--format=%B")
    assert "make add() add" in message and summary["run_id"] in message
    assert (repo / "calc.py").read_text() == GOOD_CALC
    assert git(repo, "status", "--porcelain") == ""
    assert f"studio-coder/{summary['run_id']}" not in git(repo, "branch", "--list")
    assert not (run_dir / "worktree").exists()
    assert summarize(run_dir)["state"] == "approved"
    assert cli.approve_main([summary["run_id"]]) == 1  # once only


def test_orchestrator_calls_open_with_the_same_instructions_whatever_the_task(
        tmp_path: Path) -> None:
    # The classify and review instructions are each call's system part, the same bytes for
    # every task, so the node pins their KV once (batching.segments). In the user message they
    # left the cache between one task's review and the next, minutes apart (docs/BENCHMARKS.md).
    calls: dict[str, list[list[dict[str, Any]]]] = {}
    for task in ("make add() add", "make add() return a + b, please"):
        where = tmp_path / str(len(calls))
        where.mkdir()
        orch = ScriptedModel([as_json(NOT_UI), as_json(PASS)], name="orch")
        run(where, make_repo(where), orch, ScriptedModel(fix_calc(), name="coder"), task=task)
        calls[task] = [c["messages"] for c in orch.calls]
    (classify_a, review_a), (classify_b, review_b) = calls.values()
    for a, b in ((classify_a, classify_b), (review_a, review_b)):
        assert [m["role"] for m in a] == [m["role"] for m in b] == ["system", "user"]
        assert a[0] == b[0] and a[1] != b[1]
        assert "make add()" not in a[0]["content"] and "make add() add" in a[1]["content"]
    assert "You sort a coding task" in classify_a[0]["content"]
    assert "You review a change" in review_a[0]["content"] and "```diff" in review_a[1]["content"]


def test_lying_coder_is_caught_and_round_two_gets_the_real_failure(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    coder = ScriptedModel([
        call("write", path="notes.txt", content="looked at it"),
        call("finish", summary="Fixed it. All tests pass."),
        *fix_calc(),
    ], name="coder")
    orch = ScriptedModel([as_json(NOT_UI), as_json(PASS)], name="orch")
    summary = run(tmp_path, repo, orch, coder)

    assert summary["verdict"] == "pass" and summary["rounds"] == 2
    verdicts = [e for e in read_events(Path(summary["run_dir"])) if e["type"] == "round_verdict"]
    assert verdicts[0]["verdict"] == "fail"
    assert "exited 1" in verdicts[0]["reasons"][0]
    round2 = coder.calls[2]["messages"]  # the first call of round 2's coder
    assert [m["role"] for m in round2] == ["system", "user"]  # a fresh context
    brief = round2[1]["content"]
    assert "AssertionError: add(2, 3) = -1" in brief  # the real test output, not the claim
    assert "All tests pass" not in json.dumps(round2)
    assert "notes.txt" not in json.dumps(round2)  # nothing of round 1's conversation


def test_a_change_that_reads_an_undefined_name_fails_though_the_tests_pass(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    untested = GOOD_CALC + "\n\ndef div(a, b):\n    if b == 0:\n        raise DivByZero(a)\n" \
        "    return a / b\n"
    coder = ScriptedModel([call("write", path="calc.py", content=untested),
                           call("finish", summary="fixed add, added div"), *fix_calc()])
    orch = ScriptedModel([as_json(NOT_UI), as_json(PASS)], name="orch")
    summary = run(tmp_path, repo, orch, coder)

    assert summary["verdict"] == "pass" and summary["rounds"] == 2
    events = read_events(Path(summary["run_dir"]))
    gate1 = next(e for e in events if e["type"] == "gate")
    assert gate1["test_exit"] == 0 and not gate1["passed"]  # the tests never call div
    assert any("calc.py:7 reads `DivByZero`" in f for f in gate1["failures"])
    brief2 = coder.calls[2]["messages"][1]["content"]
    assert "define or import `DivByZero`" in brief2
    assert len(orch.calls) == 2  # round 1 never reached the review


def test_failing_tool_becomes_its_result_and_the_loop_goes_on(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    coder = ScriptedModel([call("read", path="missing.py"), call("nonesuch"), *fix_calc()])
    orch = ScriptedModel([as_json(NOT_UI), as_json(PASS)])
    summary = run(tmp_path, repo, orch, coder)
    assert summary["verdict"] == "pass"
    tool_results = [m for m in coder.calls[2]["messages"] if m["role"] == "tool"]
    assert tool_results[0]["content"].startswith("error:") and "missing.py" in \
        tool_results[0]["content"]
    assert "'nonesuch'" in tool_results[1]["content"]


def test_empty_diff_for_a_change_fails(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"calc.py": GOOD_CALC, "tests/test_calc.py": TEST_CALC})
    cfg = AgentConfig()
    cfg.loop.max_rounds = 1
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI)]),
                  ScriptedModel([text("Nothing needed, it already works.")]), cfg=cfg)
    assert summary["verdict"] == "fail"
    assert any("no diff against the base" in r for r in summary["reasons"])


def test_a_change_of_blank_lines_alone_is_no_change(tmp_path: Path) -> None:
    # A whole-file coder that copies the file back with a blank line gone has changed nothing
    # the task asked for; the visible tests passing must not make that a pass.
    repo = make_repo(tmp_path, {"calc.py": GOOD_CALC, "tests/test_calc.py": TEST_CALC})
    cfg = AgentConfig()
    cfg.loop.max_rounds = 1
    coder = ScriptedModel([call("write", path="calc.py", content="\n" + GOOD_CALC + "  \n\n"),
                           call("finish", summary="Fixed the conversion.")])
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI)]), coder, cfg=cfg)
    gate = next(e for e in read_events(Path(summary["run_dir"])) if e["type"] == "gate")
    assert gate["files"] == ["M calc.py"] and gate["test_exit"] == 0
    assert not gate["passed"] and gate["changes_content"] is False
    assert summary["verdict"] == "fail"
    assert any("only adds or removes blank lines and spaces at line ends (calc.py)" in r
               for r in summary["reasons"])

def test_malformed_classification_is_retried_with_the_problem_named(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    orch = ScriptedModel([text("It is a backend task."), as_json({"ui": False}),
                          as_json(NOT_UI), as_json(PASS)])
    summary = run(tmp_path, repo, orch, ScriptedModel(fix_calc()))
    assert summary["verdict"] == "pass"
    assert "not valid JSON" in orch.calls[1]["messages"][-1]["content"]
    assert "does not match the schema" in orch.calls[2]["messages"][-1]["content"]


def test_coder_is_stopped_at_its_turn_limit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    cfg = AgentConfig()
    cfg.loop.max_rounds, cfg.loop.coder_max_turns = 1, 2
    coder = ScriptedModel([call("read", path="calc.py"), call("read", path="calc.py")])
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI)]), coder, cfg=cfg)
    done = [e for e in read_events(Path(summary["run_dir"])) if e["type"] == "coder_done"]
    assert done[0]["stopped"] == "max_turns" and done[0]["turns"] == 2
    assert summary["verdict"] == "fail"


def ui_repo(tmp_path: Path) -> Path:
    html = (TESTS / "fixtures" / "loop" / "pricing.html").read_text()
    return make_repo(tmp_path, {"index.html": html})


def phone_overflow_qa(calls: list[tuple[str, list[str]]]) -> Any:
    """A scripted QA result, to check exactly what the next round's brief carries.

    The same task against real Chromium is `test_ui_overflow_on_the_phone_found_by_chromium`.
    """

    def check(url: str, spec: list[str], out_dir: Path) -> QAResult:
        calls.append((url, spec))
        out_dir.mkdir(parents=True, exist_ok=True)
        shot = out_dir / "phone.png"
        shot.write_bytes(b"\x89PNG\r\n\x1a\n")
        import urllib.request

        served = urllib.request.urlopen(url, timeout=5).read().decode()
        assert "pricing-table" in served  # the worktree's page really is served
        return QAResult(url, out_dir, VisualVerdict("fail", [Failure(
            statement=spec[1], viewport="phone 390x844",
            evidence="document is 656 px wide in a 390 px viewport; .pricing-table overflows",
            fix="let .pricing-table wrap on narrow screens: max-width: 100%; flex-wrap: wrap")]),
            {"phone": shot})

    return check


def test_ui_task_that_overflows_on_the_phone_fails_with_a_phone_fix(tmp_path: Path) -> None:
    repo = ui_repo(tmp_path)
    ui = {"ui": True, "asks_for_change": True, "page": "index.html", "reason": "layout"}
    spec = {"statements": ["three plans side by side at desktop width",
                           "all three plans visible without horizontal scrolling on a phone",
                           "no console errors"]}
    edit = [call("write", path="index.html",
                 content=(repo / "index.html").read_text().replace("Team", "Team plan")),
            call("finish", summary="looks great on every screen")]
    cfg = AgentConfig()
    cfg.loop.max_rounds = 2
    calls: list[tuple[str, list[str]]] = []
    coder = ScriptedModel(edit + edit, name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(ui), as_json(spec)]), coder, cfg=cfg,
                  test_cmd="", qa=phone_overflow_qa(calls), task="show the plans as columns")

    assert summary["verdict"] == "fail" and summary["rounds"] == 2
    assert calls[0][0].endswith("/index.html") and calls[0][1] == spec["statements"]
    assert any("phone" in r and "flex-wrap" in r for r in summary["reasons"])
    round2_brief = coder.calls[2]["messages"][1]["content"]
    assert "at the phone 390x844 viewport" in round2_brief and "Fix: let .pricing-table" in \
        round2_brief
    report = (Path(summary["run_dir"]) / "report.html").read_text()
    assert "<img src='round-1/qa/phone.png'" in report


def test_last_round_failing_leaves_the_user_branch_and_files_byte_for_byte(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    (repo / "scratch.txt").write_text("my uncommitted work\n")  # the user's own changes
    (repo / "calc.py").write_text(BAD_CALC + "# my local edit\n")
    before = fingerprint(repo)
    wrong = [reply for body in ("a * b", "a ** b", "a * b + 1")  # a new mistake each round
             for reply in (call("write", path="calc.py", content=f"def add(a, b):\n    return "
                                f"{body}\n"),
                           call("finish", summary="done, tests pass"))]
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI)]),
                  ScriptedModel(wrong, name="coder"))

    assert summary["verdict"] == "fail" and summary["rounds"] == 3
    assert "still failing after 3 round(s)" in summary["reasons"][0]
    assert fingerprint(repo) == before
    notes = [e for e in read_events(Path(summary["run_dir"])) if e["type"] == "note"]
    assert "2 uncommitted file(s)" in notes[0]["text"]
    assert cli.approve_main([summary["run_id"]]) == 1  # a failed run is refused
    assert fingerprint(repo) == before


def same_mistake(rounds: int) -> ScriptedModel:
    wrong = [call("write", path="calc.py", content="def add(a, b):\n    return a * b\n"),
             call("finish", summary="done, tests pass")]
    return ScriptedModel(wrong * rounds, name="coder")


def test_a_round_that_repeats_the_one_before_ends_the_run(tmp_path: Path) -> None:
    """Round 2 leaves calc.py as round 1 did and fails the same way (the test run's timing
    aside), so round 3's coder would be given round 2's brief again: greedy, it would do the
    same. The run stops there and says why."""
    repo = make_repo(tmp_path)
    coder = same_mistake(3)
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI)]), coder)

    assert summary["verdict"] == "fail" and summary["rounds"] == 2
    assert summary["reasons"][0].startswith(
        "stopped after round 2: it left the checkout as round 1 did and failed the same way")
    assert len(coder.calls) == 4  # round 3's coder never ran


@pytest.mark.parametrize("loop", [{"stop_when_stalled": False},
                                  {"coder": "files", "retry_temperature": 0.7}],
                         ids=["turned-off", "sampled-retries"])
def test_a_repeating_round_runs_on_when_the_next_coder_could_differ_or_it_is_turned_off(
        tmp_path: Path, loop: dict[str, Any]) -> None:
    repo = make_repo(tmp_path)
    cfg = AgentConfig()
    for key, value in loop.items():
        setattr(cfg.loop, key, value)
    if cfg.loop.coder == "files":  # each round: two whole-file replies, the same mistake
        cfg.loop.coder_max_turns = 2
        reply = text("calc.py\n```python\ndef add(a, b):\n    return a * b\n```\n")
        coder = ScriptedModel([reply] * 6, name="coder")
    else:
        coder = same_mistake(3)
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI)]), coder, cfg=cfg)

    assert summary["verdict"] == "fail" and summary["rounds"] == 3
    assert "still failing after 3 round(s)" in summary["reasons"][0]


def test_approve_refuses_when_the_user_changed_the_same_file(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]),
                  ScriptedModel(fix_calc()))
    (repo / "calc.py").write_text(BAD_CALC + "# mine\n")
    before = fingerprint(repo)
    assert cli.approve_main([summary["run_id"]]) == 1
    assert fingerprint(repo) == before


def test_reject_removes_worktree_and_branch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]),
                  ScriptedModel(fix_calc()))
    branch = f"studio-coder/{summary['run_id']}"
    assert branch in git(repo, "branch", "--list")
    before = fingerprint(repo)
    assert cli.reject_main([summary["run_id"][:17]]) == 0  # a unique prefix will do
    assert branch not in git(repo, "branch", "--list")
    assert not (Path(summary["run_dir"]) / "worktree").exists()
    assert fingerprint(repo) == before
    assert summarize(find_run(summary["run_id"]))["state"] == "rejected"


def test_run_command_exit_codes_for_bad_input(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert cli.run_main(["do it", "--repo", str(plain)]) == 2
    repo = make_repo(tmp_path)
    assert cli.run_main(["do it", "--repo", str(repo), "--spec", str(tmp_path / "nope")]) == 2
    assert "spec file" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_killed_run_leaves_a_readable_record_and_the_branch_untouched(
        tmp_path: Path, sig: signal.Signals) -> None:
    repo = make_repo(tmp_path)
    before = fingerprint(repo)
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    proc = subprocess.Popen([sys.executable, str(TESTS / "fixtures" / "loop" / "slow_run.py"),
                             str(repo), str(home)], env=env)

    def stuck(what: str) -> str:  # where the victim is, from its own stack dump
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1)
        stacks = home / "stacks.txt"
        return f"{what}; its stacks:\n{stacks.read_text() if stacks.exists() else '(none)'}"

    try:
        # A loaded 2-core machine can take many seconds to start a run (imports, the sandbox's
        # probe, the checkout), so the wait is generous; the victim then sleeps 300 s.
        deadline = time.monotonic() + 90
        runs: list[Path] = []
        while not _reached_a_tool_call(runs := list((home / "runs").glob("*/events.jsonl"))):
            assert proc.poll() is None, "the slow run ended on its own"
            assert time.monotonic() < deadline, stuck("the run never reached a tool call")
            time.sleep(0.05)
        proc.send_signal(sig)
        try:
            proc.wait(90)  # far below the victim's 300 s sleep: a swallowed interrupt fails
        except subprocess.TimeoutExpired:
            pytest.fail(stuck(f"the run did not exit within 90 s of {sig.name}"))
    finally:
        proc.kill()
        proc.wait()

    run_dir = runs[0].parent
    summary = summarize(run_dir)
    assert fingerprint(repo) == before
    assert summary["rounds"] == 1
    if sig == signal.SIGINT:  # Ctrl-C: the `finally` ran, the verdict says what happened
        assert summary["verdict"] == "interrupted"
        assert "interrupted" in (run_dir / "report.html").read_text()
        return
    assert summary["verdict"] == "incomplete"
    assert not (run_dir / "report.html").exists()  # the kill came before any `finally`
    assert cli.runs_main([]) == 0  # listing the runs rebuilds the report from events.jsonl
    assert "No verdict was recorded" in (run_dir / "report.html").read_text()
    assert cli.reject_main([run_dir.name]) == 0  # and it can be cleaned up
    assert fingerprint(repo) == before


def _reached_a_tool_call(runs: list[Path]) -> bool:
    return bool(runs) and any(e["type"] == "tool_call" for e in read_events(runs[0].parent))


def test_unreachable_inference_node_exits_3(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:

    repo = make_repo(tmp_path)
    port = free_port()  # a port nothing listens on
    config = tmp_path / "agent-node.toml"
    config.write_text(f'[inference]\ntarget = "127.0.0.1:{port}"\nconnect_timeout_s = 1.0\n')
    assert cli.run_main(["fix it", "--repo", str(repo), "--config", str(config)]) == 3
    assert f"127.0.0.1:{port}" in capsys.readouterr().err


class _FakeClient:
    def __init__(self, model: ScriptedModel) -> None:
        self._model = model

    def model(self, role: str = "coder") -> ScriptedModel:
        return self._model

    def describer(self) -> None:
        return None

    def close(self) -> None:
        pass


def test_run_json_prints_only_the_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    repo = make_repo(tmp_path)
    model = ScriptedModel([as_json(NOT_UI), *fix_calc(), as_json(PASS)])
    monkeypatch.setattr(cli, "_connect", lambda cfg: _FakeClient(model))
    code = cli.run_main(["make add() add", "--repo", str(repo), "--test-cmd", calc_test_cmd(),
                         "--json"])
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert code == 0 and summary["verdict"] == "pass" and summary["rounds"] == 1
    assert summary["models"] == ["scripted"] and set(summary["tokens"]) == {
        "prompt", "cached", "recomputed", "completion", "reasoning", "proposed", "accepted"}
    assert Path(summary["run_dir"]).is_dir()
    assert "gate" in err  # progress went to stderr
    assert cli.runs_main([]) == 0
    assert summary["run_id"] in capsys.readouterr().out


def _chromium_available() -> bool:
    import importlib.util

    if not (importlib.util.find_spec("playwright") and importlib.util.find_spec("agent_node.qa")
            and hasattr(importlib.import_module("agent_node.qa"), "check_page")):
        return False
    import shutil

    return bool(shutil.which("chromium") or shutil.which("google-chrome")
                or os.environ.get("STUDIO_CODER_BROWSER"))


@pytest.mark.skipif(not _chromium_available(), reason="needs Playwright and a Chromium")
def test_ui_overflow_on_the_phone_found_by_chromium(tmp_path: Path) -> None:
    from agent_node.loop.visual import ChromiumQA

    repo = ui_repo(tmp_path)
    ui = {"ui": True, "asks_for_change": True, "page": "index.html", "reason": "layout"}
    spec = {"statements": ["three plans side by side at desktop width",
                           "all three plans visible without horizontal scrolling on a phone"]}
    edit = [call("write", path="index.html",
                 content=(repo / "index.html").read_text().replace("Team", "Teams")),
            call("finish", summary="columns done, responsive everywhere")]
    cfg = AgentConfig()
    cfg.loop.max_rounds = 1
    qa = ChromiumQA(cfg, model=None, describer=None)  # facts-only judge: the measured overflow
    try:
        summary = run(tmp_path, repo, ScriptedModel([as_json(ui), as_json(spec)]),
                      ScriptedModel(edit), cfg=cfg, test_cmd="", qa=qa,
                      task="show the plans as columns")
    finally:
        qa.close()
    assert summary["verdict"] == "fail"
    reasons = " ".join(summary["reasons"])
    assert "at the phone viewport" in reasons and "flex-wrap" in reasons
    qa_event = next(e for e in read_events(Path(summary["run_dir"])) if e["type"] == "qa")
    assert {f["viewport"] for f in qa_event["failures"]} == {"phone"}
    assert (Path(summary["run_dir"]) / "round-1" / "qa" / "phone.png").stat().st_size > 1000
    assert "round-1/qa/phone.png" in (Path(summary["run_dir"]) / "report.html").read_text()
