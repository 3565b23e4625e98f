"""Structured output: forced tool calls and response formats hold for a real small model.

SmolLM2 (no native tool-call format) is run in-process through mlx-lm with the constraint's
logits processor; the 20-of-20 checks go through mlx-lm's BatchGenerator, the path the engine
uses (from their shared system prompt's KV, as the engine's prompt cache gives it), and the
single checks through stream_generate. The model is dequantized to float32 here only because
MLX's CPU quantized matmul is slow; the weights are SmolLM2's own.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import mlx.core as mx
import pytest
from mlx_lm import load, stream_generate
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.tokenizer_utils import load as load_tokenizer
from mlx_lm.tool_parsers import json_tools
from mlx_lm.utils import dequantize_model

from inference_node.constrained import (
    Constraint,
    compile_response_format,
    compile_tool_choice,
    ll_tokenizer,
)
from inference_node.errors import BadRequest
from inference_node.json_schema import closed_objects
from inference_node.service import default_max_tokens
from studio_common.json_bounds import REPLY_SLACK_TOKENS, answer_chars

pytestmark = pytest.mark.slow

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
}
READ_FILE = {
    "name": "read_file",
    "description": "Read a file of the repository.",
    "parameters": {
        "type": "object",
        "properties": {"path": {"type": "string", "maxLength": 60}},
        "required": ["path"],
    },
}
TOOLS = [WEATHER, READ_FILE]

PROMPTS = [
    "What's the weather in Paris?", "Show me src/main.py", "Hello!", "Is it raining in Tokyo?",
    "Open README.md", "How hot is it in Cairo?", "Read the Makefile.", "Tell me a joke.",
    "Weather in Lima, in fahrenheit", "What is in tests/test_app.py?", "Who are you?",
    "Should I take an umbrella in London?", "Print setup.cfg", "2 + 2?", "Is Oslo cold today?",
    "Look at docs/index.md", "Write a haiku.", "Temperature in Sydney?", "cat pyproject.toml",
    "What's new?",
]

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "languages": {"type": "array", "items": {"type": "string", "maxLength": 20},
                      "maxItems": 3},
    },
    "required": ["name", "age", "languages"],
}
PERSON_PROMPTS = [f"Describe {who} as JSON." for who in (
    "a Python developer", "Ada Lovelace", "a child who likes Rust", "your best friend",
    "a retired teacher", "Linus Torvalds", "a chef from Lyon", "a student in Nairobi",
    "an astronaut", "a poet", "a bilingual nurse", "a game designer", "my grandmother",
    "a Go programmer", "a translator", "a pilot", "a data scientist", "a baker",
    "a violinist", "a robot",
)]


@pytest.fixture(scope="module")
def smol(smollm2_dir: Path) -> tuple[Any, Any]:
    model, tokenizer = load(str(smollm2_dir))
    model = dequantize_model(model)
    mx.eval(model.parameters())
    return model, tokenizer


def chat(tokenizer: Any, user: str, constraint: Constraint | None) -> list[int]:
    system = "You are a helpful assistant." + (constraint.instruction if constraint else "")
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)


def generate_batch(smol: tuple[Any, Any], prompts: list[list[int]],
                   constraints: list[Constraint], max_tokens: int) -> list[str]:
    """The prompts share their system prompt (and the constraint's instruction): its KV is
    computed once and each sequence starts from a copy, as the engine's prompt cache gives it."""
    model, tokenizer = smol
    shared = 0
    while all(len(p) > shared + 1 and p[shared] == prompts[0][shared] for p in prompts):
        shared += 1
    prefix = prompts[0][:shared]
    cache = make_prompt_cache(model)
    model(mx.array([prefix]), cache=cache)
    mx.eval([c.state for c in cache])
    gen = BatchGenerator(model, stop_tokens=[[i] for i in tokenizer.eos_token_ids],
                         completion_batch_size=len(prompts), prefill_batch_size=len(prompts))
    try:
        uids = gen.insert([p[shared:] for p in prompts], max_tokens=[max_tokens] * len(prompts),
                          caches=[copy.deepcopy(cache) for _ in prompts],
                          all_tokens=[list(prefix) for _ in prompts],
                          logits_processors=[[c.logits_processor()] for c in constraints])
        out: dict[int, list[int]] = {u: [] for u in uids}
        finished: set[int] = set()
        while len(finished) < len(uids):
            for r in gen.next_generated():
                if r.token not in tokenizer.eos_token_ids:
                    out[r.uid].append(r.token)
                if r.finish_reason:
                    finished.add(r.uid)
    finally:
        gen.close()
    return [tokenizer.decode(out[u]) for u in uids]


def generate_one(smol: tuple[Any, Any], prompt: list[int], constraint: Constraint | None,
                 max_tokens: int = 48) -> tuple[str, list[int]]:
    model, tokenizer = smol
    processors = [constraint.logits_processor()] if constraint else []
    text, ids = "", []
    for r in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens,
                             logits_processors=processors):
        text += r.text
        ids.append(r.token)
        if constraint is not None and constraint.stop_reached():
            break
    return text, ids


