"""Every request field checked at the edge, before anything is loaded, admitted or queued.

A value out of range gets INVALID_ARGUMENT (reason INVALID_FIELD) naming the field as a path
(`sampling.min_p`, `tools[2].parameters_json`), the value sent (truncated), the valid range and
what to do. Nothing here touches MLX: a bad value never reaches a sampler shared with a batch.

JSON the caller sends (tool schemas, the response schema, tool-call arguments) is measured for
size and nesting before any parser sees it: a recursive parser or validator would otherwise
hit Python's recursion limit on a document nested 100,000 levels deep.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from inference_node.api import pb
from inference_node.api.reasons import truncate
from inference_node.errors import BadRequest, invalid

MAX_TEMPERATURE = 2.0  # as OpenAI's API
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 500
MAX_TOOLS = 128  # as OpenAI's API
TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_SCHEMA_CHARS = 128 * 1024  # one tool's parameters or the response schema
MAX_SCHEMA_DEPTH = 32  # nested objects and arrays; real schemas stay under 10
MAX_JSON_DEPTH = 64  # tool-call arguments in the history
MAX_REQUEST_ID_CHARS = 128
REQUEST_ID = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: it goes to logs
MAX_MODEL_NAME_CHARS = 256
_STRUCTURE = re.compile(r'[\[\]{}"\\]')


# ---------------------------------------------------------------- JSON, bounded


def json_depth(text: str) -> int:
    """The deepest nesting of objects and arrays in `text`, counted without parsing it.

    Brackets inside strings do not count. Linear in the number of brackets and quotes.
    """
    depth = peak = 0
    in_string = False
    escaped_at = -1  # the position of a character a backslash escapes
    for m in _STRUCTURE.finditer(text):
        at, ch = m.start(), m.group()
        if at == escaped_at:
            continue
        if in_string:
            if ch == "\\":
                escaped_at = at + 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            peak = max(peak, depth)
        elif ch in "]}":
            depth -= 1
    return peak


def json_object(text: str, field: str, *, max_chars: int | None = None,
                max_depth: int = MAX_JSON_DEPTH, what: str = "a JSON object") -> dict[str, Any]:
    """`text` parsed as a JSON object, after its size and nesting were checked."""
    if max_chars is not None and len(text) > max_chars:
        raise BadRequest(
            f"{field} is {len(text)} characters; the limit is {max_chars}. Send a smaller "
            "schema (split a huge tool into several, or drop descriptions it does not need)",
            field=field, value=f"{len(text)} characters", expected=f"at most {max_chars} chars")
    brackets = text.count("[") + text.count("{")
    depth = json_depth(text) if brackets > max_depth else brackets
    if depth > max_depth:
        raise BadRequest(
            f"{field} nests objects and arrays {depth} levels deep; the limit is {max_depth}. "
            "Flatten it", field=field, value=f"{depth} levels", expected=f"at most {max_depth}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRequest(f"{field} is not valid JSON: {e.msg} at position {e.pos}; send "
                         f"{what}", field=field, value=text, expected=what) from None
    except RecursionError:  # a depth the scan above missed must still be a clear refusal
        raise BadRequest(f"{field} nests too deeply to parse; flatten it", field=field,
                         value=text, expected=f"at most {max_depth} levels") from None
    if not isinstance(value, dict):
        raise BadRequest(f"{field} must be {what}, not a JSON {type(value).__name__}",
                         field=field, value=text, expected=what)
    return value


# ---------------------------------------------------------------- sampling


def _finite(s: pb.Sampling, name: str, prefix: str, low: float, high: float,
            expected: str, todo: str) -> None:
    if not s.HasField(name):
        return
    value = getattr(s, name)
    if not math.isfinite(value) or not low <= value <= high:
        raise invalid(f"{prefix}.{name}", value, expected, todo)


def check_sampling(s: pb.Sampling, *, vocab_size: int | None, prefix: str = "sampling",
                   stop_allowed: bool = True) -> None:
    """Each sampling field within the range mlx-lm's sampler accepts (and that makes sense)."""
    _finite(s, "temperature", prefix, 0.0, MAX_TEMPERATURE,
            f"a number from 0 (greedy) to {MAX_TEMPERATURE:g}",
            "0.2 to 1.0 is usual; leave it unset for greedy decoding")
    _finite(s, "top_p", prefix, 0.0, 1.0, "a number from 0 to 1 (0 and 1 turn it off)",
            "0.9 or 0.95 is usual")
    _finite(s, "min_p", prefix, 0.0, 1.0, "a number from 0 to 1 (0 turns it off)",
            "0.05 is usual")
    _finite(s, "repetition_penalty", prefix, 0.0, math.inf,
            "a finite number >= 0 (0 and 1 turn it off)", "1.1 is usual")
    if s.HasField("top_k"):
        high = (vocab_size - 1) if vocab_size else 1 << 20
        if not 0 <= s.top_k <= high:
            size = f"the model's {vocab_size}-token vocabulary" if vocab_size else "the vocab"
            raise invalid(f"{prefix}.top_k", s.top_k,
                          f"an integer from 0 (off) to {high}, below {size}", "40 is usual")
    if s.stop and not stop_allowed:
        return
    if len(s.stop) > MAX_STOP_SEQUENCES:
        raise invalid(f"{prefix}.stop", f"{len(s.stop)} sequences",
                      f"at most {MAX_STOP_SEQUENCES} sequences", "keep the ones that matter")
    for i, stop in enumerate(s.stop):
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise invalid(f"{prefix}.stop[{i}]", stop,
                          f"1 to {MAX_STOP_CHARS} characters", "drop empty stop sequences")


