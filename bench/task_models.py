"""The models the task bench drives the loop with, besides the real one over gRPC.

`MeteredModel` wraps any Model: it caps each reply's max_tokens and adds up the usage the
inference node reported. `SmokeModel` is BENCH_SMOKE's scripted stand-in.
"""

from __future__ import annotations

import json
from typing import Any


class MeteredModel:
    """A Model whose replies are capped at `max_tokens` and whose usage is added up."""

    def __init__(self, inner: Any, max_tokens: int | None = None) -> None:
        self.inner = inner
        self.max_tokens = max_tokens
        self.usage = {"calls": 0, "prompt": 0, "cached": 0, "generated": 0}

    def chat(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
             tool_choice: str | dict[str, Any] = "auto",
             response_format: dict[str, Any] | None = None,
             max_tokens: int | None = None, sampling: dict[str, Any] | None = None) -> Any:
        cap = max_tokens
        if self.max_tokens:
            cap = min(max_tokens or self.max_tokens, self.max_tokens)
        reply = self.inner.chat(messages, tools=tools, tool_choice=tool_choice,
                                response_format=response_format, max_tokens=cap,
                                **({"sampling": sampling} if sampling else {}))
        u = reply.usage
        self.usage["calls"] += 1
        self.usage["prompt"] += u.prompt_tokens
        self.usage["cached"] += u.cached_prompt_tokens
        self.usage["generated"] += u.completion_tokens  # reasoning is counted among them
        return reply

    @property
    def name(self) -> str:
        return str(getattr(self.inner, "name", ""))

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)


class SmokeModel:
    """BENCH_SMOKE's stand-in: answers each loop question at once and makes a known change.

    The smoke run checks the bench's plumbing (repo setup, the loop, the visual gate, grading,
    classification, counting) in seconds; the real model's path is what --quick and a full run
    measure.
    """

    name = "smoke-scripted"

    def __init__(self, calls: list[tuple[str, dict[str, Any]]]) -> None:
        self.calls = list(calls)

    def chat(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
             tool_choice: str | dict[str, Any] = "auto",
             response_format: dict[str, Any] | None = None,
             max_tokens: int | None = None, sampling: dict[str, Any] | None = None) -> Any:
        from agent_node.model import Reply, ToolCall, Usage

        usage = Usage(prompt_tokens=10, completion_tokens=5, cached_prompt_tokens=4)
        schema = response_format or {}
        props = {k for branch in [schema, *schema.get("anyOf", [])]  # the judge's is an anyOf
                 for k in branch.get("properties", {})}
        answer: dict[str, Any] | None = None
        if "verdict" in props:  # the loop's review
            answer = {"verdict": "pass", "reasons": ["tests pass"], "fixes": [],
                      "tests_change_ok": False}
        elif "ui" in props:  # classification
            answer = {"ui": False, "asks_for_change": True, "page": "", "reason": "smoke"}
        elif "pass" in props:  # the visual judge
            answer = {"pass": True, "failures": []}
        if answer is not None:
            return Reply(text=json.dumps(answer), usage=usage, model=self.name)
        if tools and self.calls:
            name, args = self.calls.pop(0)
            return Reply(tool_calls=[ToolCall(id=f"s{len(self.calls)}", name=name,
                                              arguments=args)],
                         finish_reason="tool_calls", usage=usage, model=self.name)
        return Reply(tool_calls=[ToolCall(id="done", name="finish",
                                          arguments={"summary": "smoke change made"})],
                     finish_reason="tool_calls", usage=usage, model=self.name)


SMOKE_CALLS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "fizzbuzz": [("write", {"path": "fizz.py", "content": (
        "def fizzbuzz(n: int) -> str:\n    return 'Fizz' * (n % 3 == 0) + 'Buzz' * (n % 5 == 0)"
        " or str(n)\n")})],
    "ui_signup_button": [
        ("edit", {"path": "index.html", "old": "    </nav>\n",
                  "new": '    </nav>\n    <a class="button" href="#signup">Sign up</a>\n'}),
        ("edit", {"path": "style.css", "old": "nav a {",
                  "new": ".button { background: #333; color: #fff; }\nnav a {"}),
    ],
}
