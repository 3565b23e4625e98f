"""What is in flight: named stages, and the model call running now, for progress on stderr.

    with activity.reporting(on_event):             # the orchestrator, for the length of a run
        with activity.stage("tests", round_no=1):   # anyone below it: the gate, visual QA, ...
            ...
        model.on_progress = activity.call_progress   # a GrpcModel's hook

`on_event` receives `agent_node.events` events:
    Stage(stage="tests", state="started", round=1)
    Stage(stage="tests", state="done" | "failed", seconds=12.3, round=1)
    InFlight(step="classify", model="smollm2", tokens=120, reasoning_tokens=0, seconds=14.2,
             done=False)
Stage events are worth keeping in the run record; in-flight ones are only for the screen and
come at most once a second per call (and once when it ends).

Outside `reporting` every function here does nothing, so code that reports its stages runs
the same on its own (`agent-node check-ui`, tests). State lives in context variables: the loop
is one thread, and a helper thread starts with none.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from agent_node.events import InFlight, Stage
from agent_node.model import CallProgress

OnEvent = Callable[[Stage | InFlight], None]
IN_FLIGHT_EVERY_S = 1.0


@dataclass
class _State:
    on_event: OnEvent
    stages: list[str] = field(default_factory=list)
    last: CallProgress | None = None  # the latest progress of the call in flight, or last call
    shown_at: float = 0.0


_state: contextvars.ContextVar[_State | None] = contextvars.ContextVar("activity", default=None)


@contextmanager
def reporting(on_event: OnEvent) -> Iterator[None]:
    """Send this block's stages and in-flight calls to `on_event`."""
    token = _state.set(_State(on_event))
    try:
        yield
    finally:
        _state.reset(token)


@contextmanager
def stage(name: str, *, round_no: int = 0, when: str = "") -> Iterator[None]:
    """Report `name` as started, then done (or failed, if the block raises) with its seconds;
    `round_no` and `when` say where in the run it is (0, "": not in a round, not special)."""
    st = _state.get()
    if st is None:
        yield
        return
    st.stages.append(name)
    st.last = None
    st.on_event(Stage(stage=name, state="started", round=round_no, when=when))
    t0 = time.monotonic()
    state: Literal["done", "failed"] = "failed"
    try:
        yield
        state = "done"
    finally:
        st.stages.pop()
        st.on_event(Stage(stage=name, state=state, seconds=round(time.monotonic() - t0, 2),
                          round=round_no, when=when))


def call_progress(progress: CallProgress) -> None:
    """A model's `on_progress` hook: remember the call's progress and show it now and then."""
    st = _state.get()
    if st is None:
        return
    st.last = progress
    now = time.monotonic()
    first = progress.tokens == 0 and not progress.done
    if not (first or progress.done or now - st.shown_at >= IN_FLIGHT_EVERY_S):
        return
    st.shown_at = now
    st.on_event(InFlight(step=current_step(), model=progress.model, tokens=progress.tokens,
                         reasoning_tokens=progress.reasoning_tokens,
                         seconds=round(progress.seconds, 1), done=progress.done))


def current_step() -> str:
    """The innermost stage running now ("" outside any)."""
    st = _state.get()
    return st.stages[-1] if st is not None and st.stages else ""


def last_call() -> CallProgress | None:
    """What the call in flight (or the last one of this stage) had produced when last heard of:
    the tokens a call cut off by its deadline had made, which its error does not carry."""
    st = _state.get()
    return st.last if st is not None else None
