"""Structured calls that never close their JSON: the run says so plainly, falls back and goes on.

Scripted models stand in for a model that rambles (a reply cut off at max_tokens mid-answer)
or whose stream outlives its deadline; what is checked is the loop's decisions and messages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from scripted_model import ScriptedModel, as_json
from user_repo import NOT_UI, PASS, fingerprint, fix_calc, isolate, make_repo, run

from agent_node.chat_fold import collect_reply
from agent_node.config import AgentConfig
from agent_node.exceptions import DeadlineExceeded
from agent_node.model import CallProgress, Reply, Usage
from agent_node.qa.judge import judge
from agent_node.qa.spec import Spec
from agent_node.runs import read_events
from agent_node.schemas import REVIEW
from inference_node.api import pb
from studio_common.json_bounds import answer_chars, reply_tokens


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


RAMBLE = '{"ui": false, "asks_for_change": true, "page": "", "reason": "' + "1." * 4000


def rambling(tokens: int = 32768) -> Reply:
    """A reply cut off by max_tokens in the middle of its JSON answer."""
    return Reply(text=RAMBLE, finish_reason="length", usage=Usage(300, tokens, 0),
                 model="tiny-rambler", seconds=600.0)


class StreamingScript(ScriptedModel):
    """A scripted model with a GrpcModel's progress hook, which the run plugs in."""

    def __init__(self, steps: list[Any], name: str = "scripted") -> None:
        super().__init__(steps, name)
        self.on_progress: Any = None


def past_deadline(messages: list[dict[str, Any]], options: dict[str, Any]) -> Reply:
    raise DeadlineExceeded("Chat with tiny-rambler: deadline exceeded", model="tiny-rambler")


def test_classify_that_never_closes_its_json_falls_back_and_the_run_reaches_a_verdict(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    before = fingerprint(repo)
    orch = ScriptedModel([rambling(), as_json(PASS)], name="tiny-rambler")
    coder = ScriptedModel(fix_calc())
    summary = run(tmp_path, repo, orch, coder)

    assert summary["verdict"] == "pass"
    events = read_events(Path(summary["run_dir"]))
    classify_calls = [e for e in events if e["type"] == "model_call" and e["role"] == "classify"]
    assert len(classify_calls) == 1  # cut off mid-answer: not asked again
    (note,) = [e for e in events if e["type"] == "note" and e.get("step") == "classify"]
    assert note["model"] == "tiny-rambler" and note["tokens"] == 32768
    assert note["ran_out"] == "answer"
    text = note["text"]
    assert text.startswith("classify: tiny-rambler did not close its JSON answer")
    assert "32,768 tokens" in text and "max_tokens (the server's default)" in text
    assert "To change:" in text and "bigger model" in text and "[inference] coder" in text
    assert text.endswith("assuming a non-UI change")
    (kind,) = [e for e in events if e["type"] == "classified"]
    assert kind["ui"] is False and kind["asks_for_change"] is True
    assert [e["type"] for e in events].count("gate") == 1
    assert fingerprint(repo) == before


def test_classify_past_its_deadline_falls_back_naming_the_tokens_it_streamed(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path)

    def streams_then_times_out(messages: list[dict[str, Any]], options: dict[str, Any]) -> Reply:
        for n in (0, 180, 412):  # what GrpcModel's stream fold reports while tokens arrive
            orch.on_progress(CallProgress("tiny-rambler", n, 0, 300.0 + n))
        raise DeadlineExceeded("Chat with tiny-rambler: deadline exceeded", model="tiny-rambler")

    orch = StreamingScript([streams_then_times_out, as_json(PASS)], name="tiny-rambler")
    cfg = AgentConfig()
    cfg.inference.timeout_s = 700
    summary = run(tmp_path, repo, orch, ScriptedModel(fix_calc()), cfg=cfg)

    assert summary["verdict"] == "pass"
    events = read_events(Path(summary["run_dir"]))
    (note,) = [e for e in events if e["type"] == "note" and e.get("step") == "classify"]
    assert note["ran_out"] == "time" and note["tokens"] == 412
    assert "[inference] timeout_s = 700 s) passed after 412 tokens in 712 s" in note["text"]
    assert "raise [inference] timeout_s" in note["text"]
    assert [e["type"] for e in events][-1] == "verdict"


def test_spec_cut_off_while_reasoning_falls_back_to_the_minimal_spec(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"index.html": "<h1>hi</h1>\n", "calc.py": "x = 1\n"})
    ui = {"ui": True, "asks_for_change": True, "page": "index.html", "reason": "a page"}
    thinking = Reply(reasoning="hmm " * 100, finish_reason="length",
                     usage=Usage(200, 4096, 4096), cut_off_while_reasoning=True)
    orch = ScriptedModel([as_json(ui), thinking, as_json(PASS)], name="thinker")
    cfg = AgentConfig()
    cfg.loop.json_max_tokens = 4096
    coder = ScriptedModel([*fix_calc()])
    summary = run(tmp_path, repo, orch, coder, cfg=cfg, test_cmd="true")

    events = read_events(Path(summary["run_dir"]))
    (note,) = [e for e in events if e["type"] == "note" and e.get("step") == "spec"]
    assert "still reasoning when it reached max_tokens (4,096) after 4,096 tokens" in note["text"]
    assert "raise [loop] json_max_tokens (now 4,096)" in note["text"]
    (spec,) = [e for e in events if e["type"] == "spec"]
    assert spec["statements"] == ["no horizontal overflow at desktop or phone width",
                                  "no console errors"]
    assert summary["verdict"] in ("pass", "fail")


