"""Run records: durable signed events, a summary folded from them, and a report that escapes
all."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Literal

import pytest

from agent_node.events import (
    Approved,
    GateChecked,
    ModelCall,
    RoundStarted,
    RunStarted,
    RunVerdict,
    VisualQAChecked,
)
from agent_node.record_key import RecordKeyError
from agent_node.report import write_report
from agent_node.runs import RecordTampered, RunRecord, find_run, list_runs, read_events, summarize


def started(task: str, repo: str = "", run_branch: str = "") -> RunStarted:
    return RunStarted(task=task, repo=repo, base="b" * 40, branch="main", run_branch=run_branch,
                      checkout="/c", dirty=[], pid=1, models={}, sandbox={})


def round_started(n: int) -> RoundStarted:
    return RoundStarted(round=n, brief_file=f"round-{n}/brief.md")


def model_call(model: str, prompt_tokens: int, completion_tokens: int,
               reasoning_tokens: int = 0, cached: int = 0, recomputed: int = 0,
               proposed: int = 0, accepted: int = 0) -> ModelCall:
    return ModelCall(role="coder", round=1, model=model, prompt_tokens=prompt_tokens,
                     cached_prompt_tokens=cached, completion_tokens=completion_tokens,
                     reasoning_tokens=reasoning_tokens, seconds=1.0, decode_tps=5.0,
                     finish_reason="stop", cut_off_while_reasoning=False,
                     recomputed_prompt_tokens=recomputed,
                     recompute_cause="evicted" if recomputed else "",
                     draft_tokens=proposed, accepted_draft_tokens=accepted)


def verdict(v: Literal["fail", "pass", "interrupted"], rounds: int,
            reasons: list[str]) -> RunVerdict:
    return RunVerdict(verdict=v, rounds=rounds, reasons=reasons, commit="", run_branch="")


def test_events_are_on_disk_as_soon_as_they_are_emitted(tmp_path: Path) -> None:
    record = RunRecord.create(tmp_path)
    seen: list[dict] = []
    record.listeners.append(seen.append)
    record.emit(started("t", "/r"))
    # Read back before close: nothing is buffered in this process.
    assert [e["type"] for e in read_events(record.dir)] == ["run_started"]
    assert isinstance(seen[0], RunStarted) and seen[0].task == "t"
    record.close()


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    record = RunRecord.create(tmp_path)
    record.emit(started("t"))
    record.close()
    with (record.dir / "events.jsonl").open("a") as f:
        f.write('{"type": "model_ca')
    assert [e["type"] for e in read_events(record.dir)] == ["run_started"]


def test_summary_folds_rounds_tokens_models_and_verdict(tmp_path: Path) -> None:
    record = RunRecord.create(tmp_path)
    record.emit(started("t", "/r", "studio-coder/x"))
    record.emit(round_started(1))
    record.emit(model_call("big", prompt_tokens=10, completion_tokens=5))
    record.emit(round_started(2))
    record.emit(model_call("big", prompt_tokens=9, completion_tokens=2, reasoning_tokens=3,
                           cached=4, recomputed=3, proposed=10, accepted=8))
    s = summarize(record.dir)
    assert (s["verdict"], s["rounds"], s["models"]) == ("incomplete", 2, ["big"])
    assert s["tokens"] == {"prompt": 19, "cached": 4, "recomputed": 3, "completion": 7,
                           "reasoning": 3, "proposed": 10, "accepted": 8}
    record.emit(verdict("pass", 2, ["ok"]))
    record.emit(Approved(commit="abc", tested="abc", branch="main", kept_local=[], removed=[]))
    s = summarize(record.dir)
    assert (s["verdict"], s["state"], s["reasons"]) == ("pass", "approved", ["ok"])
    record.close()


def test_report_escapes_everything_from_the_record(tmp_path: Path) -> None:
    record = RunRecord.create(tmp_path)
    record.emit(started("<script>alert(1)</script>", "/r"))
    record.write_text("round-1/diff.patch", "+<img src=x onerror=alert(2)>\n")
    record.emit(round_started(1))
    record.emit(GateChecked(round=1, commit="c" * 40, passed=False, files=["A x.html"],
                            test_cmd="t", test_exit=1, test_seconds=0.5, test_files_touched=[],
                            failures=[], flags=["</pre><b>flag</b>"],
                            diff_file="round-1/diff.patch"))
    record.emit(VisualQAChecked(round=1, passed=False, note="",
                                screenshots=["round-1/qa/phone.png"],
                                failures=[{"statement": "<fits>", "viewport": "phone",
                                           "evidence": "e", "fix": "f"}]))
    record.emit(verdict("fail", 1, ["<b>bad</b>"]))
    record.close()
    html = write_report(record.dir).read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror" in html
    assert "<b>bad</b>" not in html and "<b>flag</b>" not in html
    assert "<img src='round-1/qa/phone.png'" in html


def test_list_and_find_runs(tmp_path: Path) -> None:
    a = RunRecord.create(tmp_path)
    a.emit(started("first"))
    a.close()
    assert [r["task"] for r in list_runs(tmp_path)] == ["first"]
    assert find_run(a.run_id, tmp_path) == a.dir
    assert find_run(a.run_id[:-2], tmp_path) == a.dir
    with pytest.raises(ValueError, match="no run 'nope'"):
        find_run("nope", tmp_path)


def test_a_line_from_another_run_or_an_edited_line_does_not_verify(tmp_path: Path) -> None:
    a, b = RunRecord.create(tmp_path), RunRecord.create(tmp_path)
    for record in (a, b):
        record.emit(started("t", "/r"))
    passed = a.emit(verdict("pass", 1, []))
    b.emit(round_started(1))
    a.close()
    b.close()
    with (b.dir / "events.jsonl").open("a") as f:  # a signed line, but another run's
        f.write(json.dumps(passed) + "\n")
    assert summarize(b.dir)["verdict"] == "tampered"
    assert "line 3" in summarize(b.dir)["reasons"][0]
    assert [e["type"] for e in read_events(b.dir)] == ["run_started", "round_started"]

    lines = (a.dir / "events.jsonl").read_text().splitlines()
    lines[0] = lines[0].replace('"task": "t"', '"task": "u"')
    (a.dir / "events.jsonl").write_text("\n".join(lines) + "\n")
    assert summarize(a.dir)["verdict"] == "tampered"
    with pytest.raises(RecordTampered, match="line 1"):
        RunRecord(a.dir)  # nothing is appended to a record that does not verify


def test_unsigned_records_are_unverified_not_trusted(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "20250101-000000-abcdef"
    run_dir.mkdir(parents=True)
    (run_dir / "events.jsonl").write_text(json.dumps({"type": "verdict", "verdict": "pass"})
                                          + "\n")
    s = summarize(run_dir)
    assert s["verdict"] == "unverified" and "not signed" in s["reasons"][0]


def test_a_record_key_others_can_read_is_refused(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "config" / "record.key"
    monkeypatch.setenv("STUDIO_CODER_KEY", str(key))
    RunRecord.create(tmp_path / "home").close()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    key.chmod(0o644)
    with pytest.raises(RecordKeyError, match="chmod 600"):
        RunRecord.create(tmp_path / "home")


def test_ctrl_c_between_a_write_and_its_bookkeeping_keeps_the_record_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = RunRecord.create(tmp_path)
    record.emit(started("t", "/r"))
    fsync = os.fsync

    def interrupted(fd: int) -> None:  # the line is on disk, then Ctrl-C arrives
        fsync(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        record.emit(round_started(1))
    monkeypatch.setattr(os, "fsync", fsync)
    record.emit(verdict("interrupted", 1, ["interrupted (Ctrl-C)"]))
    record.close()
    s = summarize(record.dir)
    assert (s["verdict"], s["integrity"], s["rounds"]) == ("interrupted", "", 1)
