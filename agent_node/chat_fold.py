"""The one fold of a Chat or Describe event stream: the client, the describer and the bridge use it.

    fold = ChatFold()
    for ev in events:               # pb.ChatEvent: admitted, delta, tool_call, done
        fold.add(ev)
    fold.text, fold.reasoning_text, fold.tool_calls, fold.finish_reason, fold.done
    fold.reply()                    # agent_node.model.Reply, for the loop
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent_node.exceptions import DeadlineExceeded
from agent_node.model import CallProgress, Reply, ToolCall, Usage
from inference_node.api import pb


@dataclass
class ChatFold:
    """What a stream said so far: content apart from reasoning, tool calls, the closing `done`."""

    model: str = ""
    note: str = ""  # Describe: what the node did to the image (downscaled, ...)
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: list[pb.ToolCall] = field(default_factory=list)
    done: pb.Done | None = None
    started: float = field(default_factory=time.monotonic)

    def add(self, ev: pb.ChatEvent) -> str | None:
        """Fold one event in; returns its kind ("admitted", "delta", "tool_call", "done")."""
        kind = ev.WhichOneof("event")
        if kind == "admitted":
            self.model = ev.admitted.model or self.model
            self.note = ev.admitted.note or self.note
        elif kind == "delta":
            reasoning = ev.delta.kind == pb.Delta.REASONING
            (self.reasoning if reasoning else self.content).append(ev.delta.text)
        elif kind == "tool_call":
            self.tool_calls.append(ev.tool_call)
        elif kind == "done":
            self.done = ev.done
            self.model = ev.done.model or self.model
        return kind

    @property
    def text(self) -> str:
        return "".join(self.content)

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)

    @property
    def finish_reason(self) -> str:
        if self.done is not None and self.done.finish_reason:
            return self.done.finish_reason
        return "tool_calls" if self.tool_calls else "stop"

    def reply(self) -> Reply:
        """The folded stream as the loop's Reply (tool-call arguments parsed)."""
        reply = Reply(text=self.text, reasoning=self.reasoning_text, model=self.model,
                      finish_reason=self.finish_reason)
        for tc in self.tool_calls:
            try:
                args = json.loads(tc.arguments_json or "{}")
            except json.JSONDecodeError:
                args = {"_unparsed": tc.arguments_json}
            reply.tool_calls.append(ToolCall(tc.id, tc.name, args))
        d = self.done
        if d is not None:
            u = d.usage
            reply.usage = Usage(u.prompt_tokens, u.completion_tokens, u.reasoning_tokens,
                                u.cached_prompt_tokens, u.recomputed_prompt_tokens,
                                u.recompute_cause, u.draft_tokens, u.accepted_draft_tokens)
            reply.cut_off_while_reasoning = d.cut_off_while_reasoning
            reply.decode_tps = d.timings.decode_tokens_per_second
            reply.seconds = d.timings.total_seconds
        reply.seconds = reply.seconds or time.monotonic() - self.started
        return reply


def collect_reply(events: Iterable[pb.ChatEvent],
                  on_progress: Callable[[CallProgress], None] | None = None) -> Reply:
    """Fold a whole Chat stream into a Reply.

    `on_progress` sees the call in flight: once when admitted, after each streamed piece, and
    at the end (a forced tool call arrives whole, so it shows only elapsed time until then).
    """
    fold = ChatFold()
    progress = CallProgress()
    try:
        for ev in events:
            kind = fold.add(ev)
            if on_progress is None or kind == "tool_call":
                continue
            if kind == "admitted":
                progress.model = ev.admitted.model
                progress.queue_seconds = ev.admitted.queue_seconds
            elif kind == "delta":
                progress.tokens += 1
                progress.reasoning_tokens += ev.delta.kind == pb.Delta.REASONING
            elif kind == "done":
                progress.tokens = ev.done.usage.completion_tokens  # reasoning included
                progress.reasoning_tokens, progress.done = ev.done.usage.reasoning_tokens, True
            progress.seconds = time.monotonic() - fold.started
            on_progress(progress)
    except DeadlineExceeded as e:  # what was written is the caller's to keep (the record)
        e.partial = fold.text
        raise
    return fold.reply()
