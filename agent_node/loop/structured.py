"""Model calls that must return structure: JSON checked against a schema, bounded retries."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import jsonschema

from agent_node.loop.errors import StructuredOutputError
from agent_node.model import Model, Reply

CLASSIFY = {
    "type": "object",
    "properties": {
        "ui": {"type": "boolean"},
        "asks_for_change": {"type": "boolean"},
        "page": {"type": "string"},
        "reason": {"type": "string"},
    },
    "required": ["ui", "asks_for_change", "page", "reason"],
    "additionalProperties": False,
}

SPEC = {
    "type": "object",
    "properties": {
        "statements": {"type": "array", "items": {"type": "string", "minLength": 3},
                       "minItems": 1, "maxItems": 20},
    },
    "required": ["statements"],
    "additionalProperties": False,
}

REVIEW = {
    "type": "object",
    "properties": {
        "verdict": {"enum": ["pass", "fail"]},
        "reasons": {"type": "array", "items": {"type": "string"}},
        "fixes": {"type": "array", "items": {"type": "string"}},
        "tests_change_ok": {"type": "boolean"},
    },
    "required": ["verdict", "reasons", "fixes", "tests_change_ok"],
    "additionalProperties": False,
}

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def parse_json(text: str) -> Any:
    """The JSON in a reply, tolerating a code fence around it."""
    text = text.strip()
    m = _FENCE.match(text)
    return json.loads(m.group(1) if m else text)


def ask_json(
    model: Model,
    messages: list[dict[str, Any]],
    schema: dict[str, Any],
    *,
    retries: int = 2,
    max_tokens: int | None = None,
    on_reply: Callable[[Reply], None] | None = None,
) -> dict[str, Any]:
    """Ask for JSON matching `schema`; on a malformed reply say what was wrong and ask again."""
    messages = list(messages)
    problem, text = "", ""
    for _ in range(retries + 1):
        reply = model.chat(messages, response_format=schema, max_tokens=max_tokens)
        if on_reply:
            on_reply(reply)
        text = reply.text
        try:
            value = parse_json(text)
            jsonschema.validate(value, schema)
            return value  # type: ignore[no-any-return]
        except json.JSONDecodeError as e:
            problem = f"it is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
        except jsonschema.ValidationError as e:
            where = "/".join(str(p) for p in e.absolute_path) or "the top level"
            problem = f"it does not match the schema at {where}: {e.message}"
        if reply.cut_off_while_reasoning:
            problem += "; the reply was cut off while still reasoning"
        messages += [
            {"role": "assistant", "content": text},
            {"role": "user", "content": f"That reply cannot be used: {problem}. Reply again with "
             f"only a JSON object matching this schema:\n{json.dumps(schema)}"},
        ]
    raise StructuredOutputError(
        f"{getattr(model, 'name', 'model')} gave no valid JSON in {retries + 1} tries; "
        f"last problem: {problem}", text)
