"""The coder: a fresh sub-agent per round, with its own context; only its report comes back.

The loop is pi's: ask the model → run its tool calls → append the results → repeat, until it
calls `finish`, answers without a tool call, or hits a bound (turns, generated tokens, wall time).
A failing tool's error becomes that tool's result; it never ends the loop.

`CoderChecks` are what the loop checks for the coder as it goes, so a small model learns at
once what the gate would tell it a round later: after each `edit` or `write` the test command
runs and its result is appended to that tool's result, and `finish` is withheld while the
checkout is unchanged for a task that asks for a change. Withheld, not refused: the prompt still
lists every tool (so its prefix, and the node's cache of it, stays the same from turn to turn),
and the node's grammar lets the call pick only among the others. A model that sends `finish`
anyway (one not constrained by the node) has it refused.

A greedy small model that gets the same context twice makes the same call twice, and then
forever. With `repeats` on, a call identical to the one just before it is not run again: its
result says so, and that tool is withheld for the next turn, so the next call differs.

With `first` set (the brief already shows the files, and the task asks for a change), the first
call may only be one of those tools (`edit`, `write`): the model acts on what it was shown
instead of searching for it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_node import activity, prompts
from agent_node.events import Event, ModelCall, Note, ToolCall
from agent_node.exceptions import DeadlineExceeded
from agent_node.loop.context import inside
from agent_node.loop.names import Unbound, Unset
from agent_node.model import Model, Reply
from agent_node.schemas import bounded_tool
from agent_node.tools import FINISH, run_tool
from agent_node.unfinished import TIME, explain
from agent_node.wire import allowed_tools

Emit = Callable[[Event], object]  # RunRecord.emit


@dataclass
class CoderLimits:
    max_turns: int = 30
    max_tokens: int = 200_000  # tokens generated in one round, reasoning included
    wall_s: float = 900.0
    reply_tokens: int | None = None  # per reply; None: the server's generous default
    timeout_s: float = 0.0  # the stream's deadline ([inference] timeout_s), for messages


@dataclass
class CoderChecks:
    """What the loop checks for the coder during its round (each None: not checked)."""

    changed: Callable[[], bool] | None = None  # finish is refused while this says False
    tests: Callable[[], tuple[bool, str]] | None = None  # after each edit/write: (passed, text)
    repeats: bool = False  # refuse a call identical to the one before it (see the docstring)
    first: tuple[str, ...] = ()  # the tools the first call may pick from; (): any
    diff: Callable[[], str] | None = None  # `git diff --numstat` of the round so far (files form)
    # Reads of names no file defines, and of attributes their class never sets, on the lines
    # the round added ([loop] define_missing; files form): each is asked for alone (define.py).
    missing: Callable[[], list[Unbound | Unset]] | None = None
    # A rename the round made, carried to the uses it missed (rename.py; [loop] define_missing,
    # files form): what the coder is told of it, "" when there were none.
    renamed: Callable[[], str] | None = None
    # The task's own examples the checkout gets wrong now ([loop] task_examples; files form):
    # with rewrite_named, the task's functions are then asked for afresh (examples.py).
    examples: Callable[[], list[str]] | None = None


EDITS = ("edit", "write")


@dataclass
class CoderResult:
    report: str
    turns: int
    tokens: int
    # "finish" | "answer" | "max_turns" | "max_tokens" | "wall_time" | "deadline" | "repeat"
    stopped: str
    messages: list[dict[str, Any]]


def tool_spec(tool: Any) -> dict[str, Any]:
    if hasattr(tool, "spec"):
        return dict(tool.spec())
    return {"name": tool.name, "description": tool.description, "parameters": tool.parameters}


def call_tool(
    tools: dict[str, Any], name: str, arguments: dict[str, Any]
) -> tuple[bool, str, bool]:
    """(ok, output, finished); never raises, whatever the tool does."""
    result = run_tool(tools, name, arguments)
    return bool(result.ok), str(result.output), bool(result.finished)


def run_coder(
    model: Model,
    system_prompt: str,
    brief: str,
    tools: dict[str, Any],
    limits: CoderLimits,
    *,
    emit: Emit,
    round_no: int,
    checks: CoderChecks | None = None,
) -> CoderResult:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": brief},
    ]
    specs = [bounded_tool(tool_spec(t)) for t in tools.values()]  # so every turn ends
    start = time.monotonic()
    turns = tokens = 0
    last_text = ""
    checks = checks or CoderChecks()
    previous: tuple[str, str] | None = None  # the last call run: (name, its arguments as JSON)
    withheld: set[str] = set()  # tools the next turn may not call

    def result(report: str, stopped: str) -> CoderResult:
        return CoderResult(report, turns, tokens, stopped, messages)

    while True:
        if turns >= limits.max_turns:
            return result(_cut_report("max_turns", f"{limits.max_turns} turns", last_text),
                          "max_turns")
        if tokens >= limits.max_tokens:
            return result(_cut_report("max_tokens", f"{tokens} tokens", last_text), "max_tokens")
        if time.monotonic() - start >= limits.wall_s:
            return result(_cut_report("wall_time", f"{limits.wall_s:.0f} s", last_text),
                          "wall_time")
        # Every turn is a tool call (finishing is the `finish` tool), so the server can constrain
        # the call to the tools' schemas even for models with no tool format of their own.
        try:
            reply = model.chat(messages, tools=specs,
                               tool_choice=_tool_choice(tools, checks, withheld, turns == 0),
                               max_tokens=limits.reply_tokens)
        except DeadlineExceeded as e:  # one reply ran past the stream's deadline: end the round
            last = activity.last_call()  # a forced tool call streams no tokens until it ends
            why = explain(f"coder turn {turns + 1}", e.model or model.name, TIME,
                          tokens=last.tokens if last and last.tokens else None,
                          seconds=last.seconds if last else 0.0,
                          budget_key="[loop] coder_reply_tokens", timeout_s=limits.timeout_s,
                          unknown_because="a tool call is not streamed: it arrives whole")
            emit(Note(text=f"{why}; the round goes on to the gate with what is in the checkout",
                      round=round_no))
            return result(_cut_report("deadline", "the stream's deadline", last_text), "deadline")
        turns += 1
        tokens += reply.usage.completion_tokens  # reasoning tokens are among them
        emit(model_call(reply, role="coder", round_no=round_no))
        last_text = reply.text or last_text
        messages.append({
            "role": "assistant",
            "content": reply.text,
            "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments}
                           for c in reply.tool_calls],
        })
        if not reply.tool_calls:
            if reply.cut_off_while_reasoning:
                messages.append({"role": "user",
                                 "content": prompts.render("loop/coder_cut_off")})
                continue
            return result(reply.text, "answer")
        withheld = set()
        for call in reply.tool_calls:
            t0 = time.monotonic()
            key = (call.name, json.dumps(call.arguments, sort_keys=True, default=str))
            if checks.repeats and key == previous:
                ok, finished, refused = False, False, True
                output = "error: " + prompts.render("loop/repeat_refused", tool=call.name)
                withheld.add(call.name)
            else:
                ok, output, finished, refused = _checked_call(tools, call.name, call.arguments,
                                                              checks)
            previous = key
            emit(ToolCall(round=round_no, name=call.name, arguments=_short(call.arguments),
                          ok=ok, output_chars=len(output),
                          seconds=round(time.monotonic() - t0, 3), refused=refused))
            messages.append({"role": "tool", "tool_call_id": call.id, "name": call.name,
                             "content": output})
            if finished:  # the tool's output is the report as text
                return result(output, "finish")


def _tool_choice(tools: dict[str, Any], checks: CoderChecks, withheld: set[str],
                 first: bool) -> str | dict[str, Any]:
    """Any tool, or all but those withheld: `finish` while finishing would be refused, a tool
    whose last call was a refused repeat, and on the first turn all but `checks.first`."""
    out = set(withheld)
    if first and checks.first and set(checks.first) & set(tools):
        out |= set(tools) - set(checks.first)
    if FINISH in tools and checks.changed is not None and not checks.changed():
        out.add(FINISH)
    allowed = [name for name in tools if name not in out]
    return allowed_tools(allowed) if out & set(tools) and allowed else "required"


def _checked_call(tools: dict[str, Any], name: str, arguments: dict[str, Any],
                  checks: CoderChecks) -> tuple[bool, str, bool, bool]:
    """call_tool with the loop's checks around it (see the module docstring): (ok, output,
    finished, refused by the loop)."""
    if name == FINISH and checks.changed is not None and not checks.changed():
        return False, "error: " + prompts.render("loop/finish_refused"), False, True
    ok, output, finished = call_tool(tools, name, arguments)
    if ok and name in EDITS and checks.tests is not None:
        output += "\n\n" + checks.tests()[1]
    return ok, output, finished, False


def model_call(reply: Reply, *, role: str, round_no: int) -> ModelCall:
    """The record's event for one reply of a model."""
    return ModelCall(
        role=role, round=round_no, model=reply.model,
        prompt_tokens=reply.usage.prompt_tokens,
        cached_prompt_tokens=reply.usage.cached_prompt_tokens,
        completion_tokens=reply.usage.completion_tokens,
        reasoning_tokens=reply.usage.reasoning_tokens,
        seconds=round(reply.seconds, 3),
        decode_tps=round(reply.decode_tps, 1),
        finish_reason=reply.finish_reason,
        cut_off_while_reasoning=reply.cut_off_while_reasoning,
        recomputed_prompt_tokens=reply.usage.recomputed_prompt_tokens,
        recompute_cause=reply.usage.recompute_cause,
        draft_tokens=reply.usage.draft_tokens,
        accepted_draft_tokens=reply.usage.accepted_draft_tokens,
    )


def _cut_report(reason: str, amount: str, last_text: str) -> str:
    said = f" Its last words: {last_text[:2000]}" if last_text else ""
    return f"(the coder was stopped at {amount} ({reason}) before calling finish.{said})"


def _short(arguments: dict[str, Any], limit: int = 400) -> str:
    text = json.dumps(arguments, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def write_file(tools: dict[str, Any], root: Path, path: str, content: str, emit: Emit,
               round_no: int) -> tuple[str, bool, str]:
    """Write one file through the write tool; a file given back as it is is not written."""
    try:
        if inside(root, root / path) and (root / path).read_text(encoding="utf-8") == content:
            return path, False, f"{path}: unchanged (your reply gave it back as it was)"
    except (OSError, UnicodeDecodeError, ValueError):
        pass  # a new file, or one the write tool will refuse and say why
    t0 = time.monotonic()
    ok, output, _ = call_tool(tools, "write", {"path": path, "content": content})
    emit(ToolCall(round=round_no, name="write", arguments=json.dumps({"path": path}), ok=ok,
                  output_chars=len(output), seconds=round(time.monotonic() - t0, 3)))
    return path, ok, f"{path}: {output}"
