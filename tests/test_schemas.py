"""Every structured call's schema is bounded, and the inference node's grammar really ends it.

The grammar checks decode under llguidance with SmolLM2's tokenizer, choosing tokens as a model
that never wants to stop would: the longest allowed token that keeps writing, never one that
closes a string, an array or an object while anything else is allowed. Every string then runs
to its maxLength and every array to its maxItems, and the reply still ends. The last test does
the same with the real model on the real server.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import mlx.core as mx
import numpy as np
import pytest

from agent_node.loop.coder import tool_spec
from agent_node.schemas import (
    CLASSIFY,
    REVIEW,
    SCHEMAS,
    answer_chars,
    bounded_tool,
    classify_schema,
    unbounded,
)
from agent_node.tools import make_tools
from inference_node.constrained import compile_response_format, compile_tool_choice, ll_tokenizer

ALL = {**SCHEMAS, "classify (no web files)": classify_schema(["calc.py", "test_calc.py"])}


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_structured_calls_schema_is_bounded(name: str) -> None:
    assert unbounded(ALL[name]) == []
    assert 0 < answer_chars(ALL[name]) < 20_000


def test_unbounded_names_what_a_schema_leaves_open() -> None:
    schema = {"type": "object", "properties": {
        "why": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string",
                                                                        "maxLength": 9}},
        "score": {"type": "number"}, "n": {"type": "integer", "minimum": 0},
        "kind": {"enum": ["a", "b"]}}}
    assert unbounded(schema) == [
        "(root): object open to more properties", "/why: string without maxLength",
        "/tags: array without maxItems", "/score: type 'number' has no bound",
        "/n: integer without minimum and maximum"]
    with pytest.raises(ValueError, match="string without maxLength"):
        answer_chars(schema)


def test_classification_in_a_repository_without_web_files_cannot_say_ui() -> None:
    schema = classify_schema(["calc.py", "tests/test_calc.py", "README.md"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"ui": True, "asks_for_change": True, "page": "index.html",
                             "reason": "x"}, schema)
    assert classify_schema(["app/templates/home.html", "app.py"]) is CLASSIFY


# ---------------------------------------------------------------- the grammar ends them


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path) -> Any:
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    return load_tokenizer(smollm2_dir)


def rambling_scores(tokenizer: Any) -> mx.array:
    """Logits of a model that never wants to stop: long tokens first, closers and EOS last."""
    lltok = ll_tokenizer(tokenizer)
    scores = np.zeros(lltok.vocab_size, dtype=np.float32)
    for i in range(lltok.vocab_size):
        text = lltok.decode_bytes([i])
        closes = any(c in text for c in (b'"', b"]", b"}"))
        scores[i] = -100.0 if closes else min(len(text), 16)
    scores[list(lltok.eos_tokens)] = -1000.0
    return mx.array(scores[None, :])


def ramble(tokenizer: Any, schema: dict[str, Any], limit: int = 20_000,
           constraint: Any = None) -> tuple[str, int]:
    constraint = constraint or compile_response_format(tokenizer, schema, False)
    processor = constraint.logits_processor()
    scores = rambling_scores(tokenizer)
    context = tokenizer.encode("Answer.")
    prompt = len(context)
    eos = set(tokenizer.eos_token_ids)
    while len(context) - prompt < limit:
        token = int(mx.argmax(processor(mx.array(context), scores), axis=-1).item())
        if token in eos or constraint.stop_reached():
            break
        context.append(token)
        if constraint.stop_reached():
            break
    assert not constraint.error(), constraint.error()
    return tokenizer.decode(context[prompt:]), len(context) - prompt


def at_bounds(value: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    """Where `value` stopped short of its schema's bound (empty: every bound was reached)."""
    if "anyOf" in schema:
        branch = next(b for b in schema["anyOf"] if jsonschema.Draft202012Validator(b)
                      .is_valid(value))
        return at_bounds(value, branch, where)
    if "enum" in schema or "const" in schema or schema.get("type") in ("boolean", "integer"):
        return []
    if schema["type"] == "string":
        return [] if len(value) == schema["maxLength"] else [f"{where}: {len(value)} chars"]
    if schema["type"] == "array":
        short = [] if len(value) == schema["maxItems"] else [f"{where}: {len(value)} items"]
        return short + [p for i, v in enumerate(value)
                        for p in at_bounds(v, schema["items"], f"{where}/{i}")]
    return [p for k, v in value.items() for p in at_bounds(v, schema["properties"][k],
                                                           f"{where}/{k}")]


