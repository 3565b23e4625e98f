"""The run's events: one frozen dataclass per type, the only vocabulary of a run.

    record.emit(RoundStarted(round=1, brief_file="round-1/brief.md"))
    for event in parse_events(load_record(run_dir)[0]):
        match event:
            case RunVerdict(verdict="pass"): ...

The record (`runs.RunRecord.emit`) writes them, `runs.summarize` and the report read them back,
and the progress display (`loop/progress.py`) is told each one as it is written. An event is
built by its class, so a missing or misspelled field is a TypeError where it is made (and a
mypy error before that); `to_record` also checks every value against its declared type, so a
malformed line never reaches `events.jsonl`. On disk an event is one JSON object: `type` (the
class's `type`), `t` (seconds since the epoch, set by the record), then its fields; a field with
a default is written only when it differs from it. `from_record` reads a line back and fills
the fields an older record lacks with empty values, so old records stay readable.

The table in docs/run-record.md is generated from these classes (`markdown_table`,
`scripts/event-docs.py`); a test fails when the two disagree.

Three verdicts, three names: `RoundVerdict` (a round, from the gate and the code review),
`RunVerdict` (the run; on disk still type "verdict") and, for visual QA alone,
`agent_node.qa.result.VisualVerdict` (the visual judge's).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union, get_args, get_origin


@dataclass(frozen=True, kw_only=True)
class RunEvent:
    """What every event has: `t`, set by the record when it writes the event."""

    type: ClassVar[str] = ""
    t: float = 0.0


def _doc(text: str, default: Any = dataclasses.MISSING) -> Any:
    """A field with a line for the generated docs."""
    return field(default=default, metadata={"doc": text})


@dataclass(frozen=True, kw_only=True)
class RunStarted(RunEvent):
    """The run begins: what it works on and how its commands are confined."""

    type: ClassVar[str] = "run_started"
    task: str
    repo: str
    base: str = _doc("the commit the run is based on (HEAD when it started)")
    branch: str = _doc("the user's branch when it started")
    run_branch: str = _doc("`studio-coder/<run-id>`, where the tested commit comes back")
    checkout: str = _doc("the coder's private checkout")
    dirty: list[str] = _doc("uncommitted files of the repository, left out of the run")
    pid: int
    models: dict[str, str] = _doc("model per role: orchestrator, coder")
    sandbox: dict[str, Any] = _doc("backend, network, memory bound (or why there is none)")


@dataclass(frozen=True, kw_only=True)
class Classified(RunEvent):
    """What kind of task it is (the orchestrator model's answer, or the fallback)."""

    type: ClassVar[str] = "classified"
    ui: bool
    asks_for_change: bool
    page: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class SpecWritten(RunEvent):
    """The design spec visual QA checks the page against."""

    type: ClassVar[str] = "spec"
    statements: list[str]
    source: str = _doc('"file", "model" or the minimal fallback')


@dataclass(frozen=True, kw_only=True)
class Setup(RunEvent):
    """What the rounds will check: the test command, the page, whether it is UI work."""

    type: ClassVar[str] = "setup"
    test_cmd: str
    page: str
    ui: bool
    asks_for_change: bool


@dataclass(frozen=True, kw_only=True)
class RoundStarted(RunEvent):
    """A fresh coder starts, with the brief in `brief_file`."""

    type: ClassVar[str] = "round_started"
    round: int
    brief_file: str


@dataclass(frozen=True, kw_only=True)
class ModelCall(RunEvent):
    """One model reply, with its usage (reasoning tokens are among `completion_tokens`)."""

    type: ClassVar[str] = "model_call"
    role: str = _doc("coder, classify, spec or review")
    round: int = _doc("0 before the first round")
    model: str
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    seconds: float
    decode_tps: float
    finish_reason: str
    cut_off_while_reasoning: bool
    recomputed_prompt_tokens: int = _doc("prompt tokens the node had run before and computed "
                                         "again", 0)
    recompute_cause: str = _doc("why: evicted, rerendered, retokenized or reasoning_dropped",
                                "")
    draft_tokens: int = _doc("tokens proposed to the model (a draft model or prompt lookup) "
                             "and checked in one pass", 0)
    accepted_draft_tokens: int = _doc("of those, the ones the model kept", 0)


@dataclass(frozen=True, kw_only=True)
class ToolCall(RunEvent):
    """One tool call of the coder; a failing tool is `ok` false, never the end of the round."""

    type: ClassVar[str] = "tool_call"
    round: int
    name: str
    arguments: str = _doc("the arguments as JSON, cut at 400 characters")
    ok: bool
    output_chars: int
    seconds: float
    refused: bool = _doc("the loop refused it (finish with no change)", False)


@dataclass(frozen=True, kw_only=True)
class CoderDone(RunEvent):
    """The coder's round ended; its report is a claim, not evidence."""

    type: ClassVar[str] = "coder_done"
    round: int
    report: str
    turns: int
    tokens: int
    stopped: str = _doc("finish, answer, max_turns, max_tokens, wall_time, deadline or repeat")


@dataclass(frozen=True, kw_only=True)
class GateChecked(RunEvent):
    """The gate's checks of one commit: its diff, the tests, the flags for the review."""

    type: ClassVar[str] = "gate"
    round: int
    commit: str = _doc("the commit tested")
    passed: bool
    files: list[str] = _doc('"<status> <path>" per changed file')
    changes_content: bool = _doc("false: the diff only adds or removes blank lines and spaces at "
                                 "line ends, which the gate counts as no change", True)
    test_cmd: str
    test_exit: int | None = _doc("null: no test command, or it timed out")
    test_seconds: float
    test_files_touched: list[str]
    failures: list[str]
    flags: list[str] = _doc("for the code review; not failures by themselves")
    diff_file: str
    test_log: str = _doc("the tests' output, when they ran", "")


@dataclass(frozen=True, kw_only=True)
class VisualQAChecked(RunEvent):
    """Visual QA of the page at both viewports, from the visual judge's verdict."""

    type: ClassVar[str] = "qa"
    round: int
    passed: bool
    note: str
    failures: list[dict[str, str]] = _doc("statement, evidence, viewport, fix, source")
    screenshots: list[str] = _doc("paths relative to the run's folder")


@dataclass(frozen=True, kw_only=True)
class RoundVerdict(RunEvent):
    """A round's verdict: the gate's failures, or the code review's decision."""

    type: ClassVar[str] = "round_verdict"
    round: int
    verdict: Literal["fail", "pass"]
    reasons: list[str]
    fixes: list[str] = _doc("what the next round's coder is asked to fix")
    review: Literal["", "pass", "fail"] = _doc(
        "the code review's own verdict; \"\": none ran (the gate failed, or the review gave no "
        "usable verdict). With loop.review = \"advisory\" a fail here does not fail the round",
        "")


@dataclass(frozen=True, kw_only=True)
class RunVerdict(RunEvent):
    """The run's verdict; the last event of a run that was not killed."""

    type: ClassVar[str] = "verdict"
    verdict: Literal["fail", "pass", "interrupted", "error"]
    rounds: int
    reasons: list[str]
    commit: str = _doc("the last commit the gate tested; what approve lands")
    run_branch: str = _doc('the branch holding it ("" when nothing was tested)')


@dataclass(frozen=True, kw_only=True)
class Approved(RunEvent):
    """`agent-node approve` landed the tested commit."""

    type: ClassVar[str] = "approved"
    commit: str = _doc("the new commit on the user's branch")
    tested: str
    branch: str
    kept_local: list[str] = _doc("files whose local edits were kept (--force)")
    removed: list[str]


@dataclass(frozen=True, kw_only=True)
class Rejected(RunEvent):
    """`agent-node reject` dropped the run."""

    type: ClassVar[str] = "rejected"
    removed: list[str]


@dataclass(frozen=True, kw_only=True)
class Note(RunEvent):
    """Something the user should know; a structured call that ran out says which and why."""

    type: ClassVar[str] = "note"
    text: str
    round: int = _doc("the round it happened in", 0)
    step: str = _doc("the structured call that ran out", "")
    model: str = _doc("its model", "")
    tokens: int | None = _doc("the tokens it produced, when known", None)
    ran_out: str = _doc('"reasoning" or "answer" (max_tokens ran out in it) or "time"', "")


@dataclass(frozen=True, kw_only=True)
class Error(RunEvent):
    """The run stopped on an exception; a RunVerdict "error" follows."""

    type: ClassVar[str] = "error"
    error: str


@dataclass(frozen=True, kw_only=True)
class Stage(RunEvent):
    """A stage started or ended: classify, spec, tests, coder, gate, visual QA (capture,
    describe, judge: the visual judge), review (the code review)."""

    type: ClassVar[str] = "stage"
    stage: str
    state: Literal["started", "done", "failed"]
    seconds: float | None = _doc("how long it took, once it ended", None)
    round: int = _doc("the round it ran in", 0)
    when: str = _doc('"start": the tests before any change', "")


@dataclass(frozen=True, kw_only=True)
class InFlight(RunEvent):
    """The model call running now, for the screen only: never written to the record."""

    type: ClassVar[str] = "in_flight"
    step: str
    model: str
    tokens: int
    reasoning_tokens: int
    seconds: float
    done: bool


Event = (RunStarted | Classified | SpecWritten | Setup | RoundStarted | ModelCall | ToolCall
         | CoderDone | GateChecked | VisualQAChecked | RoundVerdict | RunVerdict | Approved
         | Rejected | Note | Error | Stage)
ScreenEvent = Event | InFlight  # what a run's listeners are told
RECORDED: tuple[type[RunEvent], ...] = get_args(Event)
BY_TYPE: dict[str, type[RunEvent]] = {cls.type: cls for cls in RECORDED}


class MalformedEvent(TypeError):
    """An event the record refuses: not a recorded type, or a value not of its field's type."""


_HINTS: dict[type[RunEvent], dict[str, Any]] = {}


def _hints(cls: type[RunEvent]) -> dict[str, Any]:
    if cls not in _HINTS:  # evaluated once per class: emit checks every event
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _matches(value: Any, hint: Any) -> bool:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return value in args
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            isinstance(k, str) and _matches(v, args[1]) for k, v in value.items())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def to_record(event: RunEvent) -> dict[str, Any]:
    """`event` as the JSON object the record writes; MalformedEvent when it is not one."""
    cls = type(event)
    if cls not in RECORDED:
        known = ", ".join(sorted(BY_TYPE))
        raise MalformedEvent(f"{event!r} is not a recorded run event (they are: {known})")
    hints = _hints(cls)
    out: dict[str, Any] = {"type": cls.type, "t": event.t}
    for f in dataclasses.fields(event):
        if f.name == "t":
            continue
        value = getattr(event, f.name)
        if not _matches(value, hints[f.name]):
            raise MalformedEvent(f"{cls.__name__}.{f.name} = {value!r} is not "
                                 f"{_type_name(hints[f.name])}")
        if f.default is not dataclasses.MISSING and value == f.default:
            continue  # an optional field at its default stays off the line
        out[f.name] = value
    return out


