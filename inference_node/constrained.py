"""Structured output: grammar-constrained decoding for `response_format` and `tool_choice`.

A malformed tool call or a reply that does not match the requested JSON schema is made
impossible rather than parsed and hoped for: a llguidance matcher computes, before each token,
the set of tokens that keep the output inside the grammar, and a logits processor masks out the
rest. The engine plugs the processor into mlx-lm like any other:

    constraint = compile_tool_choice(tokenizer, tools, "required")   # or compile_response_format
    if constraint is not None:
        system_text += constraint.instruction          # tells the model what it is writing
        processor = constraint.logits_processor()       # fresh per request
    for r in stream_generate(model, tokenizer, prompt, logits_processors=[..., processor]):
        ...
        if constraint.stop_reached():                   # grammar complete: only EOS is left
            break
    calls = constraint.parse_tool_calls(text)           # [{"name": ..., "arguments": {...}}]

Forms of a forced tool call:

- JSON form (models without a native tool-call format, e.g. SmolLM2; or a native format that
  cannot be expressed here): the whole reply is `{"name": "<tool>", "arguments": {...}}`, an
  `anyOf` over the tools, each branch fixing the name and validating the arguments.
- native form (mlx-lm tool parser `json_tools`, i.e. hermes-style `<tool_call>` JSON
  `</tool_call>`): the same JSON object between the model's own `tool_call_start` and
  `tool_call_end`, so mlx-lm's parser reads it as usual.

`tool_choice` auto (and none) is not constrained: the model may answer in plain text, and a tool
call it starts on its own is left unconstrained too (it is parsed and validated afterwards, as
without this module).

A reasoning model (think markers that are special tokens, e.g. `<think>` … `</think>`; llguidance
counts every added token as special) keeps its thinking
(rule 3): the grammar allows free text up to the closing marker, then the answer. When the
prompt already opened the block (the chat template wrote `<think>`), the reply starts inside
it; otherwise the model may open one or answer at once. Only the answer is bounded by the
schema; the thinking is bounded by max_tokens, as without a constraint. Which of the two
applies is read from the prompt on the processor's first call, where mlx-lm passes it whole.

Compiling the llguidance tokenizer takes ~0.4 s, so it is done once per loaded tokenizer and
cached; compiling a grammar per request takes a few milliseconds. The processor holds no locks
and no memory beyond one token mask, so cancellation and admission need nothing from it.
The schemas themselves are checked, closed and bounded before compiling (json_schema.py).
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import llguidance
import llguidance.hf
import mlx.core as mx
import numpy as np
from llguidance.numpy import fill_next_token_bitmask

from inference_node.errors import BadRequest
from inference_node.json_schema import (
    JSON_OPTIONS,
    answer_chars,
    check_schema,
    closed_objects,
    json_for_lark,
    tool_call_schema,
)

FORMAT_FIELD = "response_format.schema_json"

TOOL_MODES = ("auto", "none", "required", "named")

TOOLS_INSTRUCTION = (
    "\n\nTools:\n{tools}\n"
    'Call one by replying with only {{"name": <tool name>, "arguments": <its arguments>}}.'
)
SCHEMA_INSTRUCTION = "\n\nReply with only a JSON value matching this JSON schema:\n{schema}"
JSON_OBJECT_INSTRUCTION = "\n\nReply with only a JSON object."


class IncompleteOutput(ValueError):
    """The constrained reply ended before its grammar was complete (cut off by max_tokens)."""


# ---------------------------------------------------------------- llguidance tokenizer cache

_ll_tokenizers: weakref.WeakKeyDictionary[Any, llguidance.LLTokenizer] = (
    weakref.WeakKeyDictionary()
)
_ll_lock = threading.Lock()


def ll_tokenizer(tokenizer: Any) -> llguidance.LLTokenizer:
    """The llguidance tokenizer for an mlx-lm TokenizerWrapper, built once and cached."""
    with _ll_lock:
        cached = _ll_tokenizers.get(tokenizer)
        if cached is None:
            hf = getattr(tokenizer, "_tokenizer", tokenizer)
            eos = sorted(getattr(tokenizer, "eos_token_ids", None) or [hf.eos_token_id])
            try:
                cached = llguidance.hf.from_tokenizer(hf, eos_token=eos)
            except ValueError as e:
                raise BadRequest(
                    f"structured output (response_format, forced tool calls) is not available "
                    f"for this model: llguidance cannot read its tokenizer ({e}); "
                    "send the request without them"
                ) from None
            _ll_tokenizers[tokenizer] = cached
        return cached


# ---------------------------------------------------------------- the constraint


@dataclass
class Constraint:
    """A compiled grammar for one request. Cheap to build; `logits_processor()` starts it."""

    lltok: llguidance.LLTokenizer
    grammar: str
    kind: str  # "response_format" or "tool_call"
    instruction: str = ""  # text for the system prompt; empty when the template says it
    native: tuple[str, str] | None = None  # (tool_call_start, tool_call_end) when native
    fallback_reason: str = ""  # why a model with a native format got the JSON form
    # With reasoning markers: (ids of think start and end, the grammar when the prompt opened
    # the block, the grammar when the model may open one). None: the answer from token one.
    thinking: tuple[int, int, str, str] | None = None
    # The most characters the answer can take (studio_common.json_bounds), markers included;
    # None when the schema leaves a string, array, number or object open.
    answer_chars: int | None = None
    _processor: GrammarProcessor | None = field(default=None, init=False, repr=False)

    def logits_processor(self, reply_starts_at: int | None = None) -> GrammarProcessor:
        """A fresh processor (new matcher state) to pass to mlx-lm's logits_processors.

        `reply_starts_at`: the prompt's length, when the context it first sees already holds
        part of the reply (a batch rebuilt mid-reply): the matcher consumes that part first.
        """
        self._processor = GrammarProcessor(self.lltok, self.grammar, self.thinking,
                                           reply_starts_at)
        return self._processor

    def stop_reached(self) -> bool:
        """True once the grammar is complete: the only token it allows now is EOS."""
        return self._processor is not None and self._processor.stop_reached()

    def error(self) -> str:
        """The matcher's error, if a token outside the grammar was ever sampled; else ''."""
        return self._processor.error if self._processor is not None else ""

    def parse_tool_calls(self, text: str) -> list[dict[str, Any]]:
        """The tool call in a constrained reply, as [{"name": str, "arguments": dict}]."""
        body = text.strip()
        if self.native is not None:
            start, end = self.native
            body = body.removeprefix(start).removesuffix(end).strip()
        try:
            call = json.loads(body)
        except json.JSONDecodeError as e:
            raise IncompleteOutput(
                f"the tool call ended before it was complete ({e}); "
                "raise max_tokens so the call can finish"
            ) from None
        return [{"name": call["name"], "arguments": call["arguments"]}]