def test_review_cut_off_fails_the_round_and_says_why(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    cut = Reply(text='{"verdict": "pass", "reasons": ["ok ok ok', finish_reason="length",
                usage=Usage(900, 64, 0))
    orch = ScriptedModel([as_json(NOT_UI), cut], name="small")
    cfg = AgentConfig()
    cfg.loop.max_rounds, cfg.loop.json_max_tokens = 1, 64
    summary = run(tmp_path, repo, orch, ScriptedModel(fix_calc()), cfg=cfg)

    assert summary["verdict"] == "fail"
    events = read_events(Path(summary["run_dir"]))
    (note,) = [e for e in events if e["type"] == "note" and e.get("step") == "review"]
    assert "raise [loop] json_max_tokens (now 64): the answer alone may take up to" in note["text"]
    assert any("the review gave no usable verdict" in r for r in summary["reasons"])


def test_review_cut_off_at_the_nodes_schema_sized_default_says_to_set_the_budget(
        tmp_path: Path) -> None:
    """A model that does not reason gets one token per character its schema allows when the
    call sets no max_tokens; one that spent them all is told to set the key, not to swap."""
    repo = make_repo(tmp_path)
    spent = reply_tokens(answer_chars(REVIEW))
    cut = Reply(text='{"reasons": ["\\u00e9\\u00e9', finish_reason="length",
                usage=Usage(900, spent, 0))
    orch = ScriptedModel([as_json(NOT_UI), cut], name="small")
    cfg = AgentConfig()
    cfg.loop.max_rounds = 1
    summary = run(tmp_path, repo, orch, ScriptedModel(fix_calc()), cfg=cfg)

    events = read_events(Path(summary["run_dir"]))
    (note,) = [e for e in events if e["type"] == "note" and e.get("step") == "review"]
    assert f"set [loop] json_max_tokens above {spent:,}" in note["text"]
    assert "bigger model" not in note["text"]


def test_coder_reply_past_its_deadline_ends_the_round_and_the_gate_still_runs(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    orch = ScriptedModel([as_json(NOT_UI)])
    coder = ScriptedModel([past_deadline], name="tiny-rambler")
    cfg = AgentConfig()
    cfg.loop.max_rounds = 1
    summary = run(tmp_path, repo, orch, coder, cfg=cfg)

    assert summary["verdict"] == "fail"
    events = read_events(Path(summary["run_dir"]))
    (done,) = [e for e in events if e["type"] == "coder_done"]
    assert done["stopped"] == "deadline"
    (note,) = [e for e in events if e["type"] == "note"]
    assert note["text"].startswith("coder turn 1: tiny-rambler did not close its JSON answer")
    assert "a tool call is not streamed" in note["text"]
    assert note["text"].endswith("the round goes on to the gate with what is in the checkout")
    assert [e["type"] for e in events].count("gate") == 1


def test_judge_cut_off_is_an_error_at_once_with_the_clear_word() -> None:
    cut = Reply(text='{"pass": false, "failures": [{"statement": "x' + "y" * 300,
                finish_reason="length", usage=Usage(500, 320, 0), model="smol")
    model = ScriptedModel([cut], name="smol")
    verdict = judge(Spec(["the title is visible"]), [], {}, model=model, attempts=3,
                    max_tokens=320)
    assert verdict.status == "error" and not verdict.passed
    assert len(model.calls) == 1  # not asked again
    assert verdict.error.startswith("judge: smol did not close its JSON answer")
    assert "raise [qa] judge_max_tokens (now 320)" in verdict.error
    assert verdict.error.endswith("The page is not passed.")


def test_judge_past_its_deadline_is_an_error_not_a_crash() -> None:
    model = ScriptedModel([past_deadline], name="smol")
    verdict = judge(Spec(["the title is visible"]), [], {}, model=model, attempts=3)
    assert verdict.status == "error"
    assert "the stream's deadline ([inference] timeout_s) passed" in verdict.error


def test_a_files_reply_cut_by_its_deadline_is_kept_in_the_record_and_not_written(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    before = fingerprint(repo)

    def writes_then_times_out(messages: list[dict[str, Any]], options: dict[str, Any]) -> Reply:
        e = DeadlineExceeded("Chat with tiny-rambler: deadline exceeded", model="tiny-rambler")
        e.partial = "calc.py\n```python\ndef add(a, b):\n    return a +"  # as collect_reply sets
        raise e

    coder = ScriptedModel([writes_then_times_out], name="tiny-rambler")
    cfg = AgentConfig()
    cfg.loop.coder, cfg.loop.max_rounds = "files", 1
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI)]), coder, cfg=cfg)

    assert summary["verdict"] == "fail" and fingerprint(repo) == before
    run_dir = Path(summary["run_dir"])
    events = read_events(run_dir)
    (note,) = [e for e in events if e["type"] == "note"]
    assert "the 47 characters it had written are in the round's coder.json" in note["text"]
    assert not [e for e in events if e["type"] == "tool_call"]  # nothing written
    coder_json = json.loads((run_dir / "round-1" / "coder.json").read_text())
    assert coder_json[-1] == {"role": "assistant", "content": "calc.py\n```python\n"
                              "def add(a, b):\n    return a +"}


def test_the_stream_fold_hands_a_deadline_the_text_so_far() -> None:
    def stream() -> Any:
        yield pb.ChatEvent(delta=pb.Delta(kind=pb.Delta.REASONING, text="hmm"))
        yield pb.ChatEvent(delta=pb.Delta(text="calc.py\n"))
        yield pb.ChatEvent(delta=pb.Delta(text="```python\n"))
        raise DeadlineExceeded("Chat with m: deadline exceeded")

    with pytest.raises(DeadlineExceeded) as cut:
        collect_reply(stream())
    assert cut.value.partial == "calc.py\n```python\n"