# ---------------------------------------------------------------- the model's replies


def test_required_tool_choice_gives_20_of_20_valid_calls(smol: tuple[Any, Any]) -> None:
    tokenizer = smol[1]
    constraints = [compile_tool_choice(tokenizer, TOOLS, "required") for _ in PROMPTS]
    assert all(c is not None for c in constraints)
    prompts = [chat(tokenizer, p, c) for p, c in zip(PROMPTS, constraints, strict=True)]
    texts = generate_batch(smol, prompts, constraints, max_tokens=48)  # type: ignore[arg-type]
    schemas = {t["name"]: t["parameters"] for t in TOOLS}
    for c, text in zip(constraints, texts, strict=True):
        assert c is not None and not c.error(), c and c.error()
        [call] = c.parse_tool_calls(text)
        jsonschema.validate(call["arguments"], schemas[call["name"]])


def test_response_format_gives_20_of_20_valid_replies(smol: tuple[Any, Any]) -> None:
    tokenizer = smol[1]
    constraints = [compile_response_format(tokenizer, PERSON, False) for _ in PERSON_PROMPTS]
    prompts = [chat(tokenizer, p, c) for p, c in zip(PERSON_PROMPTS, constraints, strict=True)]
    texts = generate_batch(smol, prompts, constraints, max_tokens=64)
    for c, text in zip(constraints, texts, strict=True):
        assert not c.error()
        jsonschema.validate(json.loads(text), PERSON)


def test_named_tool_choice_forces_that_tool(smol: tuple[Any, Any]) -> None:
    tokenizer = smol[1]
    constraint = compile_tool_choice(tokenizer, TOOLS, "named", name="read_file")
    assert constraint is not None
    text, _ = generate_one(smol, chat(tokenizer, "What's the weather in Paris?", constraint),
                           constraint)
    assert constraint.stop_reached()
    [call] = constraint.parse_tool_calls(text)
    assert call["name"] == "read_file"
    jsonschema.validate(call["arguments"], READ_FILE["parameters"])


def test_auto_tool_choice_leaves_the_model_free_to_answer_in_text(
    smol: tuple[Any, Any],
) -> None:
    assert compile_tool_choice(smol[1], TOOLS, "auto") is None
    assert compile_tool_choice(smol[1], TOOLS, "none") is None
    text, _ = generate_one(smol, chat(smol[1], "What is the capital of France?", None), None, 24)
    assert "Paris" in text and not text.lstrip().startswith("{")


def test_json_object_reply_is_a_json_object(smol: tuple[Any, Any]) -> None:
    constraint = compile_response_format(smol[1], None, True)
    text, _ = generate_one(smol, chat(smol[1], "List three colors.", constraint), constraint, 64)
    assert isinstance(json.loads(text), dict)


