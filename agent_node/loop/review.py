"""A round's verdict: the gate's failures, or else the strong model's code review.

The gate decides first (tests, the names check, visual QA and its judge); only a change it
passed is reviewed. `[loop] review = "advisory"` lets the gate's pass stand whatever the review
says, except for a change to existing tests the review calls unasked: the loop puts those back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from agent_node import activity, prompts
from agent_node.config import LoopSection
from agent_node.loop.errors import StructuredOutputError
from agent_node.loop.gate import GateResult


@dataclass(frozen=True)
class Reviewer:
    """How the review is asked: `ask` sends a prompt and returns the REVIEW object (or raises
    StructuredOutputError), `unfinished` says plainly what the run does when it gave nothing."""

    ask: Callable[[str], Any]
    unfinished: Callable[[StructuredOutputError, str], None]
    loop: LoopSection
    round_no: int


class Decision(NamedTuple):
    passed: bool
    reasons: list[str]
    fixes: list[str]  # for the next round
    review: Literal["", "pass", "fail"]  # the review's own verdict; "" when it was not asked
    tests_ok: bool  # whether the review accepted the change's edits to existing tests


def decide_round(gate: GateResult, reviewer: Reviewer, *, task: str, spec: list[str] | None,
                 report: str, test_cmd: str) -> Decision:
    """The round's verdict, from the gate's failures or else the code review (the visual
    judge's verdict is among the gate's). When the gate fails the review is not asked."""
    if not gate.passed:
        return Decision(False, gate.failures + gate.flags, gate.failures, "", False)
    advisory = reviewer.loop.review == "advisory"
    t = gate.tests
    prompt = prompts.render(
        "loop/review", task=task, spec=spec or [], files=[p for _, p in gate.diff.files],
        flags=gate.flags, test_cmd=test_cmd, report=report,
        test_result=("not run" if t is None else f"exit {t.exit_code} in {t.seconds:.1f} s"),
        diff=gate.diff.patch[: reviewer.loop.output_limit * 2])
    try:
        with activity.stage("review", round_no=reviewer.round_no):
            review = reviewer.ask(prompt)
    except StructuredOutputError as e:
        if advisory and not gate.test_files_touched:
            reviewer.unfinished(e, "the round passes on the gate: loop.review is advisory")
            return Decision(True, [f"the review gave no usable verdict: {e}", *gate.flags], [],
                            "", False)
        reviewer.unfinished(e, "the round fails: an unreviewed change is never passed")
        return Decision(False, [f"the review gave no usable verdict: {e}"], [
            "the change could not be reviewed; make it again, clearly and minimally"], "", False)
    reasons = list(review["reasons"]) + gate.flags
    fixes = list(review["fixes"]) or list(review["reasons"])
    passed = review["verdict"] == "pass"
    if gate.test_files_touched and not review["tests_change_ok"]:
        touched = ", ".join(gate.test_files_touched)
        reasons.insert(0, f"the coder changed existing tests to get them passing: {touched}")
        return Decision(False, reasons, fixes, review["verdict"], False)  # the loop puts them back
    if advisory and not passed:
        reasons.insert(0, "the review did not accept this change; loop.review is advisory, "
                       "so the round passes on the gate. Read its reasons before approving")
        return Decision(True, reasons, [], review["verdict"], True)
    return Decision(passed, reasons, fixes, review["verdict"], bool(review["tests_change_ok"]))
