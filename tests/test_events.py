"""Run events: one typed vocabulary for the record, its summary, the report and the progress
display; a malformed event never reaches events.jsonl, and the docs' list is the types'."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from agent_node import events
from agent_node.events import (
    RECORDED,
    GateChecked,
    InFlight,
    MalformedEvent,
    ModelCall,
    RoundVerdict,
    ToolCall,
    from_record,
    parse_events,
    to_record,
    with_table,
)
from agent_node.runs import RunRecord, read_events

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "run-record.md"


def test_an_event_missing_a_field_or_with_a_misspelled_one_fails_where_it_is_made() -> None:
    with pytest.raises(TypeError, match="missing .*'ok'"):
        ToolCall(round=1, name="read", arguments="{}", output_chars=3,  # type: ignore[call-arg]
                 seconds=0.1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'ouput_chars'"):
        ToolCall(round=1, name="read", arguments="{}", ok=True,  # type: ignore[call-arg]
                 ouput_chars=3, seconds=0.1)
    with pytest.raises(TypeError):
        RoundVerdict(1, "pass", [], [])  # type: ignore[misc] - keywords only


def test_the_record_refuses_what_is_not_a_run_event_and_writes_nothing(tmp_path: Path) -> None:
    record = RunRecord.create(tmp_path)
    bad: list[Any] = [
        {"type": "verdict", "verdict": "pass"},  # a plain dict, as emit used to take
        InFlight(step="judge", model="m", tokens=1, reasoning_tokens=0, seconds=1.0,
                 done=False),  # the screen's, never the record's
        RoundVerdict(round=1, verdict="passed", reasons=[], fixes=[]),  # type: ignore[arg-type]
        RoundVerdict(round="1", verdict="pass", reasons=[], fixes=[]),  # type: ignore[arg-type]
        GateChecked(round=1, commit="c", passed=True, files=[Path("a.py")],  # type: ignore[list-item]
                    test_cmd="", test_exit=None, test_seconds=0.0, test_files_touched=[],
                    failures=[], flags=[], diff_file="round-1/diff.patch"),
    ]
    for event in bad:
        with pytest.raises(MalformedEvent) as raised:
            record.emit(event)
        assert type(event).__name__ in str(raised.value) or "not a recorded" in str(raised.value)
    record.close()
    assert read_events(record.dir) == []
    assert (record.dir / "events.jsonl").read_text() == ""


def _example(cls: type[events.RunEvent]) -> events.RunEvent:
    """An instance with every field set away from its default, so all are written."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name == "t":
            continue
        hint = hints[f.name]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is typing.Literal:
            values[f.name] = args[-1]
        elif hint is bool:
            values[f.name] = True
        elif hint in (int, float) or int in args or float in args:
            values[f.name] = 7
        elif origin is list:
            values[f.name] = ["x"] if args[0] is str else [{"statement": "s"}]
        elif origin is dict:
            values[f.name] = {"k": "v"}
        else:
            values[f.name] = f"{f.name}-value"
    return cls(**values)


def test_every_event_type_round_trips_through_a_signed_record(tmp_path: Path) -> None:
    record = RunRecord.create(tmp_path)
    sent = [_example(cls) for cls in RECORDED]
    seen: list[events.ScreenEvent] = []
    record.listeners.append(seen.append)
    for event in sent:
        record.emit(event)
    record.close()
    lines = read_events(record.dir)
    assert [line["type"] for line in lines] == [cls.type for cls in RECORDED]
    back = parse_events(lines)
    assert [dataclasses.replace(e, t=0.0) for e in back] == sent
    assert seen == back  # the listeners are told exactly what a reader gets back


def test_optional_fields_at_their_default_stay_off_the_line() -> None:
    call = dict(round=1, name="finish", arguments="{}", ok=False, output_chars=9, seconds=0.0)
    assert "refused" not in to_record(ToolCall(**call))
    assert to_record(ToolCall(**call, refused=True))["refused"] is True


def test_a_line_from_an_older_record_is_read_with_empty_values() -> None:
    old = {"type": "gate", "t": 1.0, "round": 2, "passed": True, "dropped_field": 1, "mac": "x"}
    gate = from_record(old)
    assert isinstance(gate, GateChecked)
    assert (gate.round, gate.passed, gate.files, gate.test_exit, gate.test_log) == (
        2, True, [], None, "")
    verdict = from_record({"type": "verdict"})
    assert verdict is not None and verdict.verdict == "fail"  # never read as a pass
    assert from_record({"type": "from_a_later_version"}) is None
    call = from_record({"type": "model_call", "model": "m", "completion_tokens": 3})
    assert isinstance(call, ModelCall) and (call.prompt_tokens, call.completion_tokens) == (0, 3)


def test_the_event_list_in_the_docs_is_the_one_generated_from_the_types() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert with_table(text) == text, (
        "docs/run-record.md lists other events than agent_node/events.py defines; run "
        "`.venv/bin/python scripts/event-docs.py` to regenerate its table")
    for cls in RECORDED:
        assert f"| `{cls.type}` | `{cls.__name__}` |" in text
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "event-docs.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_changed_event_makes_the_docs_check_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    text = DOC.read_text(encoding="utf-8")

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Extra(events.RunEvent):
        """A type the docs do not have."""

        type = "extra"  # type: ignore[assignment]
        field: str

    monkeypatch.setattr(events, "RECORDED", (*RECORDED, Extra))
    assert with_table(text) != text
    assert "| `extra` | `Extra` |" in with_table(text)