def test_native_hermes_format_is_constrained_between_the_models_own_markers(
    smol: tuple[Any, Any], smollm2_dir: Path, tmp_path: Path
) -> None:
    # SmolLM2's tokenizer, with two unused special tokens renamed to hermes-style markers and
    # mlx-lm's json_tools parser named, stands in for a model with a native tool-call format.
    tok_dir = tmp_path / "hermes-tokenizer"
    tok_dir.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(smollm2_dir / f, tok_dir / f)
    spec = json.loads((tok_dir / "tokenizer.json").read_text())
    renamed = {3: "<tool_call>", 4: "</tool_call>"}
    vocab = spec["model"]["vocab"]
    for added in spec["added_tokens"]:
        if added["id"] in renamed:
            del vocab[added["content"]]
            added["content"] = renamed[added["id"]]
            vocab[added["content"]] = added["id"]
    (tok_dir / "tokenizer.json").write_text(json.dumps(spec))
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    config.pop("added_tokens_decoder", None)
    config["tool_parser_type"] = "json_tools"
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = load_tokenizer(tok_dir)
    assert tokenizer.has_tool_calling and tokenizer.tool_call_start == "<tool_call>"

    constraint = compile_tool_choice(tokenizer, TOOLS, "named", name="get_weather")
    assert constraint is not None and constraint.native == ("<tool_call>", "</tool_call>")
    assert constraint.instruction == ""  # the model's template renders the tools itself
    text, ids = generate_one((smol[0], tokenizer), chat(tokenizer, "Weather in Rome?", None),
                             constraint)
    assert ids[0] == 3 and ids[-1] == 4  # the markers are the model's own special tokens
    body = tokenizer.decode(ids[1:-1])
    call = json_tools.parse_tool_call(body)  # what mlx-lm's server would do
    assert call["name"] == "get_weather"
    # Compact, as a chat template's tojson renders it back in the next turn's prompt: the
    # prompt cache then finds the call it generated byte for byte.
    assert body.strip("\n") == json.dumps(call, ensure_ascii=False), body
    jsonschema.validate(call["arguments"], WEATHER["parameters"])
    assert constraint.parse_tool_calls(text) == [call]


# ---------------------------------------------------------------- refusals


def test_schema_that_is_not_json_schema_is_refused_with_the_validators_reason(
    smol: tuple[Any, Any],
) -> None:
    with pytest.raises(BadRequest, match=r"not valid JSON Schema: at type: .*fix the schema"):
        compile_response_format(smol[1], {"type": "objekt"}, False)
    bad_tool = {**WEATHER, "parameters": {"type": "object", "required": "city"}}
    with pytest.raises(BadRequest, match=r"parameters of tool 'get_weather' is not valid JSON"):
        compile_tool_choice(smol[1], [bad_tool], "required")


def test_schema_the_grammar_cannot_enforce_is_refused_with_llguidances_reason(
    smol: tuple[Any, Any],
) -> None:
    with pytest.raises(BadRequest, match=r"cannot be enforced: Unimplemented keys: \[\"not\"\]"):
        compile_response_format(smol[1], {"not": {"type": "string"}}, False)
    lookahead = {"type": "string", "pattern": "(?=a)b"}
    with pytest.raises(BadRequest, match="look-around"):
        compile_response_format(smol[1], lookahead, False)
    with pytest.raises(BadRequest) as e:
        compile_response_format(smol[1], {"type": "string", "minLength": 5, "maxLength": 2},
                                False)
    assert e.value.code.name == "INVALID_ARGUMENT"


def test_unknown_tool_name_and_mode_are_refused(smol: tuple[Any, Any]) -> None:
    with pytest.raises(BadRequest, match=r"'delete_all'.*get_weather, read_file"):
        compile_tool_choice(smol[1], TOOLS, "named", name="delete_all")
    with pytest.raises(BadRequest, match="unknown"):
        compile_tool_choice(smol[1], TOOLS, "sometimes")
    with pytest.raises(BadRequest, match="at least one tool"):
        compile_tool_choice(smol[1], [], "required")


def test_llguidance_tokenizer_is_built_once_per_tokenizer(smol: tuple[Any, Any]) -> None:
    assert ll_tokenizer(smol[1]) is ll_tokenizer(smol[1])


# ---------------------------------------------------------------- reasoning models