# ---------------------------------------------------------------- the request


def check_request_id(request_id: str) -> None:
    if request_id and (len(request_id) > MAX_REQUEST_ID_CHARS
                       or not REQUEST_ID.fullmatch(request_id)):
        raise invalid("request_id", request_id,
                      f"empty or 1 to {MAX_REQUEST_ID_CHARS} printable ASCII characters "
                      "without spaces", "send a UUID or leave it empty to get one")


def check_model_name(name: str) -> None:
    if len(name) > MAX_MODEL_NAME_CHARS:
        raise invalid("model", name, f"a catalog name of at most {MAX_MODEL_NAME_CHARS} "
                      "characters", "ListModels gives the names this node serves")


def check_tool_choice(choice: pb.ToolChoice, tool_names: list[str]) -> None:
    modes = dict(pb.ToolChoice.Mode.items())
    if choice.mode not in modes.values():
        raise invalid("tool_choice.mode", choice.mode,
                      f"one of {', '.join(f'{n} ({v})' for n, v in modes.items())}",
                      "AUTO lets the model choose")
    forced = choice.mode in (pb.ToolChoice.REQUIRED, pb.ToolChoice.NAMED)
    mode = pb.ToolChoice.Mode.Name(choice.mode)
    if forced and not tool_names:
        raise invalid("tool_choice.mode", mode, "AUTO or NONE when the request has no tools",
                      f"send the tools a {mode} choice picks from")
    if choice.mode == pb.ToolChoice.NAMED and choice.name not in tool_names:
        raise invalid("tool_choice.name", choice.name,
                      f"one of the request's tools ({', '.join(tool_names)})",
                      "name a tool the request lists")
    if choice.name and choice.mode != pb.ToolChoice.NAMED:
        raise invalid("tool_choice.name", choice.name, f"empty when the mode is {mode}",
                      "set mode NAMED to force that tool, or drop the name")
    allowed = list(choice.allowed)
    if allowed and choice.mode != pb.ToolChoice.REQUIRED:
        raise invalid("tool_choice.allowed", ", ".join(allowed), f"empty when the mode is {mode}",
                      "set mode REQUIRED to narrow the choice, or drop `allowed`")
    unknown = [n for n in allowed if n not in tool_names]
    if unknown:
        raise invalid("tool_choice.allowed", ", ".join(unknown),
                      f"names among the request's tools ({', '.join(tool_names)})",
                      "list only tools the request sends")
    if len(set(allowed)) != len(allowed):
        twice = sorted({n for n in allowed if allowed.count(n) > 1})
        raise invalid("tool_choice.allowed", ", ".join(twice), "each tool named once",
                      "drop the repeated names")


