"""Model calls that must return structure: JSON checked against a schema, bounded retries.

The schemas themselves, and the bounds that make constrained decoding end, are in
`agent_node.schemas`; they are re-exported here for the loop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import jsonschema

from agent_node import activity, prompts
from agent_node.exceptions import DeadlineExceeded
from agent_node.loop.errors import StructuredOutputError, UnfinishedJSON
from agent_node.model import Model, Reply
from agent_node.schemas import CLASSIFY, REVIEW, SPEC, answer_chars
from agent_node.unfinished import TIME, cut_off, explain

__all__ = ["CLASSIFY", "REVIEW", "SPEC", "ask_json", "parse_json"]

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
    step: str = "structured call",
    budget_key: str = "[loop] json_max_tokens",
    timeout_s: float = 0.0,
) -> dict[str, Any]:
    """Ask for JSON matching `schema`; on a malformed reply say what was wrong and ask again.

    A reply cut off by max_tokens, or a call whose deadline passes, raises UnfinishedJSON at
    once: asking again would run out the same way. `step`, `budget_key` (the config key that
    sets `max_tokens`) and `timeout_s` (the stream's deadline) are for its message.
    """
    name = getattr(model, "name", "") or "model"
    messages = list(messages)
    problem, text = "", ""
    for _ in range(retries + 1):
        try:
            reply = model.chat(messages, response_format=schema, max_tokens=max_tokens)
        except DeadlineExceeded as e:
            last = activity.last_call()
            tokens = last.tokens if last is not None else None
            raise UnfinishedJSON(
                explain(step, (last.model if last else "") or e.model or name, TIME,
                        tokens=tokens, reasoning_tokens=last.reasoning_tokens if last else 0,
                        seconds=last.seconds if last else 0.0, budget_key=budget_key,
                        timeout_s=timeout_s),
                step=step, model=e.model or name, tokens=tokens, why=TIME) from e
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
        why = cut_off(reply)
        if why:
            tokens = reply.usage.completion_tokens  # reasoning included
            raise UnfinishedJSON(
                explain(step, reply.model or name, why, tokens=tokens,
                        reasoning_tokens=reply.usage.reasoning_tokens, seconds=reply.seconds,
                        limit=max_tokens, budget_key=budget_key,
                        answer_chars=_answer_chars(schema)),
                text, step=step, model=reply.model or name, tokens=tokens, why=why)
        messages += [
            {"role": "assistant", "content": text},
            {"role": "user", "content": prompts.render("structured/retry", problem=problem,
                                                       schema=json.dumps(schema))},
        ]
    raise StructuredOutputError(
        f"{step}: {name} gave no valid JSON in {retries + 1} tries; last problem: {problem}",
        text)


def _answer_chars(schema: dict[str, Any]) -> int:
    try:
        return answer_chars(schema)
    except ValueError:
        return 0
