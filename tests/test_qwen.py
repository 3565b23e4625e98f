"""Qwen2.5-Coder, installed from its registry parts and served over real gRPC, against an
implementation nobody on the project wrote: transformers + torch on the same GGUF (the fixture
tests/fixtures/qwen2.5-coder-0.5b-reference.json, written by scripts/qwen_reference.py).

The 0.5B runs by default (downloaded once per machine, imported once per checkout, one server
for the session); the 1.5B only with STUDIO_CODER_TEST_QWEN_1_5B=1.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import TESTS
from test_server import collect, user

from inference_node.api import pb

pytestmark = pytest.mark.slow

REFERENCE = json.loads((TESTS / "fixtures" / "qwen2.5-coder-0.5b-reference.json").read_text())
MODEL = "qwen05"


def as_messages(messages: list[dict]) -> list[pb.Message]:
    return [pb.Message(role=m["role"], text=m["content"]) for m in messages]


def as_tools(tools: list[dict]) -> list[pb.Tool]:
    return [pb.Tool(name=t["function"]["name"], description=t["function"]["description"],
                    parameters_json=json.dumps(t["function"]["parameters"])) for t in tools]


TOOLS = [
    pb.Tool(name="run_tests", description="Run the repository's test command.",
            parameters_json=json.dumps({"type": "object", "properties": {
                "path": {"type": "string"}, "verbose": {"type": "boolean"}},
                "required": ["path", "verbose"]})),
    pb.Tool(name="read_file", description="Read a file of the repository.",
            parameters_json=json.dumps({"type": "object", "properties": {
                "path": {"type": "string"}}, "required": ["path"]})),
]


def test_fixture_was_made_from_the_pinned_gguf():
    from inference_node.install import KNOWN_MODELS

    assert REFERENCE["gguf_sha256"] == KNOWN_MODELS["qwen2.5-coder-0.5b"].sha256
    assert len(REFERENCE["chats"]) >= 3 and len(REFERENCE["tokenizer"]) >= 20


@pytest.fixture(scope="module")
def replies(qwen05_server) -> dict[str, dict]:
    """The reference's chats and its tool chat, sent at once over gRPC, by reference text:
    the engine decodes them in one batch, so each greedy reply must also not depend on what
    else is in the batch (and the five cost about what one does on this memory-bound CPU)."""
    import grpc

    from inference_node.api import rpc
    from studio_common.channel import MAX_MESSAGE_BYTES, channel_options

    requests = {case["text"]: pb.ChatRequest(
        model=MODEL, messages=as_messages(case["messages"]),
        max_tokens=REFERENCE["max_new_tokens"]) for case in REFERENCE["chats"]}
    tool_case = REFERENCE["tool_chat"]
    requests[tool_case["text"]] = pb.ChatRequest(
        model=MODEL, messages=as_messages(tool_case["messages"]),
        tools=as_tools(tool_case["tools"]), max_tokens=len(tool_case["ids"]))
    with grpc.insecure_channel(qwen05_server[1],
                               options=channel_options(MAX_MESSAGE_BYTES)) as ch:
        stub = rpc.InferenceStub(ch)
        with ThreadPoolExecutor(len(requests)) as pool:
            futures = {text: pool.submit(lambda r: collect(stub.Chat(r, timeout=900)), request)
                       for text, request in requests.items()}
            return {text: f.result() for text, f in futures.items()}


@pytest.mark.parametrize("case", REFERENCE["chats"],
                         ids=lambda c: c["messages"][-1]["content"][:24])
def test_greedy_text_over_grpc_matches_transformers_on_the_same_gguf(replies, case):
    r = replies[case["text"]]
    assert r["admitted"].prompt_tokens == case["prompt_tokens"]
    assert r["content"] == case["text"]
    assert r["done"].usage.completion_tokens == len(case["ids"])


def test_tokenizer_gives_the_reference_ids(qwen05_dir):
    """As served (mlx-lm's tokenizer) and as written (tokenizer.json). Qwen's tokenizer composes
    Unicode (NFC) first; transformers' GGUF loader drops that step, so for the one string NFC
    changes the reference is its ids for the composed text (`nfc_ids`)."""
    from mlx_lm.tokenizer_utils import load as load_tokenizer
    from tokenizers import Tokenizer

    served = load_tokenizer(Path(qwen05_dir))
    written = Tokenizer.from_file(str(Path(qwen05_dir) / "tokenizer.json"))
    assert sum("nfc_ids" in case for case in REFERENCE["tokenizer"]) == 1
    mismatched = []
    for case in REFERENCE["tokenizer"]:
        want = case.get("nfc_ids", case["ids"])
        got = (served.encode(case["text"], add_special_tokens=False),
               written.encode(case["text"], add_special_tokens=False).ids)
        if got != (want, want):
            mismatched.append((case["text"], got, want))
        if "nfc_ids" not in case:  # and decoding gives the text back
            assert served.decode(case["ids"]) == case["text"]
    assert mismatched == []


def test_template_is_qwens_own_with_its_default_system_prompt_and_tool_format(qwen05_dir):
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    tokenizer = load_tokenizer(Path(qwen05_dir))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert tokenizer.has_tool_calling and tokenizer.tool_call_start == "<tool_call>"
    assert tokenizer.eos_token_ids == {151645}


def test_with_tools_in_the_template_the_reply_matches_the_reference(replies):
    """The template's tool section counts the same tokens, and the greedy reply is the same:
    a tool call comes back as tool_call events, text as text."""
    case = REFERENCE["tool_chat"]
    r = replies[case["text"]]
    assert r["admitted"].prompt_tokens == case["prompt_tokens"]
    if "<tool_call>" in case["text"]:
        expected = json.loads(case["text"].split("<tool_call>")[1].split("</tool_call>")[0])
        assert [(c.name, json.loads(c.arguments_json)) for c in r["tool_calls"]] == [
            (expected["name"], expected["arguments"])]
    else:
        assert r["content"] == case["text"] and not r["tool_calls"]


def test_required_tool_choice_gives_a_valid_call_and_a_tool_result_is_accepted(
        qwen05_server, stub_for):
    import jsonschema

    stub = stub_for(qwen05_server[1])
    ask = user("Run the tests in tests/ and tell me whether they pass.")
    r = collect(stub.Chat(pb.ChatRequest(
        model=MODEL, messages=[ask], tools=TOOLS, max_tokens=64,
        tool_choice=pb.ToolChoice(mode=pb.ToolChoice.REQUIRED)), timeout=600))
    assert len(r["tool_calls"]) >= 1 and r["done"].finish_reason == "tool_calls"
    schemas = {t.name: json.loads(t.parameters_json) for t in TOOLS}
    for call in r["tool_calls"]:
        jsonschema.validate(json.loads(call.arguments_json), schemas[call.name])
    call = r["tool_calls"][0]
    answer = collect(stub.Chat(pb.ChatRequest(
        model=MODEL, tools=TOOLS, max_tokens=48, messages=[
            ask,
            pb.Message(role="assistant", tool_calls=[call]),
            pb.Message(role="tool", tool_call_id=call.id, name=call.name,
                       text="12 passed, 1 failed: test_add (expected 3, got -1)"),
        ]), timeout=600))
    assert answer["done"].finish_reason in ("stop", "length")
    assert answer["content"].strip() and not answer["tool_calls"]


def test_footprint_from_headers_is_the_float32_size_the_engine_serves(qwen05_dir, qwen05_server,
                                                                      stub_for):
    from inference_node.footprint import estimate

    fp = estimate(qwen05_dir, 0, dequantize=True)
    assert fp.weights_bytes == 4 * 630_167_424  # every parameter as float32, untied head
    assert fp.kv_per_token == 2 * 24 * 2 * 64 * 4  # layers x kv heads x head dim, float32
    stub = stub_for(qwen05_server[1])
    collect(stub.Chat(pb.ChatRequest(model=MODEL, messages=[user("hi")], max_tokens=1),
                      timeout=600))
    (info,) = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    assert info.measured_bytes > 0
    assert abs(fp.weights_bytes - info.measured_bytes) <= 0.05 * info.measured_bytes


def test_plan_knows_the_installed_model_before_loading(qwen05_dir, tmp_path, capsys):
    from inference_node.plan import main as plan_main

    config = tmp_path / "inference-node.toml"
    config.write_text(f'[memory]\nbudget_gb = 4.0\n\n[[models]]\nname = "qwen2.5-coder-0.5b"\n'
                      f'path = "{qwen05_dir}"\ncontext = 8192\n')
    assert plan_main(["--config", str(config), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (row,) = doc["models"]
    assert row["weights_bytes"] == 4 * 630_167_424 and row["context"] == 8192
    assert doc["fits"] is True
    config.write_text(config.read_text().replace("budget_gb = 4.0", "budget_gb = 2.0"))
    assert plan_main(["--config", str(config)]) == 1
    assert "do NOT fit" in capsys.readouterr().out


def test_the_1_5b_installs_plans_and_writes_code(qwen15_dir, stub_for, tmp_path):
    from conftest import running_server

    from inference_node.footprint import estimate

    fp = estimate(qwen15_dir, 0, dequantize=True)
    assert fp.kv_per_token == 2 * 28 * 2 * 128 * 4
    assert fp.weights_bytes == 4 * 1_777_088_000  # every parameter as float32, untied head
    with running_server([{"name": "q15", "path": str(qwen15_dir)}], budget_gb=12.0) as (_, t):
        stub = stub_for(t)
        r = collect(stub.Chat(pb.ChatRequest(model="q15", max_tokens=48, messages=[
            user("Write a Python function is_even(n) that returns True for even n.")]),
            timeout=900))
        assert "def is_even" in r["content"]
        # Greedy and unconstrained, both models answer "use the tool" prompts with a JSON code
        # block rather than Qwen's <tool_call> tags (and transformers' 0.5B, on the fixture's
        # tool prompt, answers in prose), so the call is asked for: the grammar writes the tags
        # and mlx-lm's parser, inferred from the template, turns them into the event.
        r = collect(stub.Chat(pb.ChatRequest(
            model="q15", tools=TOOLS, max_tokens=64,
            tool_choice=pb.ToolChoice(mode=pb.ToolChoice.NAMED, name="read_file"),
            messages=[user("Use the read_file tool to read README.md.")]), timeout=900))
    assert [(c.name, json.loads(c.arguments_json)) for c in r["tool_calls"]] == [
        ("read_file", {"path": "README.md"})], r
    assert "<tool_call>" not in r["content"] and r["done"].finish_reason == "tool_calls"
