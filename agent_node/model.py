"""What the agent loop needs from a model, as Protocols, and the shapes that cross them.

The loop, the judge and the describer talk to `Model` and `Describer`; `client.py` provides the
real ones over gRPC, and tests provide scripted ones where they check the loop's decisions.

Messages are plain dicts in the chat-completions shape:
    {"role": "user", "content": "..."}
    {"role": "assistant", "content": "",
     "tool_calls": [{"id": "c1", "name": "read", "arguments": {...}}]}
    {"role": "tool", "tool_call_id": "c1", "name": "read", "content": "..."}
Tools are {"name", "description", "parameters"} with `parameters` a JSON Schema object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens whose KV the server reused (its prompt cache)
    # prompt tokens the server had run before and computed again, and why (evicted,
    # rerendered, retokenized, reasoning_dropped); the other uncached ones were new to it
    recomputed_prompt_tokens: int = 0
    recompute_cause: str = ""
    # speculative decoding (a draft model, or prompt lookup): tokens proposed, and how many of
    # them the model kept; both 0 when it decoded one token a pass
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0


@dataclass
class Reply:
    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    cut_off_while_reasoning: bool = False
    decode_tps: float = 0.0
    seconds: float = 0.0


@dataclass
class CallProgress:
    """A model call in flight, as its stream arrives (for progress display; never a result)."""

    model: str = ""
    tokens: int = 0  # generated so far, content and reasoning; one per streamed piece
    reasoning_tokens: int = 0
    seconds: float = 0.0  # since the call was sent
    queue_seconds: float = 0.0  # of which waiting for admission on the inference node
    done: bool = False


@dataclass
class Description:
    text: str
    model: str
    note: str = ""  # e.g. "image downscaled from 2560x1600 to 1280x800"
    seconds: float = 0.0


class Model(Protocol):
    @property
    def name(self) -> str: ...

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        # auto | none | required | <tool name> | wire.allowed_tools(names) (required, among names)
        tool_choice: str | dict[str, Any] = "auto",
        response_format: dict[str, Any] | None = None,  # a JSON Schema the reply must match
        max_tokens: int | None = None,
        # this call's sampling (temperature, top_p, top_k, min_p, seed, repetition_penalty),
        # over the model's own; None: the model's (greedy unless configured)
        sampling: dict[str, Any] | None = None,
    ) -> Reply: ...


class Describer(Protocol):
    @property
    def name(self) -> str: ...

    def describe(self, image: bytes, instruction: str = "") -> Description: ...
