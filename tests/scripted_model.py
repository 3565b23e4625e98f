"""A scripted Model for tests that check the loop's decisions, not the wiring."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from agent_node.model import Reply, ToolCall

Step = Reply | Callable[[list[dict[str, Any]], dict[str, Any]], Reply]


class ScriptedModel:
    """Plays back replies in order; a callable step sees the messages and the call's options."""

    def __init__(self, steps: list[Step], name: str = "scripted") -> None:
        self.name = name
        self.steps = list(steps)
        self.calls: list[dict[str, Any]] = []

    def chat(self, messages: list[dict[str, Any]], **options: Any) -> Reply:
        self.calls.append({"messages": [dict(m) for m in messages], **options})
        if not self.steps:
            raise AssertionError(f"{self.name}: script ran out after {len(self.calls) - 1} calls")
        step = self.steps.pop(0)
        reply = step(messages, options) if callable(step) else step
        reply.model = reply.model or self.name
        return reply


def text(s: str) -> Reply:
    return Reply(text=s)


def as_json(obj: Any) -> Reply:
    return Reply(text=json.dumps(obj))


def call(name: str, _id: str = "", **arguments: Any) -> Reply:
    return Reply(
        tool_calls=[ToolCall(id=_id or f"call-{name}", name=name, arguments=arguments)],
        finish_reason="tool_calls",
    )
