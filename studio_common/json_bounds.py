"""How long a JSON reply matching a schema can be: the bound that makes constrained decoding end.

    unbounded(schema)      where the schema lets a reply grow without end (empty: nowhere)
    answer_chars(schema)   the most characters of compact JSON a matching reply can take
    reply_tokens(chars)    the node's default max_tokens for such a reply from a model that
                           does not reason: one token per character, plus REPLY_SLACK_TOKENS

The agent holds its own schemas to `unbounded(...) == []` (agent_node/schemas.py); the inference
node reads `answer_chars` to size the default max_tokens of a schema'd reply from a model that
does not reason (inference_node/service.py). "Compact" is the form the node's grammar decodes:
", " between items, ": " after keys, no other whitespace (inference_node/constrained.py).
"""

from __future__ import annotations

import json
from typing import Any

# Tokens over the character bound: the end of the reply (EOS) and a few pieces that write less
# than one character (a byte of a multi-byte character, part of an escape).
REPLY_SLACK_TOKENS = 64


def reply_tokens(chars: int) -> int:
    """The default max_tokens of a reply that can take at most `chars` characters."""
    return chars + REPLY_SLACK_TOKENS


def unbounded(schema: Any, where: str = "") -> list[str]:
    """Where `schema` lets a reply grow without end (empty: every reply it allows is finite).

    Strings need `maxLength` (or `enum` / `const`), arrays `maxItems`, numbers both bounds
    (integers; a float can always take another digit), objects `additionalProperties: false`.
    """
    here = where or "(root)"
    if not isinstance(schema, dict):
        return [f"{here}: not a schema object"]
    if "enum" in schema or "const" in schema:
        return []
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return [p for i, s in enumerate(schema[key]) for p in unbounded(s, f"{where}/{key}{i}")]
    kind = schema.get("type")
    if kind == "string":
        return [] if "maxLength" in schema else [f"{here}: string without maxLength"]
    if kind == "array":
        out = [] if "maxItems" in schema else [f"{here}: array without maxItems"]
        return out + unbounded(schema.get("items"), f"{where}/items")
    if kind == "object":
        out = [] if schema.get("additionalProperties") is False else [
            f"{here}: object open to more properties"]
        for name, sub in (schema.get("properties") or {}).items():
            out += unbounded(sub, f"{where}/{name}")
        return out
    if kind == "integer":
        ok = "maximum" in schema and "minimum" in schema
        return [] if ok else [f"{here}: integer without minimum and maximum"]
    if kind in ("boolean", "null"):
        return []
    return [f"{here}: type {kind!r} has no bound"]


def answer_chars(schema: dict[str, Any]) -> int:
    """The most characters of compact JSON a reply matching `schema` can take (escapes count
    as one character each, as `maxLength` does). Raises ValueError if it is unbounded."""
    problems = unbounded(schema)
    if problems:
        raise ValueError("; ".join(problems))
    return _chars(schema)


def _chars(s: dict[str, Any]) -> int:
    if "enum" in s or "const" in s:
        return max(len(json.dumps(v)) for v in s.get("enum", [s.get("const")]))
    for key in ("anyOf", "oneOf"):
        if key in s:
            return max(_chars(b) for b in s[key])
    kind = s["type"]
    if kind == "string":
        return int(s["maxLength"]) + 2
    if kind == "array":
        n = int(s["maxItems"])
        return 2 + n * _chars(s["items"]) + max(0, n - 1) * 2
    if kind == "object":
        props = s.get("properties") or {}
        fields = [len(json.dumps(k)) + 2 + _chars(v) for k, v in props.items()]
        return 2 + sum(fields) + max(0, len(fields) - 1) * 2
    if kind == "integer":
        return max(len(str(int(s["maximum"]))), len(str(int(s["minimum"]))))
    return 5  # boolean / null