@pytest.mark.parametrize("name", sorted(ALL))
def test_the_grammar_ends_a_reply_that_would_never_close_at_the_schemas_bounds(
        tokenizer: Any, name: str) -> None:
    schema = ALL[name]
    text, tokens = ramble(tokenizer, schema)
    value = json.loads(text)
    jsonschema.validate(value, schema)
    assert at_bounds(value, schema) == []  # the bounds ended it, not the rambler
    assert tokens <= answer_chars(schema)


def test_a_review_gives_its_reasons_before_its_verdict(tokenizer: Any) -> None:
    text, _ = ramble(tokenizer, REVIEW)  # decoded in the schema's order
    assert text.index('"reasons"') < text.index('"verdict"')


TOOLS = {name: tool_spec(t) for name, t in make_tools(Path("."), timeout_s=60).items()}


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_every_coder_tool_call_is_bounded_and_still_valid_for_its_tool(
        tokenizer: Any, name: str) -> None:
    bounded = bounded_tool(TOOLS[name])
    assert unbounded(bounded["parameters"]) == []
    constraint = compile_tool_choice(tokenizer, [bounded], "named", name)
    text, tokens = ramble(tokenizer, {}, constraint=constraint)
    call = json.loads(text)
    assert call["name"] == name
    jsonschema.validate(call["arguments"], TOOLS[name]["parameters"])  # the tool's own schema
    assert at_bounds(call["arguments"], bounded["parameters"]) == []
    assert tokens <= answer_chars(bounded["parameters"]) + 40


def test_without_a_bound_the_same_rambler_never_closes(tokenizer: Any) -> None:
    open_reason = copy.deepcopy(CLASSIFY)
    del open_reason["properties"]["reason"]["maxLength"]
    text, tokens = ramble(tokenizer, open_reason, limit=600)
    assert tokens == 600 and text.startswith('{"ui": ')
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


# ---------------------------------------------------------------- on the real server


def test_bounded_classify_ends_on_smollm2_where_the_unbounded_one_rambles(smol_server) -> None:
    from agent_node import prompts
    from agent_node.client import Client
    from agent_node.config import AgentConfig

    cfg = AgentConfig()
    cfg.inference.target = smol_server[1]
    bounded = copy.deepcopy(CLASSIFY)
    bounded["properties"]["reason"]["maxLength"] = 24  # short, to keep the test cheap
    unbounded_ = copy.deepcopy(bounded)
    del unbounded_["properties"]["reason"]["maxLength"]
    # SmolLM2 answers this classification with `"reason": "1.1.1.1...` and never closes it
    # (the full CLASSIFY, as before a repository without web files ruled UI out).
    # Instructions and task in one user message, as the loop sent them before the instructions
    # became the system part: the prompt SmolLM2 rambles on.
    task = prompts.render("loop/classify", task="Fix add() in calc.py so it returns the sum.",
                          files=["calc.py", "test_calc.py"])
    messages = [{"role": "user", "content": prompts.render("loop/classify_system") + "\n\n" + task}]
    with Client(cfg) as client:
        model = client.model()
        ended = model.chat(messages, response_format=bounded, max_tokens=400)
        assert ended.finish_reason == "stop", ended.text
        jsonschema.validate(json.loads(ended.text), bounded)
        room = ended.usage.completion_tokens + 24
        rambled = model.chat(messages, response_format=unbounded_, max_tokens=room)
    assert rambled.finish_reason == "length" and rambled.usage.completion_tokens == room
    with pytest.raises(json.JSONDecodeError):
        json.loads(rambled.text)