class GrammarProcessor:
    """mlx-lm logits processor: `processor(tokens, logits) -> logits` with the grammar's mask.

    mlx-lm calls it before sampling each token; `tokens` is the running context, so the first
    call sees the whole prompt and each later call sees one more token, the one just sampled,
    which the matcher consumes before computing the next mask.
    """

    def __init__(self, lltok: llguidance.LLTokenizer, grammar: str,
                 thinking: tuple[int, int, str, str] | None = None,
                 reply_starts_at: int | None = None) -> None:
        self._lltok = lltok
        self._thinking = thinking
        self._eos = list(lltok.eos_tokens)
        self._bitmask = np.zeros((1, (lltok.vocab_size + 31) // 32), dtype=np.int32)
        self._seen: int | None = reply_starts_at  # context length at the previous call
        self._matcher: llguidance.LLMatcher | None = None
        self.error = ""
        # (context length after a call, tokens the matcher consumed in it), for `rewind`
        self._calls: list[tuple[int, int]] = []
        if thinking is None:
            self._start(grammar)

    def _start(self, grammar: str) -> None:
        self._matcher = llguidance.LLMatcher(self._lltok, grammar, log_level=0)
        self.error = self._matcher.get_error()

    def stop_reached(self) -> bool:
        return self._matcher is not None and (self._matcher.is_stopped() or bool(self.error))

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        n = tokens.shape[0]
        if self._matcher is None and self._thinking is not None:  # first call: the prompt
            start_id, end_id, inside, may_open = self._thinking
            # The prompt ends where the reply starts (a rebuilt batch also shows part of it).
            prompt: list[int] = tokens.tolist()[: self._seen]  # type: ignore[assignment,index]
            opened = _rindex(prompt, start_id) > _rindex(prompt, end_id)
            self._start(inside if opened else may_open)
        new: list[int] = []
        if self._seen is not None and n > self._seen:
            new = tokens[self._seen :].tolist()  # type: ignore[assignment]
        # Start the forward pass only now (the token above had to be read first, and reading
        # it after would wait for the pass), so the model runs while the CPU computes the mask.
        mx.async_eval(logits)
        # Once stopped, the only token left is EOS, which mlx-lm's batched path feeds back
        # one step before it ends the sequence; the matcher would call that an error.
        matcher = self._matcher
        assert matcher is not None
        consumed = 0
        if new and not self.error and not matcher.is_stopped():
            if matcher.consume_tokens(new):
                consumed = len(new)
            else:
                self.error = matcher.get_error() or f"tokens {new} rejected by the grammar"
        self._calls.append((n, consumed))
        self._seen = n
        return mx.where(self._allowed(logits.shape[-1]), logits, -mx.inf)

    def rewind(self, length: int) -> None:
        """Forget the context past its first `length` tokens: the matcher goes back to where it
        was after the call that saw that much, and the next call consumes from there.

        Speculative decoding calls this after the draft model's proposals moved the grammar
        on, and after the ones the model did not keep. Calls at or before `length` stay.
        """
        while self._calls and self._calls[-1][0] > length and len(self._calls) > 1:
            _, consumed = self._calls.pop()
            if consumed and self._matcher is not None:
                self._matcher.rollback(consumed)
        if self._calls:
            self._seen = self._calls[-1][0]

    def _allowed(self, vocab: int) -> mx.array:
        if self.error:
            allowed = np.zeros(vocab, dtype=bool)
            allowed[self._eos] = True  # end the reply as soon as possible
        else:
            assert self._matcher is not None
            fill_next_token_bitmask(self._matcher, self._bitmask)
            bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
            allowed = np.zeros(vocab, dtype=bool)
            k = min(vocab, bits.shape[0])
            allowed[:k] = bits[:k]
        return mx.array(allowed)


# ---------------------------------------------------------------- compiling


def compile_response_format(
    tokenizer: Any, schema: dict | None, json_object: bool
) -> Constraint:
    """The reply must be JSON valid against `schema`, or any JSON object if `json_object`.

    Raises BadRequest when the schema is not JSON Schema or llguidance cannot compile it.
    """
    if schema is None:
        if not json_object:
            raise ValueError("compile_response_format needs a schema or json_object=True")
        schema = {"type": "object"}
        instruction = JSON_OBJECT_INSTRUCTION
    else:
        check_schema(schema, "response_format schema", FORMAT_FIELD)
        instruction = SCHEMA_INSTRUCTION.format(schema=json.dumps(schema))
    lltok = ll_tokenizer(tokenizer)
    grammar = _json_grammar(schema, lltok, "response_format schema", FORMAT_FIELD)
    answer = f"answer: %json {json.dumps(json_for_lark(schema))}\n"
    return Constraint(lltok, grammar, "response_format", instruction=instruction,
                      thinking=_thinking(answer, tokenizer, lltok, "response_format schema",
                                         FORMAT_FIELD),
                      answer_chars=answer_chars(schema))


def compile_tool_choice(
    tokenizer: Any, tools: list[dict], mode: str, name: str = "",
    allowed: list[str] | None = None,
) -> Constraint | None:
    """A constraint forcing a tool call for `required` / `named`; None for `auto` and `none`.

    `tools` are {"name", "description", "parameters"} dicts. The call's arguments validate
    against the chosen tool's `parameters`. `allowed` (required only) narrows the tools the call
    may pick to those names; the prompt still lists them all. Raises BadRequest for an unknown
    mode or tool name, or a parameters schema that is not JSON Schema or cannot be compiled.
    """
    mode = mode.lower()
    if mode not in TOOL_MODES:
        raise BadRequest(f"tool_choice mode {mode!r} is unknown; use one of {TOOL_MODES}")
    if mode in ("auto", "none"):
        return None
    if not tools:
        raise BadRequest(f"tool_choice {mode!r} needs at least one tool in the request's tools")
    by_name: dict[str, dict] = {}
    for i, tool in enumerate(tools):
        tname = tool.get("name") or ""
        if not tname:
            raise BadRequest("a tool has an empty name; give every tool a name")
        if tname in by_name:
            raise BadRequest(f"tool {tname!r} is listed twice; tool names must be unique")
        params = tool.get("parameters") or {"type": "object"}
        check_schema(params, f"parameters of tool {tname!r}", f"tools[{i}].parameters_json")
        by_name[tname] = params
    if mode == "named":
        if name not in by_name:
            raise BadRequest(
                f"tool_choice names tool {name!r}, which is not among the request's tools "
                f"({', '.join(by_name)}); name one of them"
            )
        by_name = {name: by_name[name]}
    elif allowed:
        unknown = [n for n in allowed if n not in by_name]
        if unknown:
            raise BadRequest(
                f"tool_choice allows {', '.join(map(repr, unknown))}, not among the request's "
                f"tools ({', '.join(by_name)}); allow only tools the request lists"
            )
        by_name = {n: p for n, p in by_name.items() if n in allowed}
    schema = tool_call_schema(by_name)
    lltok = ll_tokenizer(tokenizer)
    body = _json_grammar(schema, lltok, "tool parameters", "tools")

    native, reason = _native_markers(tokenizer)
    if native is None:
        listed = "\n".join(
            f"- {t['name']}: {t.get('description', '')} Arguments: "
            f"{json.dumps(by_name[t['name']], separators=(',', ':'))}"
            for t in tools
            if t.get("name") in by_name
        )
        answer = f"answer: %json {json.dumps(json_for_lark(schema))}\n"
        return Constraint(
            lltok, body, "tool_call",
            instruction=TOOLS_INSTRUCTION.format(tools=listed), fallback_reason=reason,
            thinking=_thinking(answer, tokenizer, lltok, "tool parameters", "tools"),
            answer_chars=answer_chars(schema),
        )
    start, end = native
    answer = (
        f"answer: {_literal(start, tokenizer, lltok)} \"\\n\" body \"\\n\" "
        f"{_literal(end, tokenizer, lltok)}\n"
        f"body: %json {json.dumps(json_for_lark(schema))}\n"  # compact, as templates render it
    )
    grammar = llguidance.LLMatcher.grammar_from_lark("start: answer\n" + answer)
    _validate(grammar, lltok, "tool parameters", "tools")
    body_chars = answer_chars(schema)
    return Constraint(lltok, grammar, "tool_call", native=native,
                      thinking=_thinking(answer, tokenizer, lltok, "tool parameters", "tools"),
                      answer_chars=(None if body_chars is None
                                    else len(start) + 1 + body_chars + 1 + len(end)))


def _json_grammar(schema: dict, lltok: llguidance.LLTokenizer, what: str, field: str) -> str:
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            closed_objects(schema), overrides=JSON_OPTIONS
        )
    except ValueError as e:
        raise BadRequest(f"{what} cannot be compiled: {e}", field=field, value=str(e),
                         expected="a JSON Schema llguidance can compile") from None
    _validate(grammar, lltok, what, field)
    return grammar


def _thinking(answer: str, tokenizer: Any, lltok: llguidance.LLTokenizer, what: str,
              field: str) -> tuple[int, int, str, str] | None:
    """For a model with one-token reasoning markers: (start id, end id, the grammar when the
    prompt opened the block, the grammar when the model may open one). Else None.

    `answer` is lark rules defining `answer`. The thinking is any text up to the closing
    marker; a little whitespace may follow it before the answer.
    """
    if not getattr(tokenizer, "has_thinking", False):
        return None
    starts: list[int] = list(tokenizer.think_start_tokens or ())
    ends: list[int] = list(tokenizer.think_end_tokens or ())
    if len(starts) != 1 or len(ends) != 1:
        return None  # a multi-token channel format: the answer is constrained from token one
    open_, close = (_literal(m, tokenizer, lltok)
                    for m in (tokenizer.think_start, tokenizer.think_end))
    if not close.startswith("<["):
        # Markers that are plain text to llguidance (it counts every added token as special,
        # so this is a marker inside the ordinary vocabulary): the answer from token one.
        return None
    rules = (f"thought: /(.|\\n)*/ {close} gap?\n"  # text cannot contain a special token
             "gap: /[ \\t\\r\\n]{1,8}/\n" + answer)
    inside = llguidance.LLMatcher.grammar_from_lark("start: thought answer\n" + rules)
    may_open = llguidance.LLMatcher.grammar_from_lark(
        f"start: ({open_} thought)? answer\n" + rules)
    for grammar in (inside, may_open):
        _validate(grammar, lltok, what, field)
    return starts[0], ends[0], inside, may_open


def _rindex(tokens: list[int], token: int) -> int:
    for i in range(len(tokens) - 1, -1, -1):
        if tokens[i] == token:
            return i
    return -1


def _validate(grammar: str, lltok: llguidance.LLTokenizer, what: str, field: str) -> None:
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, lltok)
    if is_error:
        raise BadRequest(
            f"{what} is valid JSON Schema but cannot be enforced: {messages[0].strip()}; "
            "simplify the schema or leave out that keyword", field=field,
            value=messages[0].strip(), expected="a schema the grammar engine can enforce",
        )


def _native_markers(tokenizer: Any) -> tuple[tuple[str, str] | None, str]:
    """(start, end) when the model's own tool-call format can be constrained, else a reason."""
    if not getattr(tokenizer, "has_tool_calling", False):
        return None, ""
    from inference_node.mlx_compat import native_json_tool_calls

    if native_json_tool_calls(tokenizer):
        return (tokenizer.tool_call_start, tokenizer.tool_call_end), ""
    return None, (
        f"the model's tool-call format ({tokenizer.tool_call_start!r}...) cannot be expressed "
        "as a grammar here; the call is forced in the JSON form instead"
    )


def _literal(text: str, tokenizer: Any, lltok: llguidance.LLTokenizer) -> str:
    """A lark terminal for `text`: its special token if it is one, else the string."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) == 1 and lltok.is_special_token(ids[0]):
        return f"<[{ids[0]}]>"
    return json.dumps(text)