def thinking_tokenizer(smollm2_dir: Path, dest: Path, special: bool) -> Any:
    """SmolLM2's tokenizer with two unused added tokens renamed <think> and </think>: a
    stand-in for a reasoning model (mlx-lm reads its think markers from the vocabulary)."""
    dest.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(smollm2_dir / f, dest / f)
    spec = json.loads((dest / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    for added in spec["added_tokens"]:
        if added["id"] in (3, 4):
            del vocab[added["content"]]
            added["content"] = "<think>" if added["id"] == 3 else "</think>"
            added["special"] = special
            vocab[added["content"]] = added["id"]
    (dest / "tokenizer.json").write_text(json.dumps(spec))
    config = json.loads((dest / "tokenizer_config.json").read_text())
    config.pop("added_tokens_decoder", None)
    (dest / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = load_tokenizer(dest)
    assert tokenizer.has_thinking and tokenizer.think_start_tokens == (3,)
    return tokenizer


def feed(constraint: Constraint, prompt: list[int], reply: list[int]) -> str:
    """Offer `reply` token by token; "" if the grammar took all of it and is complete, else
    where it was refused."""
    processor = constraint.logits_processor()
    context = list(prompt)
    logits = mx.zeros((1, 49152))
    allowed = processor(mx.array(context), logits)
    for token in reply:
        if allowed[0, token].item() == -float("inf"):
            return f"refused token {token} after {len(context) - len(prompt)} tokens"
        context.append(token)
        allowed = processor(mx.array(context), logits)
    return "" if constraint.stop_reached() else "incomplete"


REASON = {"type": "object", "properties": {"reason": {"type": "string", "maxLength": 10}},
          "required": ["reason"]}


# Added tokens are special to llguidance whether or not the tokenizer marks them so (Qwen3's
# <think> is added with "special": false); both kinds are checked.
@pytest.mark.parametrize("special", [True, False], ids=["special", "added-not-special"])
def test_a_reasoning_model_thinks_freely_and_only_its_answer_is_bounded(
    smollm2_dir: Path, tmp_path: Path, special: bool
) -> None:
    tok = thinking_tokenizer(smollm2_dir, tmp_path / "thinker", special)
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    opened = enc("Classify this.") + [3]  # the chat template opened <think>
    thought = enc(" Let me weigh the task against the files once more.") * 60  # ~700 tokens
    constraint = compile_response_format(tok, REASON, False)
    assert len(thought) > 600
    assert feed(constraint, opened, thought + [4] + enc('\n\n{"reason": "a fix"}')) == ""
    refused = feed(constraint, opened, thought + [4] + enc('{"reason": "far too long a reason"}'))
    assert refused.startswith("refused") and int(refused.split()[-2]) > len(thought)
    # Not opened by the template: the model may open it itself, or answer at once.
    asked = enc("Classify this.")
    assert feed(constraint, asked, [3] + thought + [4] + enc('{"reason": "ok"}')) == ""
    assert feed(constraint, asked, enc('{"reason": "ok"}')) == ""
    assert feed(constraint, asked, enc('Sure! {"reason": "ok"}')).startswith("refused")


def test_a_forced_tool_call_leaves_a_reasoning_model_its_thinking(
    smollm2_dir: Path, tmp_path: Path
) -> None:
    tok = thinking_tokenizer(smollm2_dir, tmp_path / "thinker", True)
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    constraint = compile_tool_choice(tok, [READ_FILE], "required")
    assert constraint is not None and constraint.thinking is not None
    call = enc('{"name": "read_file", "arguments": {"path": "setup.cfg"}}')
    thought = enc(" Which file? setup.cfg.")
    assert feed(constraint, enc("Read it.") + [3], thought + [4] + call) == ""


def test_a_reply_with_nothing_to_think_first_defaults_to_what_its_grammar_allows(
    smol: tuple[Any, Any], smollm2_dir: Path, tmp_path: Path
) -> None:
    tok = smol[1]
    person = compile_response_format(tok, PERSON, False)
    assert person.thinking is None  # SmolLM2 does not reason
    assert person.answer_chars == answer_chars(closed_objects(PERSON))  # the node closes it
    assert default_max_tokens(32768, person) == person.answer_chars + REPLY_SLACK_TOKENS
    call = compile_tool_choice(tok, [READ_FILE], "named", "read_file")
    assert call is not None
    assert call.answer_chars == len('{"name": "read_file", "arguments": {"path": ""}}') + 60
    # Open somewhere, or no constraint at all: the configured default.
    open_name = {**PERSON, "properties": {**PERSON["properties"], "name": {"type": "string"}}}
    for c in (compile_response_format(tok, open_name, False),
              compile_response_format(tok, None, True), None):
        assert c is None or c.answer_chars is None
        assert default_max_tokens(32768, c) == 32768
    # A reasoning model's thinking comes first and is bounded only by max_tokens (rule 3).
    thinker = compile_response_format(thinking_tokenizer(smollm2_dir, tmp_path / "t", True),
                                      PERSON, False)
    assert thinker.answer_chars == person.answer_chars
    assert default_max_tokens(32768, thinker) == 32768
