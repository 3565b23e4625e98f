"""Why a bench task failed, read from its run record and its grade.

What each round did comes from the run's events (`agent_node.runs`): `coder_done` (why the coder
stopped), `tool_call` (each call's `ok`), `gate` (the real diff, the test command's exit, tests
the diff touched), `qa` (the visual gate), `round_verdict`; plus the coder's messages in
round-N/coder.json (tool-call markup the parser could not read). The grade is the final diff
graded on the original visible tests plus the hidden ones (`bench.task_grading.grade`).

A failed task gets exactly one class. When several apply, the first in this order wins, from
what most invalidates the rest to what is most specific:

    run_error          the loop raised or left no verdict (a crash, a request the node refused)
    tests_edited       the final diff changes or deletes existing tests or the test config;
                       whatever passed, it passed on other tests
    tool_errors        more than half of the final round's tool calls failed (unknown tool,
                       bad arguments, an edit whose anchor was not found, unreadable tool-call
                       markup), and then the change was empty or its tests failed
    limit              the final round's coder was stopped by its turn, token or time limit,
                       or its last reply was cut off by the per-reply token cap before it
                       called a tool, and the change was empty or its tests failed
    no_change          the final diff is empty (or only adds or removes blank lines and spaces
                       at line ends): the coder finished without changing a file's code
                       (or kept trying to finish, refused by the loop, until a limit stopped it;
                       that is checked before limit)
    visible_tests_fail the gate's run of the repository's tests failed in the final round, or
                       the change got one of the task's own examples wrong ([loop]
                       task_examples: the gate checks them as it runs the tests), or the
                       gate's names check failed it (a line reads a name nothing defines, or
                       uses one the change took away)
    visual_qa_failed   UI task: the visual gate (two viewports, logs, judge) did not pass in
                       the final round
    hidden_tests_fail  the final diff fails the hidden tests (or the original visible ones)
    review_refused     every check passed (gate, hidden tests, visual gate) but the loop's
                       review did not accept the change
    unclassified       none of the above (a bench bug if it ever shows up)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_node.events import (
    CoderDone,
    GateChecked,
    ModelCall,
    RoundStarted,
    RoundVerdict,
    ToolCall,
    VisualQAChecked,
    parse_events,
)
from agent_node.loop.examples import FAILURE as EXAMPLE_FAILURE
from agent_node.loop.names import FAILURE as NAMES_FAILURE
from bench.task_grading import Grade

FAILURES = ("run_error", "tests_edited", "tool_errors", "limit", "no_change",
            "visible_tests_fail", "visual_qa_failed", "hidden_tests_fail", "review_refused",
            "unclassified")
LIMIT_STOPS = ("max_turns", "max_tokens", "wall_time")
MALFORMED_PREFIXES = ("error: unknown tool", "error: bad arguments", "error: arguments for")


@dataclass
class Round:
    """One round of a run, as its events and coder.json tell it."""

    number: int
    stopped: str = ""  # why the coder stopped (coder_done)
    tool_calls: int = 0
    tool_failures: int = 0  # calls whose tool reported ok=False (the loop's refusals aside)
    refused: int = 0  # finish calls the loop refused: nothing had changed yet
    malformed: int = 0  # unknown tool / bad arguments / unreadable tool-call markup
    unparsed_markup: int = 0  # replies with tool-call markup but no parsed call
    replies_without_tool_call: int = 0
    cut_off: int = 0  # replies stopped by the per-reply token cap before any tool call
    last_reply_cut_off: bool = False
    finish_reasons: list[str] = field(default_factory=list)  # of the coder's replies, in order
    diff_file: str = ""
    files: list[str] = field(default_factory=list)
    changes_content: bool = True  # more than blank lines and line-end spaces (the gate's)
    gate_ran: bool = False
    gate_passed: bool = False
    tests_ran: bool = False
    tests_passed: bool = False
    test_files_touched: list[str] = field(default_factory=list)
    gate_failures: list[str] = field(default_factory=list)
    qa_ran: bool = False
    qa_passed: bool = False
    qa_note: str = ""
    accepted: bool = False  # round_verdict == pass
    review: str = ""  # the code review's own verdict ("": none ran); loop.review may overrule it
    reasons: list[str] = field(default_factory=list)

    @property
    def tool_errors_dominate(self) -> bool:
        failed = self.tool_failures + self.unparsed_markup
        calls = self.tool_calls + self.unparsed_markup
        return failed > 0 and 2 * failed > calls


def read_rounds(run_dir: Path, events: list[dict[str, Any]]) -> list[Round]:
    rounds: dict[int, Round] = {}

    def at(n: int) -> Round:
        return rounds.setdefault(n, Round(n))

    for e in parse_events(events):
        match e:
            case RoundStarted():
                at(e.round)
            case ModelCall(role="coder"):
                at(e.round).finish_reasons.append(e.finish_reason)
            case CoderDone():
                at(e.round).stopped = e.stopped
            case ToolCall():
                r = at(e.round)
                if e.refused:
                    r.refused += 1
                    continue
                r.tool_calls += 1
                r.tool_failures += not e.ok
            case GateChecked():
                r = at(e.round)
                r.gate_ran, r.gate_passed = True, e.passed
                r.diff_file = e.diff_file or f"round-{r.number}/diff.patch"
                r.files, r.changes_content = list(e.files), e.changes_content
                r.tests_ran = bool(e.test_cmd)
                r.tests_passed = e.test_exit == 0
                r.test_files_touched = list(e.test_files_touched)
                r.gate_failures = list(e.failures)
            case VisualQAChecked():
                r = at(e.round)
                r.qa_ran, r.qa_passed, r.qa_note = True, e.passed, e.note
            case RoundVerdict():
                r = at(e.round)
                r.accepted, r.review = e.verdict == "pass", e.review
                r.reasons = list(e.reasons)
    for r in rounds.values():
        _count_replies(run_dir / f"round-{r.number}" / "coder.json", r)
    return [rounds[n] for n in sorted(rounds) if n > 0]


def _count_replies(path: Path, r: Round) -> None:
    try:
        messages = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    replies = 0
    for m in messages if isinstance(messages, list) else []:
        content = str(m.get("content") or "")
        if m.get("role") == "tool":
            r.malformed += content.startswith(MALFORMED_PREFIXES)
        elif m.get("role") == "assistant":
            finish = r.finish_reasons[replies] if replies < len(r.finish_reasons) else ""
            replies += 1
            r.last_reply_cut_off = False
            if m.get("tool_calls"):
                continue
            r.replies_without_tool_call += 1
            if finish == "length":  # the reply cap cut it off: a limit, not a bad call
                r.cut_off += 1
                r.last_reply_cut_off = True
            elif _looks_like_a_call(content):
                r.unparsed_markup += 1
                r.malformed += 1


def _looks_like_a_call(text: str) -> bool:
    """Tool-call markup, or a JSON call written as text, that the parser did not take."""
    return ("<tool_call>" in text or "<function" in text
            or ('"name"' in text and '"arguments"' in text))


def classify(
    rounds: list[Round],
    *,
    verdict: str,
    graded: Grade,
    ui: bool,
    run_error: str = "",
) -> tuple[str, str]:
    """(class, one line of evidence) for a task that did not pass; see the module docstring."""
    if run_error or verdict not in ("pass", "fail") or not rounds:
        return "run_error", run_error or f"the run ended without a verdict ({verdict})"
    last = rounds[-1]
    if not last.gate_ran:
        return "run_error", f"round {last.number} never reached the gate"
    edited = last.test_files_touched or graded.tests_edited
    if edited:
        return "tests_edited", "the change edits tests: " + ", ".join(edited)
    empty = not last.files or not last.changes_content
    stuck = empty or (last.tests_ran and not last.tests_passed)
    what = ("no file changed" if not last.files else "only blank lines and line-end spaces "
            "changed" if empty else "the tests fail")
    if stuck and last.tool_errors_dominate:
        failed = last.tool_failures + last.unparsed_markup
        return "tool_errors", (f"{failed} of {last.tool_calls + last.unparsed_markup} tool "
                               f"call(s) failed in round {last.number}; {what}")
    if empty and last.refused:
        return "no_change", (f"the coder tried to finish {last.refused} time(s) in round "
                             f"{last.number} without changing a file, and was refused each time "
                             f"(it stopped: {last.stopped or 'unknown'})")
    if stuck and last.stopped in LIMIT_STOPS:
        return "limit", f"the coder was stopped at {last.stopped} in round {last.number}; {what}"
    if stuck and last.stopped == "answer" and last.last_reply_cut_off:
        return "limit", (f"the coder's last reply in round {last.number} was cut off at the "
                         f"per-reply token cap before it called a tool; {what}")
    if empty:
        return "no_change", (f"the coder stopped ({last.stopped or 'unknown'}) in round "
                             f"{last.number}; {what}")
    if last.tests_ran and not last.tests_passed:
        return "visible_tests_fail", _first_line(last.gate_failures, "the test command failed")
    wrong = [f for f in last.gate_failures
             if f.startswith(EXAMPLE_FAILURE) or NAMES_FAILURE.match(f)]
    if wrong:
        return "visible_tests_fail", _first_line(wrong, "")
    if ui and not (last.qa_ran and last.qa_passed):
        why = last.qa_note if not last.qa_ran else _first_line(
            [f for f in last.gate_failures if f.startswith("visual QA")], last.qa_note)
        return "visual_qa_failed", why or "the visual gate did not run"
    if not graded.passed:
        if not graded.applied:
            return "hidden_tests_fail", "the run's diff does not apply to the start"
        failing = graded.hidden_failed + graded.visible_failed
        return "hidden_tests_fail", "failing: " + ", ".join(failing[:4])
    if not last.accepted:
        return "review_refused", _first_line(last.reasons, "the review did not accept it")
    return "unclassified", f"loop verdict {verdict}, graded {'pass' if graded.passed else 'fail'}"


def _first_line(items: list[str], default: str) -> str:
    for item in items:
        line = item.strip().splitlines()[0] if item.strip() else ""
        if line:
            return line[:300]
    return default
