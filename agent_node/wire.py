"""Chat-completions-shaped dicts (the Model protocol's messages, tools, formats) as the wire's
protobuf messages. The client builds its requests with these, and the bridge its own after
checking every field.

    to_pb_message({"role": "user", "content": "hi"})            # pb.Message
    to_pb_tool({"name": "read", "parameters": {...}})           # pb.Tool (or the OpenAI shape)
    to_pb_tool_choice("required"); to_pb_response_format(schema); sampling(temperature=0.2)
"""

from __future__ import annotations

import json
from typing import Any

from inference_node.api import pb


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # chat-completions parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _tool_call(tc: dict[str, Any]) -> pb.ToolCall:
    fn = tc.get("function") or {}
    name = tc.get("name") or fn.get("name", "")
    args = tc.get("arguments", fn.get("arguments", {}))
    return pb.ToolCall(
        id=tc.get("id", ""),
        name=name,
        arguments_json=args if isinstance(args, str) else json.dumps(args),
    )


def to_pb_message(m: dict[str, Any]) -> pb.Message:
    return pb.Message(
        role=m.get("role", ""),
        text=_text(m.get("content")),
        tool_calls=[_tool_call(tc) for tc in m.get("tool_calls") or []],
        tool_call_id=m.get("tool_call_id", ""),
        name=m.get("name", "") or "",
        images=[pb.Image(data=b) for b in m.get("images") or []],
    )


def to_pb_tool(t: dict[str, Any]) -> pb.Tool:
    fn = t.get("function", t)  # accepts {"type": "function", "function": {...}} too
    return pb.Tool(
        name=fn["name"],
        description=fn.get("description", ""),
        parameters_json=json.dumps(fn.get("parameters") or {"type": "object", "properties": {}}),
    )


def allowed_tools(names: list[str]) -> dict[str, Any]:
    """A tool choice (OpenAI's shape) forcing a call to one of `names`, while the prompt keeps
    listing every tool the request sends."""
    return {"type": "allowed_tools",
            "allowed_tools": {"mode": "required",
                              "tools": [{"type": "function", "function": {"name": n}}
                                        for n in names]}}


def to_pb_tool_choice(choice: Any) -> pb.ToolChoice:
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":  # see allowed_tools
        spec = choice["allowed_tools"]
        if spec.get("mode", "required") != "required":
            raise ValueError(f"allowed_tools mode {spec.get('mode')!r} is not supported; "
                             "use \"required\" (the node constrains the call to those tools)")
        return pb.ToolChoice(mode=pb.ToolChoice.REQUIRED,
                             allowed=[t.get("function", t)["name"] for t in spec["tools"]])
    if isinstance(choice, dict):  # {"type": "function", "function": {"name": ...}}
        return pb.ToolChoice(mode=pb.ToolChoice.NAMED, name=choice.get("function", {})["name"])
    modes = {"auto": pb.ToolChoice.AUTO, "none": pb.ToolChoice.NONE,
             "required": pb.ToolChoice.REQUIRED}
    if not choice or choice in modes:
        return pb.ToolChoice(mode=modes.get(choice or "auto", pb.ToolChoice.AUTO))
    return pb.ToolChoice(mode=pb.ToolChoice.NAMED, name=str(choice))


def to_pb_response_format(rf: dict[str, Any] | None) -> pb.ResponseFormat:
    """A JSON Schema dict (the Model protocol's shape), or the chat-completions shapes."""
    if not rf:
        return pb.ResponseFormat()
    kind = rf.get("type")
    if kind == "text" and "properties" not in rf:
        return pb.ResponseFormat()
    if kind == "json_object":
        return pb.ResponseFormat(type=pb.ResponseFormat.JSON_OBJECT)
    if kind == "json_schema" and isinstance(rf.get("json_schema"), dict):
        js = rf["json_schema"]
        return pb.ResponseFormat(type=pb.ResponseFormat.JSON_SCHEMA, name=js.get("name", ""),
                                 schema_json=json.dumps(js.get("schema", {})))
    return pb.ResponseFormat(type=pb.ResponseFormat.JSON_SCHEMA, schema_json=json.dumps(rf))


def to_pb_sampling(opts: dict[str, Any]) -> pb.Sampling:
    known = ("temperature", "top_p", "top_k", "min_p", "seed", "repetition_penalty", "stop")
    unknown = set(opts) - set(known)
    if unknown:
        raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
    fields = {k: v for k, v in opts.items() if v is not None}
    if isinstance(fields.get("stop"), str):
        fields["stop"] = [fields["stop"]]
    return pb.Sampling(**fields)