def check_response_format(rf: pb.ResponseFormat) -> dict[str, Any] | None:
    """The response schema (JSON_SCHEMA), or None; the type and its fields agree."""
    types = dict(pb.ResponseFormat.Type.items())
    if rf.type not in types.values():
        raise invalid("response_format.type", rf.type,
                      f"one of {', '.join(f'{n} ({v})' for n, v in types.items())}",
                      "TEXT is plain text")
    if len(rf.name) > 64:
        raise invalid("response_format.name", rf.name, "at most 64 characters",
                      "a short name for the schema")
    if rf.type != pb.ResponseFormat.JSON_SCHEMA:
        if rf.schema_json:
            kind = pb.ResponseFormat.Type.Name(rf.type)
            raise invalid("response_format.schema_json", rf.schema_json,
                          f"empty when the type is {kind}",
                          "set type JSON_SCHEMA to use the schema, or drop it")
        return None
    if not rf.schema_json:
        raise invalid("response_format.schema_json", "", "a JSON Schema object for JSON_SCHEMA",
                      "send the schema, or use JSON_OBJECT for any object")
    return json_object(rf.schema_json, "response_format.schema_json",
                       max_chars=MAX_SCHEMA_CHARS, max_depth=MAX_SCHEMA_DEPTH,
                       what="a JSON Schema object")


def check_messages(messages: Any, *, allow_images: bool) -> None:
    from inference_node.chat import ROLES

    if not messages:
        raise BadRequest("messages is empty: send at least one message with role 'user'",
                         field="messages", value="[]", expected="at least one message")
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise BadRequest(
                f"messages[{i}] has unknown role {truncate(m.role, 40)!r}; use one of "
                f"{', '.join(ROLES)}", field=f"messages[{i}].role", value=truncate(m.role),
                expected=f"one of {', '.join(ROLES)}")
        if m.images and not allow_images:
            raise BadRequest(
                f"messages[{i}] carries an image, but this is a text model; send images to a "
                "vision model with Describe", field=f"messages[{i}].images",
                value=f"{len(m.images)} images", expected="no images in Chat")
        for j, call in enumerate(m.tool_calls):
            json_object(call.arguments_json or "{}",
                        f"messages[{i}].tool_calls[{j}].arguments_json")


def parse_tools(tools: Any) -> list[dict[str, Any]]:
    """The request's tools as {"name", "description", "parameters"}; schemas must be objects."""
    if len(tools) > MAX_TOOLS:
        raise invalid("tools", f"{len(tools)} tools", f"at most {MAX_TOOLS} tools",
                      "send the tools this turn needs")
    out = []
    for i, t in enumerate(tools):
        if not TOOL_NAME.fullmatch(t.name):
            raise invalid(f"tools[{i}].name", t.name,
                          "1 to 64 letters, digits, '_', '-' or '.'", "rename the tool")
        field = f"tools[{i}].parameters_json"
        params = json_object(t.parameters_json or "{}", field, max_chars=MAX_SCHEMA_CHARS,
                             max_depth=MAX_SCHEMA_DEPTH, what="a JSON Schema object")
        if params.get("type", "object") != "object":
            raise invalid(field, t.parameters_json, "a JSON Schema of type 'object'",
                          "wrap the arguments in an object")
        out.append({"name": t.name, "description": t.description, "parameters": params})
    names = [t["name"] for t in out]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise invalid(f"tools[{i}].name", name, "unique among the request's tools",
                          "drop or rename the duplicate")
    return out


def check_chat(request: pb.ChatRequest, vocab_size: int | None
               ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Everything in a ChatRequest that can be checked before its model is loaded: the tools
    and the response schema (None unless JSON_SCHEMA), parsed."""
    check_request_id(request.request_id)
    check_messages(request.messages, allow_images=False)
    tools = parse_tools(request.tools)
    check_tool_choice(request.tool_choice, [t["name"] for t in tools])
    schema = check_response_format(request.response_format)
    check_sampling(request.sampling, vocab_size=vocab_size)
    if request.HasField("max_tokens") and request.max_tokens <= 0:
        raise invalid("max_tokens", request.max_tokens, "a positive number of tokens",
                      "leave it unset for a generous default capped by the context")
    return tools, schema


def vocab_size(config: dict[str, Any]) -> int | None:
    """The model's vocabulary (the width of its logits) from config.json, when it says."""
    for c in (config.get("text_config"), config):
        if isinstance(c, dict) and isinstance(c.get("vocab_size"), int):
            return int(c["vocab_size"])
    return None
