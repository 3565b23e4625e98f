"""The JSON schemas of structured output, before they become grammars (constrained.py).

A request's schema is checked against its meta-schema, objects that list their properties are
closed to others, a forced tool call gets one schema over all its tools, and a schema is given
the compact-JSON options llguidance compiles it with; `answer_chars` bounds the reply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jsonschema

from inference_node.errors import BadRequest
from studio_common import json_bounds

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# Compact JSON without free whitespace: a small model given free whitespace can spend its
# whole token budget on newlines; the separators match what models see in training text.
JSON_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


def tool_call_schema(params_by_name: dict[str, dict]) -> dict:
    """`{"name": <tool>, "arguments": <its parameters>}`, one anyOf branch per tool."""
    branches = [
        {
            "type": "object",
            "properties": {"name": {"const": tname}, "arguments": params},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tname, params in params_by_name.items()
    ]
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def check_schema(schema: Any, what: str, field: str = "") -> None:
    """BadRequest unless `schema` is valid against its JSON Schema meta-schema.

    `field` names the request field it came from, for the error's metadata.
    """
    if not isinstance(schema, dict | bool):
        raise BadRequest(f"{what} must be a JSON object, got {type(schema).__name__}",
                         field=field, expected="a JSON Schema object")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        path = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise BadRequest(
            f"{what} is not valid JSON Schema: at {path}: {e.message}; fix the schema",
            field=field, value=f"at {path}: {e.message}", expected="valid JSON Schema",
        ) from None


def closed_objects(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` wherever an object lists its properties
    and says nothing about others.

    Every reply this allows is still valid against the original; without it a small model
    wanders off into inventing keys and runs out of tokens before closing the object.
    """
    if isinstance(schema, list):
        return [closed_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas"):
        if isinstance(out.get(key), dict):
            out[key] = {k: closed_objects(v) for k, v in out[key].items()}
    for key in ("items", "prefixItems", "anyOf", "oneOf", "allOf", "additionalProperties",
                "not", "if", "then", "else", "contains"):
        if key in out:
            out[key] = closed_objects(out[key])
    open_keys = ("additionalProperties", "patternProperties", "unevaluatedProperties")
    if "properties" in out and not any(k in out for k in open_keys):
        out["additionalProperties"] = False
    return out


def answer_chars(schema: dict) -> int | None:
    """The most characters a reply the grammar allows can take, or None if it is unbounded."""
    closed = closed_objects(schema)
    return None if json_bounds.unbounded(closed) else json_bounds.answer_chars(closed)


def json_for_lark(schema: dict) -> dict:
    """The schema as `%json` in a lark grammar takes it, with the compact-JSON options."""
    return {**closed_objects(schema), "x-guidance": JSON_OPTIONS}