def from_record(line: dict[str, Any]) -> Event | None:
    """The event a record line holds (None for a type this version does not know). A field an
    older record lacks is read as its default, or as an empty value of its type."""
    cls = BY_TYPE.get(str(line.get("type")))
    if cls is None:
        return None
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in line:
            kwargs[f.name] = line[f.name]
        elif f.default is dataclasses.MISSING:
            kwargs[f.name] = _empty(hints[f.name])
    return typing.cast(Event, cls(**kwargs))


def parse_events(lines: list[dict[str, Any]]) -> list[Event]:
    """The typed events of a record's lines, in order; lines of unknown types left out."""
    return [e for e in map(from_record, lines) if e is not None]


def _empty(hint: Any) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return args[0]  # each Literal lists its most cautious value first
    if origin in (Union, types.UnionType):
        return None if type(None) in args else _empty(args[0])
    return {str: "", int: 0, float: 0.0, bool: False, list: [], dict: {}}.get(
        origin or hint, None)


def _type_name(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return " or ".join(f'"{a}"' for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if hint is type(None):
        return "null"
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    if origin is dict:
        return "object" if args[1] is Any else f"object of {_type_name(args[1])}"
    return {str: "str", int: "int", float: "float", bool: "bool"}.get(hint, str(hint))


# -- the docs -------------------------------------------------------------------------------

DOCS_BEGIN = "<!-- events: generated from agent_node/events.py by scripts/event-docs.py -->"
DOCS_END = "<!-- events: end -->"


def markdown_table() -> str:
    """The event list for docs/run-record.md, one row per type, from the classes above."""
    rows = ["| type | class | when | fields |", "| --- | --- | --- | --- |"]
    every: tuple[type[RunEvent], ...] = (*RECORDED, InFlight)
    for cls in every:
        hints = _hints(cls)
        parts = []
        for f in dataclasses.fields(cls):
            if f.name == "t":
                continue
            text = f"`{f.name}` {_type_name(hints[f.name])}"
            if f.default is not dataclasses.MISSING:
                text += f" (optional, default {_json(f.default)})"
            if f.metadata.get("doc"):
                text += f": {f.metadata['doc']}"
            parts.append(text)
        when = " ".join((cls.__doc__ or "").split())
        rows.append(f"| `{cls.type}` | `{cls.__name__}` | {when} | {'; '.join(parts)} |")
    return "\n".join(rows)


def _json(value: Any) -> str:
    return json.dumps(value)


def with_table(doc: str) -> str:
    """`doc` with the generated table between its markers; ValueError when it has none."""
    start, end = doc.find(DOCS_BEGIN), doc.find(DOCS_END)
    if start < 0 or end < start:
        raise ValueError(f"the document has no {DOCS_BEGIN!r} ... {DOCS_END!r} section")
    return doc[: start + len(DOCS_BEGIN)] + "\n" + markdown_table() + "\n" + doc[end:]
