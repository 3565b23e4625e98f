"""A chat-completions request, checked field by field and turned into the node's ChatRequest.

    body = parse_chat_body(raw_bytes)   # ApiError (400) whose `param` names the first bad field
    body.request                        # pb.ChatRequest; body.stream, body.include_usage

Everything is checked here, before anything reaches the node: types, ranges that fit the wire's
integer types, nesting depth, valid Unicode, images as data URLs only (nothing is fetched).
Fields the bridge does not use (`user`, `store`, penalties, ...) are accepted and ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any

from agent_node.bridge.errors import ApiError
from agent_node.wire import (
    allowed_tools,
    to_pb_message,
    to_pb_response_format,
    to_pb_tool,
    to_pb_tool_choice,
)
from inference_node.api import pb

INT32_MAX = 2**31 - 1
UINT64_MAX = 2**64 - 1
MAX_DEPTH = 100  # JSON nesting anywhere in a request; real tool schemas stay far under
MAX_NAME_CHARS = 256  # model and tool names
MAX_STOP = 16
ROLES = ("system", "developer", "user", "assistant", "tool")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "an integer", float: "a number"}.get(type(value),
                                                                           type(value).__name__)


def _bad(param: str, expected: str, value: Any) -> ApiError:
    shown = json.dumps(value) if isinstance(value, int | float | bool) else _kind(value)
    return ApiError(f"{param} must be {expected}, not {shown}", param=param)


def _string(value: Any, param: str, *, max_chars: int | None = None,
            empty: bool = True) -> str:
    if not isinstance(value, str):
        raise _bad(param, "a string", value)
    if not empty and not value:
        raise ApiError(f"{param} must not be empty", param=param)
    if max_chars is not None and len(value) > max_chars:
        raise ApiError(f"{param} is {len(value)} characters; at most {max_chars} are accepted",
                       param=param)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(f"{param} holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not "
                       "text; send valid Unicode", param=param) from None
    return value


def _integer(body: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer() and lo <= value <= hi:
        value = int(value)  # 100.0 is a fine integer; 1e10 is still out of range below
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(key, f"an integer from {lo} to {hi}", value)
    if not lo <= value <= hi:
        raise ApiError(f"{key} must be from {lo} to {hi}, not {value}", param=key)
    return value


def _number(body: dict[str, Any], key: str, lo: float, hi: float, *,
            lo_open: bool = False) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    expected = (f"a number above {lo:g} and at most {hi:g}" if lo_open
                else f"a number from {lo:g} to {hi:g}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(key, expected, value)
    if not math.isfinite(value) or value > hi or value < lo or (lo_open and value == lo):
        raise ApiError(f"{key} must be {expected}, not {value}", param=key)
    return float(value)


def _flag(body: dict[str, Any], key: str, param: str = "") -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(param or key, "true or false", value)
    return value


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(param, "an object", value)
    return value


def _array(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(param, "an array", value)
    return value


# Strings (skipped whole, however long) and the characters that shape JSON.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}:,]')
_WHOLE_VALUES = ("parameters", "schema", "arguments")  # a JSON value the node reads as a whole


def _deep_in_text(text: str, limit: int) -> list[str] | None:
    """The path to the first point of JSON `text` nested deeper than `limit`, read without
    parsing (a body nested 100,000 deep exhausts the parser's recursion first)."""
    stack: list[list[Any]] = []  # [bracket, key or index]
    last = ""
    for m in _TOKENS.finditer(text):
        t = m.group()
        if t[0] == '"':
            last = t
        elif t == ":":
            if stack:
                stack[-1][1] = last[1:-1]
        elif t == ",":
            if stack and stack[-1][0] == "[":
                stack[-1][1] += 1
        elif t in "[{":
            stack.append([t, 0 if t == "[" else ""])
            if len(stack) > limit:
                return [f"[{v}]" if b == "[" else f".{v}" for b, v in stack[:-1]]
        elif stack:
            stack.pop()
    return None


def _deep_in_value(value: Any, limit: int) -> list[str] | None:
    """The path to the first point of a parsed body nested deeper than `limit`."""
    todo: list[tuple[Any, list[str]]] = [(value, [])]
    while todo:
        v, path = todo.pop()
        if len(path) >= limit and isinstance(v, dict | list):
            return path
        if isinstance(v, dict):
            todo.extend((x, [*path, f".{k}"]) for k, x in v.items())
        elif isinstance(v, list):
            todo.extend((x, [*path, f"[{i}]"]) for i, x in enumerate(v))
    return None


def _too_deep(parts: list[str], limit: int) -> ApiError:
    path = "".join(parts).lstrip(".")
    # The field at fault: the whole schema or arguments value, else the first three steps.
    cut = next((i + 1 for i, p in enumerate(parts) if p[1:] in _WHOLE_VALUES), 3)
    param = "".join(parts[:cut]).lstrip(".") if parts and parts[0][0] == "." else None
    return ApiError(f"{param or 'the request body'} is nested more than {limit} levels deep (at "
                    f"{path[:160] or 'the top'}); flatten it: real JSON Schemas and arguments "
                    "stay far shallower", param=param)


def _image_bytes(part: dict[str, Any], param: str) -> bytes:
    url = part.get("image_url")
    if isinstance(url, dict):
        url = url.get("url")
        param = f"{param}.image_url.url"
    else:
        param = f"{param}.image_url"
    if not isinstance(url, str) or not url.startswith("data:"):
        shown = "" if isinstance(url, str) else f", not {_kind(url)}"
        raise ApiError(f"{param} must be a data URL (data:image/png;base64,...){shown}; the "
                       "bridge never fetches URLs, so nothing leaves the building", param=param)
    head, _, data = url.partition(",")
    if not head.endswith(";base64"):
        raise ApiError(f"{param}: the image data URL must be base64 encoded", param=param)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(f"{param}: the image data URL is not valid base64", param=param) from None


def _content(value: Any, param: str) -> tuple[str | None, list[bytes]]:
    if value is None or isinstance(value, str):
        return (None if value is None else _string(value, param)), []
    if not isinstance(value, list):
        raise _bad(param, "a string or an array of parts", value)
    parts = value
    text: list[str] = []
    images: list[bytes] = []
    for j, part in enumerate(parts):
        where = f"{param}[{j}]"
        part = _object(part, where)
        kind = part.get("type")
        if kind == "text":
            text.append(_string(part.get("text"), f"{where}.text"))
        elif kind == "image_url":
            images.append(_image_bytes(part, where))
        else:
            raise ApiError(f"{where}.type {kind!r} is not supported; send \"text\" or "
                           "\"image_url\" parts", param=f"{where}.type")
    return "".join(text), images


def _tool_call(value: Any, param: str) -> dict[str, Any]:
    tc = _object(value, param)
    fn = _object(tc.get("function"), f"{param}.function")
    args = fn.get("arguments", "{}")
    if not isinstance(args, str | dict):
        raise _bad(f"{param}.function.arguments", "a JSON string", args)
    return {"id": _string(tc.get("id", ""), f"{param}.id"),
            "name": _string(fn.get("name"), f"{param}.function.name", empty=False,
                            max_chars=MAX_NAME_CHARS),
            "arguments": args if isinstance(args, dict)
            else _string(args, f"{param}.function.arguments")}


def _message(value: Any, i: int) -> pb.Message:
    param = f"messages[{i}]"
    m = _object(value, param)
    role = m.get("role")
    if role not in ROLES:
        raise ApiError(f"{param}.role must be one of {', '.join(ROLES)}, not "
                       f"{json.dumps(role) if isinstance(role, str) else _kind(role)}",
                       param=f"{param}.role")
    text, images = _content(m.get("content"), f"{param}.content")
    calls = m.get("tool_calls")
    tool_calls = [_tool_call(tc, f"{param}.tool_calls[{j}]")
                  for j, tc in enumerate(_array(calls, f"{param}.tool_calls"))] if calls else []
    if text is None and not tool_calls and role != "assistant":
        raise ApiError(f"{param}.content is missing; a {role} message needs content",
                       param=f"{param}.content")
    msg = {"role": "system" if role == "developer" else role, "content": text or "",
           "tool_calls": tool_calls, "images": images,
           "tool_call_id": _string(m.get("tool_call_id") or "", f"{param}.tool_call_id"),
           "name": _string(m.get("name") or "", f"{param}.name", max_chars=MAX_NAME_CHARS)}
    return to_pb_message(msg)


def _tool(value: Any, i: int) -> dict[str, Any]:
    param = f"tools[{i}]"
    t = _object(value, param)
    if t.get("type", "function") != "function":
        raise ApiError(f"{param}.type must be \"function\", not {json.dumps(t.get('type'))}",
                       param=f"{param}.type")
    fn = _object(t.get("function"), f"{param}.function")
    params = fn.get("parameters")
    if params is not None:
        _object(params, f"{param}.function.parameters")
    return {"name": _string(fn.get("name"), f"{param}.function.name", empty=False,
                            max_chars=MAX_NAME_CHARS),
            "description": _string(fn.get("description") or "", f"{param}.function.description"),
            "parameters": params}


def _tool_choice(value: Any, tools: list[dict[str, Any]]) -> pb.ToolChoice:
    names = [t["name"] for t in tools]
    if value is None:
        return to_pb_tool_choice("auto")
    if isinstance(value, str):
        if value not in ("auto", "none", "required"):
            raise ApiError(f"tool_choice must be \"auto\", \"none\", \"required\" or "
                           f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, not "
                           f"{json.dumps(value)}", param="tool_choice")
        if value == "required" and not tools:
            raise ApiError("tool_choice \"required\" needs at least one tool in tools",
                           param="tool_choice")
        return to_pb_tool_choice(value)
    choice = _object(value, "tool_choice")
    if choice.get("type") == "allowed_tools":
        return _allowed_tools(choice, names)
    fn = _object(choice.get("function"), "tool_choice.function")
    name = _string(fn.get("name"), "tool_choice.function.name", empty=False)
    if name not in names:
        raise ApiError(f"tool_choice names {name!r}, which is not in tools "
                       f"({', '.join(names) or 'none given'})", param="tool_choice")
    return to_pb_tool_choice({"type": "function", "function": {"name": name}})


def _allowed_tools(choice: dict[str, Any], names: list[str]) -> pb.ToolChoice:
    """OpenAI's {"type": "allowed_tools", "allowed_tools": {"mode", "tools"}}: the call is
    constrained to those tools while the prompt lists them all. Only mode "required" is
    constrained by the node."""
    spec = _object(choice.get("allowed_tools"), "tool_choice.allowed_tools")
    mode = spec.get("mode", "required")
    if mode != "required":
        raise ApiError(f"tool_choice.allowed_tools.mode {json.dumps(mode)} is not supported; use "
                       "\"required\", or send only those tools with tool_choice \"auto\"",
                       param="tool_choice.allowed_tools.mode")
    listed = spec.get("tools")
    if not isinstance(listed, list) or not listed:
        raise _bad("tool_choice.allowed_tools.tools", "a non-empty array of tools", listed)
    allowed: list[str] = []
    for i, t in enumerate(listed):
        where = f"tool_choice.allowed_tools.tools[{i}]"
        fn = _object(_object(t, where).get("function"), f"{where}.function")
        name = _string(fn.get("name"), f"{where}.function.name", empty=False)
        if name not in names:
            raise ApiError(f"{where} names {name!r}, which is not in tools "
                           f"({', '.join(names) or 'none given'})", param=where)
        if name in allowed:
            raise ApiError(f"{where} names {name!r} twice; list each tool once", param=where)
        allowed.append(name)
    return to_pb_tool_choice(allowed_tools(allowed))


def _response_format(value: Any) -> pb.ResponseFormat:
    if value is None:
        return to_pb_response_format(None)
    rf = _object(value, "response_format")
    kind = rf.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise ApiError(f"response_format.type must be \"text\", \"json_object\" or "
                       f"\"json_schema\", not {json.dumps(kind)}", param="response_format.type")
    if kind == "json_schema":
        js = _object(rf.get("json_schema"), "response_format.json_schema")
        _object(js.get("schema", {}), "response_format.json_schema.schema")
        _string(js.get("name", ""), "response_format.json_schema.name",
                max_chars=MAX_NAME_CHARS)
    return to_pb_response_format({"type": kind, **({"json_schema": rf["json_schema"]}
                                                   if kind == "json_schema" else {})})


@dataclass
class ChatBody:
    """A checked chat-completions request."""

    request: pb.ChatRequest
    stream: bool
    include_usage: bool


def parse_chat_body(raw: bytes) -> ChatBody:
    """Check a chat-completions body; ApiError (400) names the first bad field."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(f"the request body is not valid UTF-8 (byte {e.start}); send JSON "
                       "encoded as UTF-8") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(f"the request body is not valid JSON: {e.msg} at line {e.lineno} "
                       f"column {e.colno}") from None
    except RecursionError:
        raise _too_deep(_deep_in_text(text, MAX_DEPTH) or [], MAX_DEPTH) from None
    deep = _deep_in_value(body, MAX_DEPTH)
    if deep is not None:
        raise _too_deep(deep, MAX_DEPTH)
    if not isinstance(body, dict):
        raise ApiError(f"the request body must be a JSON object, not {_kind(body)}")
    return ChatBody(_chat_request(body), _flag(body, "stream"), _include_usage(body))


def _include_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    if opts is None:
        return False
    return _flag(_object(opts, "stream_options"), "include_usage", "stream_options.include_usage")


def _chat_request(body: dict[str, Any]) -> pb.ChatRequest:
    model = _string(body.get("model") or "", "model", max_chars=MAX_NAME_CHARS)
    messages = _array(body.get("messages"), "messages")
    if not messages:
        raise ApiError("messages must hold at least one message", param="messages")
    n = _integer(body, "n", 1, INT32_MAX)
    if n not in (None, 1):
        raise ApiError(f"n={n} is not supported: the bridge returns one choice", param="n")
    if _flag(body, "logprobs"):
        raise ApiError("logprobs are not supported by the bridge", param="logprobs")
    tools = [_tool(t, i) for i, t in enumerate(_array(body.get("tools") or [], "tools"))]
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else _array(stop or [], "stop")
    if len(stops) > MAX_STOP:
        raise ApiError(f"stop holds {len(stops)} sequences; at most {MAX_STOP}", param="stop")
    sampling = pb.Sampling(stop=[_string(s, f"stop[{i}]", empty=False)
                                 for i, s in enumerate(stops)])
    for key, value in (("temperature", _number(body, "temperature", 0.0, 2.0)),
                       ("top_p", _number(body, "top_p", 0.0, 1.0, lo_open=True)),
                       ("min_p", _number(body, "min_p", 0.0, 1.0)),
                       ("repetition_penalty", _number(body, "repetition_penalty", 0.0, 100.0,
                                                      lo_open=True)),
                       ("top_k", _integer(body, "top_k", 0, INT32_MAX)),
                       ("seed", _integer(body, "seed", 0, UINT64_MAX))):
        if value is not None:
            setattr(sampling, key, value)
    req = pb.ChatRequest(
        model=model,
        messages=[_message(m, i) for i, m in enumerate(messages)],
        tools=[to_pb_tool(t) for t in tools],
        tool_choice=_tool_choice(body.get("tool_choice"), tools),
        response_format=_response_format(body.get("response_format")),
        sampling=sampling,
        request_id=uuid.uuid4().hex,
    )
    max_completion = _integer(body, "max_completion_tokens", 1, INT32_MAX)
    max_tokens = max_completion or _integer(body, "max_tokens", 1, INT32_MAX)
    if max_tokens is not None:
        req.max_tokens = max_tokens
    return req
