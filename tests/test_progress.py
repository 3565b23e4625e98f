"""Progress on stderr: each stage as it starts and ends with its time, and the model call in
flight with its step, the tokens it has streamed and its elapsed time."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console
from scripted_model import ScriptedModel, as_json
from test_loop import _chromium_available
from user_repo import NOT_UI, PASS, fix_calc, isolate, make_repo, run

from agent_node import activity
from agent_node.client import collect_reply
from agent_node.config import AgentConfig
from agent_node.events import InFlight, ModelCall, Stage
from agent_node.loop.progress import Progress
from agent_node.model import CallProgress
from agent_node.qa.result import QAResult, VisualVerdict
from agent_node.runs import read_events
from inference_node.api import pb


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def progress(terminal: bool = False, every_s: float = 10.0) -> tuple[Progress, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=200, highlight=False)
    return Progress(console, every_s=every_s), out


def test_gate_stages_are_shown_as_they_start_and_end_with_their_time(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"index.html": "<h1>Prices</h1>\n", "calc.py": "x = 1\n"})
    ui = {"ui": True, "asks_for_change": True, "page": "index.html", "reason": "a page"}

    def qa(url: str, spec: list[str], out_dir: Path) -> QAResult:
        with activity.stage("capture"):
            pass
        return QAResult(url, out_dir, VisualVerdict("pass"))

    show, out = progress()
    orch = ScriptedModel([as_json(ui), as_json({"statements": ["the title reads Prices"]}),
                          as_json(PASS)])
    summary = run(tmp_path, repo, orch, ScriptedModel(fix_calc()), qa=qa, test_cmd="true",
                  listeners=[show])

    text = out.getvalue()
    for stage in ("gate", "tests", "visual QA", "capture"):
        assert re.search(rf"s {re.escape(stage)} +round 1 started", text), text
        assert re.search(rf"s {re.escape(stage)} +round 1 done in \d+\.\ds", text), text
    assert text.index("tests") < text.index("visual QA") < text.index("capture")
    events = read_events(Path(summary["run_dir"]))
    stages = [(e["stage"], e["state"]) for e in events if e["type"] == "stage"]
    assert stages[:2] == [("classify", "started"), ("classify", "done")]
    assert ("review", "done") in stages and ("tests", "done") in stages
    assert all(e["seconds"] >= 0 for e in events if e["type"] == "stage" and "seconds" in e)
    assert not [e for e in events if e["type"] == "in_flight"]  # the screen's, not the record's


def test_a_stage_stopped_by_an_error_says_so() -> None:
    show, out = progress()
    with activity.reporting(show), pytest.raises(RuntimeError):  # noqa: SIM117
        with activity.stage("tests"):
            raise RuntimeError("boom")
    assert re.search(r"tests +stopped by an error after \d+\.\ds", out.getvalue())


def test_a_long_call_in_flight_is_shown_with_its_step_tokens_and_time() -> None:
    show, out = progress(every_s=0.0)
    with activity.reporting(show), activity.stage("classify"):
        activity.call_progress(CallProgress("smollm2", 0, 0, 0.2))
        activity.IN_FLIGHT_EVERY_S, saved = 0.0, activity.IN_FLIGHT_EVERY_S
        try:
            activity.call_progress(CallProgress("smollm2", 120, 0, 14.2))
            activity.call_progress(CallProgress("smollm2", 300, 250, 40.0))
        finally:
            activity.IN_FLIGHT_EVERY_S = saved
        assert activity.last_call() == CallProgress("smollm2", 300, 250, 40.0)
    text = out.getvalue()
    assert re.search(r"classify +smollm2: 120 tok so far, 14s", text), text
    assert "300 tok so far (250 reasoning), 40s" in text


def test_on_a_terminal_the_call_is_one_status_line_that_keeps_ticking() -> None:
    show, out = progress(terminal=True)
    show(InFlight(step="judge", model="smollm2", tokens=0, reasoning_tokens=0, seconds=0.0,
                  done=False))
    assert show._live is not None  # rich redraws it four times a second, elapsed time and all
    show(InFlight(step="judge", model="smollm2", tokens=42, reasoning_tokens=0, seconds=3.0,
                  done=False))
    assert "judge     smollm2: 42 tok so far, 3s" in show.call_text(show._call_seen)
    show(Stage(stage="judge", state="done", seconds=3.1))
    assert show._live is None
    assert "judge" in out.getvalue() and "done in 3.1s" in out.getvalue()


def test_the_stream_fold_reports_progress_as_tokens_arrive() -> None:
    seen: list[CallProgress] = []
    events = [
        pb.ChatEvent(admitted=pb.Admitted(model="m", queue_seconds=0.5)),
        pb.ChatEvent(delta=pb.Delta(kind=pb.Delta.REASONING, text="hmm")),
        pb.ChatEvent(delta=pb.Delta(text="{")),
        pb.ChatEvent(delta=pb.Delta(text="}")),
        pb.ChatEvent(done=pb.Done(finish_reason="stop", usage=pb.Usage(completion_tokens=4,
                                                                         reasoning_tokens=1))),
    ]
    reply = collect_reply(iter(events), lambda p: seen.append(CallProgress(**vars(p))))
    assert reply.text == "{}"
    assert [(p.tokens, p.reasoning_tokens, p.done) for p in seen] == [
        (0, 0, False), (1, 1, False), (2, 1, False), (3, 1, False), (4, 1, True)]
    assert seen[0].model == "m" and seen[0].queue_seconds == 0.5


def test_json_keeps_stdout_to_one_object_while_stages_go_to_stderr(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from test_loop import _FakeClient, calc_test_cmd

    from agent_node.loop import cli

    repo = make_repo(tmp_path)
    model = ScriptedModel([as_json(NOT_UI), *fix_calc(), as_json(PASS)])
    monkeypatch.setattr(cli, "_connect", lambda cfg: _FakeClient(model))
    code = cli.run_main(["make add() add", "--repo", str(repo), "--test-cmd", calc_test_cmd(),
                         "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["verdict"] == "pass"
    assert out.count("\n") == 1
    assert re.search(r"tests +round 1 done in", err) and re.search(r"gate +round 1 done in", err)


@pytest.mark.skipif(not _chromium_available(), reason="needs Playwright and a Chromium")
def test_visual_qa_shows_capture_and_judge_as_stages(tmp_path: Path) -> None:
    from agent_node.loop.visual import ChromiumQA, serve_directory

    repo = make_repo(tmp_path, {"index.html": '<link rel="icon" href="data:,"><h1>Prices</h1>\n'})
    judge = ScriptedModel([as_json({"pass": True, "failures": []})])
    qa = ChromiumQA(AgentConfig(), judge, None)
    show, out = progress()
    try:
        with serve_directory(repo) as url, activity.reporting(show):
            outcome = qa(f"{url}/index.html", ["the title reads Prices"], tmp_path / "qa")
    finally:
        qa.close()
    assert outcome.passed, outcome
    text = out.getvalue()
    for stage in ("capture", "judge"):
        assert re.search(rf"{stage} +started", text) and re.search(rf"{stage} +done in", text)
    assert "describe" not in text  # no vision model: nothing to time


def test_totals_count_reasoning_tokens_once() -> None:
    """completion_tokens already includes the reasoning tokens; totals must not add them again."""
    show, out = progress()
    show(ModelCall(role="spec", round=0, model="m", prompt_tokens=0, cached_prompt_tokens=0,
                   completion_tokens=10, reasoning_tokens=6, seconds=2.0, decode_tps=5.0,
                   finish_reason="stop", cut_off_while_reasoning=False))
    assert "total 10 tok" in out.getvalue()
