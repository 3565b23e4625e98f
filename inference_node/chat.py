"""From a ChatRequest to prompt tokens, and from generated text back to ChatEvents.

Requests arrive here checked (`inference_node.validate`); what needs the tokenizer, the prompt
length against the context, is checked here, still before anything is admitted or queued.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from inference_node.api import pb
from inference_node.api import reasons as R
from inference_node.errors import BadRequest, ContextTooLong, invalid
from inference_node.mlx_compat import TextStates

ROLES = ("system", "user", "assistant", "tool")


def resolve_max_tokens(
    requested: int | None, prompt_tokens: int, context: int, default: int, model: str
) -> int:
    """max_tokens for this prompt: the default capped by the room left, or the request's.

    Raises ContextTooLong (CONTEXT_LENGTH_EXCEEDED) when the prompt alone fills the context or
    prompt + max_tokens overflows it, with the numbers a caller needs to shorten either.
    """
    room = context - prompt_tokens
    numbers: dict[str, Any] = {R.MODEL: model, R.PROMPT_TOKENS: prompt_tokens,
                               R.CONTEXT: context, R.MAX_TOKENS: requested,
                               R.MAX_TOKENS_ALLOWED: room}
    if room <= 0:
        raise ContextTooLong(
            f"the prompt is {prompt_tokens} tokens but {model}'s context is {context} "
            f"(its maximum context length is {context} tokens); shorten the conversation by "
            f"at least {1 - room} tokens", field="messages", **numbers)
    if requested is None:
        return min(default, room)
    if requested <= 0:
        raise invalid("max_tokens", requested, f"between 1 and {room} for {model}",
                      "leave it unset for a generous default capped by the context")
    if requested > room:
        raise ContextTooLong(
            f"max_tokens {requested} does not fit {model}'s context: {prompt_tokens} prompt "
            f"tokens + {requested} > {context} (its maximum context length is {context} "
            f"tokens); ask for at most {room}", field="max_tokens", **numbers)
    return requested


def template_messages(messages: Any) -> list[dict[str, Any]]:
    """Messages in the shape HF chat templates expect."""
    out: list[dict[str, Any]] = []
    for m in messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.text}
        if m.tool_calls:
            msg["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.loads(c.arguments_json or "{}")},
                }
                for c in m.tool_calls
            ]
        if m.role == "tool":
            msg["tool_call_id"] = m.tool_call_id
            if m.name:
                msg["name"] = m.name
        out.append(msg)
    return out


def tools_as_text(tools: list[dict[str, Any]]) -> str:
    """A system-prompt description of tools, for templates with no tool format of their own."""
    lines = [
        "You can call these tools. To call one, reply with only a JSON object "
        '{"name": <tool name>, "arguments": <object>}.'
    ]
    for t in tools:
        lines.append(f"- {t['name']}: {t['description']} Arguments schema: "
                     f"{json.dumps(t['parameters'])}")
    return "\n".join(lines)


def build_prompt(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                 note: str = "", note_lists_tools: bool = False) -> list[int]:
    """Prompt tokens through the model's chat template.

    `note` (e.g. a grammar constraint's instruction) is added to the system message. Tools go
    to templates that have a tool format; otherwise they are described in the system message,
    unless `note_lists_tools` says the note already does.
    """
    messages, hf_tools = _prepared(tokenizer, messages, tools, note, note_lists_tools)
    return _render(tokenizer, messages, hf_tools, generation_prompt=True)


def system_prefix(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                  prompt: list[int], note: str = "", note_lists_tools: bool = False) -> int:
    """How many of `prompt`'s tokens (from `build_prompt` with the same arguments) are its
    system part: the template's opening, the system messages and tool schemas, up to where the
    first other message's content starts. Every prompt that starts the same way shares them,
    whatever follows (the prompt cache pins their KV); 0 if the template cannot say."""
    messages, hf_tools = _prepared(tokenizer, messages, tools, note, note_lists_tools)
    n_system = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    probe = [*messages[:n_system], {"role": "user", "content": ""}]
    try:
        opening = _render(tokenizer, probe, hf_tools, generation_prompt=False)
    except BadRequest:
        return 0
    n = 0
    for a, b in zip(opening, prompt, strict=False):
        if a != b:
            break
        n += 1
    return n


def _prepared(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
              note: str, note_lists_tools: bool) -> tuple[list[dict[str, Any]], list | None]:
    if tools and not tokenizer.has_tool_calling:
        if not note_lists_tools:
            note = "\n\n".join(x for x in (tools_as_text(tools), note) if x)
        tools = []
    if note:
        messages = _with_system_note(messages, note)
    return messages, [{"type": "function", "function": t} for t in tools] or None


def _render(tokenizer: Any, messages: list[dict[str, Any]], hf_tools: list | None,
            generation_prompt: bool) -> list[int]:
    if tokenizer.chat_template is None:
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return list(tokenizer.encode(text + "\nassistant:" if generation_prompt else text))
    try:
        tokens = tokenizer.apply_chat_template(
            messages, tools=hf_tools, add_generation_prompt=generation_prompt, tokenize=True
        )
    except Exception as e:  # jinja errors: the template rejected this conversation's shape
        raise BadRequest(f"the model's chat template rejected these messages: "
                         f"{R.truncate(str(e), 300)}; check the roles and their order",
                         field="messages", value=R.truncate(str(e)),
                         expected="messages the model's chat template accepts") from None
    if isinstance(tokens, dict):  # transformers 5 may return a BatchEncoding
        tokens = tokens["input_ids"]
    return list(tokens)


def _with_system_note(messages: list[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0], content=f"{messages[0]['content']}\n\n{note}")
        return [first, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


def new_request_id(given: str) -> str:
    return given or uuid.uuid4().hex[:12]


@dataclass
class TextRouter:
    """Splits generated text into content, reasoning and tool-call events.

    Uses mlx-lm's TextStateMachine (think and tool-call markers are matched on text, so a
    marker split across tokens still matches) and mlx-lm's tool parser for the model.
    """

    text_sm: TextStates
    initial_state: str
    tool_parser: Any
    tools: list[dict[str, Any]]
    json_tools: Any = None  # a Constraint whose JSON reply is a tool call (no native format)
    state: Any = None
    current: str = "normal"
    tool_text: str = ""
    held_content: str = ""
    reasoning_tokens: int = 0
    made_tool_call: bool = False
    events: list[pb.ChatEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = self.text_sm.make_state(self.initial_state)
        self.current = self.initial_state

    def feed(self, text: str, finish_reason: str | None) -> list[pb.ChatEvent]:
        states = self.text_sm
        if self.current == "reasoning":
            self.reasoning_tokens += 1
        if finish_reason == "stop":
            self.state, self.current = states.discard(self.state)
            segments = [(self.current, "")]
        elif finish_reason == "length":
            self.state, segments = states.split(self.state, text)
            self.state, flushed, self.current = states.flush(self.state)
            segments.append((self.current, flushed))
        else:
            self.state, segments = states.split(self.state, text)
        out: list[pb.ChatEvent] = []
        for state, piece in segments:
            if state == "tool":
                self.tool_text += piece
            else:
                if self.tool_text:
                    out += self._tool_events(self.tool_text)
                    self.tool_text = ""
                if piece and state == "reasoning":
                    out.append(pb.ChatEvent(delta=pb.Delta(kind=pb.Delta.REASONING, text=piece)))
                elif piece and self.json_tools is not None:
                    self.held_content += piece
                elif piece:
                    out.append(pb.ChatEvent(delta=pb.Delta(kind=pb.Delta.CONTENT, text=piece)))
            if state is not None:
                self.current = state
        if finish_reason is not None:
            if self.tool_text:
                out += self._tool_events(self.tool_text)
                self.tool_text = ""
            if self.json_tools is not None and self.held_content:
                out += self._json_tool_events(self.held_content)
        return out

    def _tool_events(self, text: str) -> list[pb.ChatEvent]:
        try:
            parsed = self.tool_parser(text, self.tools) if self.tool_parser else json.loads(text)
        except (ValueError, json.JSONDecodeError):
            # Unparseable (e.g. cut off by max_tokens): surface it as content, never drop it.
            return [pb.ChatEvent(delta=pb.Delta(kind=pb.Delta.CONTENT, text=text))]
        return self._calls(parsed if isinstance(parsed, list) else [parsed])

    def _json_tool_events(self, text: str) -> list[pb.ChatEvent]:
        try:
            calls = self.json_tools.parse_tool_calls(text)
        except ValueError:
            return [pb.ChatEvent(delta=pb.Delta(kind=pb.Delta.CONTENT, text=text))]
        return self._calls(calls)

    def _calls(self, calls: list[dict[str, Any]]) -> list[pb.ChatEvent]:
        out = []
        for c in calls:
            args = c.get("arguments", {})
            self.made_tool_call = True
            out.append(pb.ChatEvent(tool_call=pb.ToolCall(
                id=c.get("id") or f"call_{uuid.uuid4().hex[:10]}",
                name=str(c.get("name", "")),
                arguments_json=args if isinstance(args, str) else json.dumps(args),
            )))
        return out


def done_event(job: Any, finish_reason: str) -> pb.ChatEvent:
    """The `done` event closing an engine Job's stream: finish reason, usage and timings."""
    end = time.perf_counter()
    first = job.t_first or end
    decode_s = end - first
    prefill_s = first - job.t_start
    router = job.router
    if router.made_tool_call and finish_reason == "stop":
        finish_reason = "tool_calls"
    return pb.ChatEvent(done=pb.Done(
        finish_reason=finish_reason,
        model=job.model,
        usage=pb.Usage(
            prompt_tokens=len(job.prompt),
            completion_tokens=job.completion_tokens,
            reasoning_tokens=router.reasoning_tokens,
            cached_prompt_tokens=job.cached_tokens,
            draft_tokens=job.drafted,
            accepted_draft_tokens=job.accepted,
            recomputed_prompt_tokens=job.recomputed_tokens,
            recompute_cause=job.recompute_cause,
        ),
        timings=pb.Timings(
            queue_seconds=job.queue_seconds,
            time_to_first_token_seconds=first - job.t_start,
            prefill_tokens_per_second=(
                job.computed_tokens / prefill_s if prefill_s > 0 else 0.0
            ),
            decode_tokens_per_second=(
                (job.completion_tokens - 1) / decode_s if decode_s > 0 else 0.0
            ),
            total_seconds=end - job.t_start + job.queue_seconds,
        ),
        cut_off_while_reasoning=finish_reason == "length" and router.current == "reasoning",
    ))
