"""Between rounds: what a failed round leaves the next one to start from, and to be told.

    between = Between(checkout, emit, run_id, cfg.loop, tests_now)
    nxt = between.after(round_no, base, gate, fixes, tests_ok, test_cmd)
    if nxt.stalled: ...                     # stop: the next coder would repeat this round
    failures, start, again = nxt.failures, nxt.start, nxt.again

A failed round's change either stays for the next coder to fix, or is undone first:
- its edits to existing tests are put back (the gate holds the code to the tests as they were);
- with `[loop] retry_from_start`, a change whose code the gate found wrong (the tests fail, or
  one of the task's examples) is undone whole, and the next coder starts from the start, told
  what was wrong with the attempt. A change that failed only on the page or the review stays.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent_node.config import LoopSection
from agent_node.events import Note
from agent_node.loop import examples as task_examples
from agent_node.loop.checkout import Checkout
from agent_node.loop.gate import GateResult, tests_touched

# "1 failed in 1.03s": what differs between two runs of the same tests on the same tree
_TIMING = re.compile(r"\b\d+(?:\.\d+)?(?:s|ms| seconds?)\b")


@dataclass(frozen=True)
class Next:
    failures: list[str]  # what the next brief says was wrong
    start: str = ""  # the commit the next coder starts from ("": the one the gate tested)
    again: bool = False  # it starts from the start (retry_from_start)
    stalled: str = ""  # why there is no next round, when it would repeat this one


@dataclass
class Between:
    checkout: Checkout
    emit: Callable[[Any], object]
    run_id: str
    loop: LoopSection
    tests_now: Callable[[str, str], tuple[bool, str]]  # (test_cmd, when) -> (passed, as shown)
    last_state: tuple[str, list[str]] | None = None

    def after(self, round_no: int, base: str, gate: GateResult, fixes: list[str],
              tests_ok: bool, test_cmd: str) -> Next:
        """The next round, after round `round_no` failed with `fixes`."""
        more = round_no < self.loop.max_rounds
        edited = [] if tests_ok else [path for _, path in tests_touched(gate.diff)]
        if self.loop.retry_from_start and more and not gate.diff.empty and broken(gate):
            nxt = Next(self.start_again(round_no, base, edited, fixes, gate.tests_failure),
                       start=base, again=True)
        elif edited and more:
            nxt = self.put_tests_back(round_no, base, edited, test_cmd, fixes,
                                      gate.tests_failure)
        else:
            nxt = Next(fixes)
        # the next brief is this round's, but for its number, when this round left the
        # checkout as the one before did and failed the same way
        state = None if edited else (gate.diff.patch, [_TIMING.sub("#", f) for f in fixes])
        if (state is not None and state == self.last_state and self.loop.stops_when_stalled()
                and more):
            return Next(nxt.failures, stalled=(
                f"stopped after round {round_no}: it left the checkout as round "
                f"{round_no - 1} did and failed the same way, so round {round_no + 1}'s coder "
                f"would get the same brief and, decoding greedily, give the same replies "
                f"(loop.stop_when_stalled)"))
        self.last_state = state
        return nxt

    def put_tests_back(self, round_no: int, base: str, paths: list[str], test_cmd: str,
                       fixes: list[str], stale: str) -> Next:
        """Undo a failed round's edits to existing tests before the next round: its coder starts
        from the tests the gate holds it to, and is told so, with what they say now (the gate's
        output, `stale`, came from the edited ones)."""
        self.checkout.restore(base, paths)
        start = self.checkout.snapshot(
            base, f"studio-coder run {self.run_id} round {round_no}, its test edits undone")
        named = ", ".join(paths)
        self.emit(Note(text=f"round {round_no} edited existing tests ({named}); they are put "
                       f"back as they were before round {round_no + 1}", round=round_no))
        said = (f"your change edited existing tests ({named}); they are back as they were, and "
                "must stay so: change the code until they pass as they are")
        rest = [f for f in fixes if not (stale and f == stale)]
        if test_cmd:
            passed, now = self.tests_now(test_cmd,
                                         "on the code as it is, with the tests put back")
            if not passed:
                rest.insert(0, now.strip())
        return Next([said, *rest], start=start)

    def start_again(self, round_no: int, base: str, edited: list[str], fixes: list[str],
                    stale: str) -> list[str]:
        """Undo a round whose change the gate found wrong: the next brief's failures, less the
        output of tests the change edited (it came from them)."""
        undone = self.checkout.undo(base)
        self.emit(Note(text=f"round {round_no}'s change ({', '.join(undone)}) is undone: round "
                       f"{round_no + 1} starts again from the start ([loop] retry_from_start)",
                       round=round_no))
        rest = [f for f in fixes if not (edited and stale and f == stale)]
        if edited:
            rest.insert(0, f"it edited existing tests ({', '.join(edited)}), which must stay "
                        "as they are: change the code until they pass")
        return rest


def broken(gate: GateResult) -> bool:
    """Whether the gate found the change's code wrong: the tests fail, or it gets one of the
    task's examples wrong (not only the page or the review found something)."""
    return bool(gate.tests_failure) or any(
        f.startswith(task_examples.FAILURE) for f in gate.failures)
