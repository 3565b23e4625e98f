"""Chat-completions replies built from the node's event stream: whole, or as SSE chunks.

    reply = Completion(req.request_id, req.model)
    reply.fold.add(ev)  ...  reply.response()         # non-streaming
    reply.chunks_for(ev) ... reply.closing(usage)     # streaming; ends with `data: [DONE]`
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from agent_node.bridge.errors import http_error
from agent_node.chat_fold import ChatFold
from inference_node.api import pb


def _tool_call_json(tc: pb.ToolCall, index: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": tc.id or f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                           "function": {"name": tc.name, "arguments": tc.arguments_json or "{}"}}
    return out if index is None else {"index": index, **out}


def sse(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class Completion:
    """A chat completion as the stream arrives: folded by ChatFold, shaped for OpenAI."""

    def __init__(self, request_id: str, model: str) -> None:
        self.id = f"chatcmpl-{request_id}"
        self.created = int(time.time())
        self.fold = ChatFold(model=model)
        self._tool_index = 0

    def usage(self) -> dict[str, Any] | None:
        if self.fold.done is None:
            return None
        u = self.fold.done.usage
        return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                "total_tokens": u.prompt_tokens + u.completion_tokens,
                # what the node's prompt cache served, where OpenAI's clients look for it
                "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
                # speculative decoding's proposals, under OpenAI's names for its predicted
                # outputs: the ones the model kept, and the ones it did not
                "completion_tokens_details": {
                    "reasoning_tokens": u.reasoning_tokens,
                    "accepted_prediction_tokens": u.accepted_draft_tokens,
                    "rejected_prediction_tokens": u.draft_tokens - u.accepted_draft_tokens}}

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.fold.model}

    def response(self) -> dict[str, Any]:
        f = self.fold
        msg: dict[str, Any] = {"role": "assistant", "content": f.text or None}
        if f.reasoning:
            msg["reasoning_content"] = f.reasoning_text
        if f.tool_calls:
            msg["tool_calls"] = [_tool_call_json(tc) for tc in f.tool_calls]
        elif msg["content"] is None:
            msg["content"] = ""
        choice: dict[str, Any] = {"index": 0, "message": msg, "finish_reason": f.finish_reason,
                                  "logprobs": None}
        if f.done is not None and f.done.cut_off_while_reasoning:
            choice["cut_off_while_reasoning"] = True
        return {**self._head("chat.completion"), "choices": [choice], "usage": self.usage()}

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return sse({**self._head("chat.completion.chunk"),
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                 "logprobs": None}]})

    def chunks_for(self, ev: pb.ChatEvent) -> bytes:
        """Fold `ev` in and return the SSE chunk it makes (b"" when it makes none)."""
        kind = self.fold.add(ev)
        if kind == "delta" and ev.delta.text:
            key = "reasoning_content" if ev.delta.kind == pb.Delta.REASONING else "content"
            return self.chunk({key: ev.delta.text})
        if kind == "tool_call":
            self._tool_index += 1
            return self.chunk({"tool_calls": [_tool_call_json(ev.tool_call,
                                                              self._tool_index - 1)]})
        return b""

    def closing(self, include_usage: bool) -> bytes:
        """The finish chunk, the usage chunk when asked for, and [DONE]."""
        out = self.chunk({}, self.fold.finish_reason)
        if include_usage:
            out += sse({**self._head("chat.completion.chunk"), "choices": [],
                        "usage": self.usage()})
        return out + SSE_DONE


def stream_error(err: Exception) -> bytes:
    """An error after the status line went out: said in the stream, with its status inside."""
    status, body, _ = http_error(err)
    body["error"]["status"] = status
    return sse(body)


def model_card(m: pb.ModelInfo, created: int) -> dict[str, Any]:
    return {"id": m.name, "object": "model", "created": created, "owned_by": "studio-coder",
            "context_length": m.context_length, "loaded": m.state == pb.ModelInfo.LOADED}
