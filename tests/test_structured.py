"""Structured output over gRPC: forced tool calls and JSON replies, on SmolLM2.

The grammar module is tested in process (tests/test_constrained.py, 20 of 20); these check the
server wires it: the request's tools and schema reach the constraint, the reply comes back as
`tool_call` events or valid JSON, bad schemas are INVALID_ARGUMENT, and constrained streams are
cancelled and admitted like any other.
"""

from __future__ import annotations

import json
import time

import grpc
import jsonschema
import pytest
from test_server import collect, user

from inference_node.api import pb

WRITE_FILE = {
    "type": "object",
    "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
    "required": ["path", "content"],
}
TOOLS = [
    pb.Tool(name="write_file", description="Write a file", parameters_json=json.dumps(WRITE_FILE)),
    pb.Tool(name="run_tests", description="Run the test suite",
            parameters_json=json.dumps({"type": "object", "properties": {}})),
]
VERDICT = {
    "type": "object",
    "properties": {"pass": {"type": "boolean"}, "reason": {"type": "string", "maxLength": 80}},
    "required": ["pass", "reason"],
}


@pytest.fixture
def stub(smol_server, stub_for):
    return stub_for(smol_server[1])


@pytest.mark.parametrize("prompt", [
    "Create hello.py that prints hello.",
    "Save the text 'done' into notes.txt.",
    "Run the tests.",
])
def test_required_tool_choice_yields_a_valid_tool_call(stub, prompt):
    r = collect(stub.Chat(pb.ChatRequest(
        model="smollm2", messages=[user(prompt)], tools=TOOLS, max_tokens=60,
        tool_choice=pb.ToolChoice(mode=pb.ToolChoice.REQUIRED),
    ), timeout=300))
    assert len(r["tool_calls"]) == 1, r
    call = r["tool_calls"][0]
    schemas = {"write_file": WRITE_FILE, "run_tests": {"type": "object"}}
    jsonschema.validate(json.loads(call.arguments_json), schemas[call.name])
    assert r["done"].finish_reason == "tool_calls"
    assert r["content"] == ""


def test_named_tool_choice_forces_that_tool(stub):
    r = collect(stub.Chat(pb.ChatRequest(
        model="smollm2", messages=[user("Hello there!")], tools=TOOLS, max_tokens=60,
        tool_choice=pb.ToolChoice(mode=pb.ToolChoice.NAMED, name="run_tests"),
    ), timeout=300))
    assert [c.name for c in r["tool_calls"]] == ["run_tests"]


def test_allowed_tools_narrow_a_required_call_to_those_tools(stub):
    # Asked to write a file, the call may only be run_tests; both tools stay in the prompt.
    r = collect(stub.Chat(pb.ChatRequest(
        model="smollm2", messages=[user("Create hello.py that prints hello.")], tools=TOOLS,
        max_tokens=60,
        tool_choice=pb.ToolChoice(mode=pb.ToolChoice.REQUIRED, allowed=["run_tests"]),
    ), timeout=300))
    assert [c.name for c in r["tool_calls"]] == ["run_tests"], r


def test_response_format_reply_validates(stub):
    r = collect(stub.Chat(pb.ChatRequest(
        model="smollm2", messages=[user("Is 2 + 2 = 4? Answer as JSON.")], max_tokens=60,
        response_format=pb.ResponseFormat(type=pb.ResponseFormat.JSON_SCHEMA,
                                          schema_json=json.dumps(VERDICT)),
    ), timeout=300))
    jsonschema.validate(json.loads(r["content"]), VERDICT)


def test_auto_still_answers_in_plain_text(stub):
    r = collect(stub.Chat(pb.ChatRequest(
        model="smollm2", messages=[user("Say hello.")], tools=TOOLS, max_tokens=12,
    ), timeout=300))
    assert r["content"].strip()
    assert not r["tool_calls"]


@pytest.mark.parametrize(("schema", "words"), [
    ('{"type": "object", "properties": {"x": {"type": "strng"}}}', "strng"),
    ('{"type": "object", "minProperties": "two"}', "two"),
])
def test_bad_schemas_are_refused_with_the_libraries_reason(stub, schema, words):
    with pytest.raises(grpc.RpcError) as err:
        collect(stub.Chat(pb.ChatRequest(
            model="smollm2", messages=[user("x")], max_tokens=8,
            response_format=pb.ResponseFormat(type=pb.ResponseFormat.JSON_SCHEMA,
                                              schema_json=schema),
        ), timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.value.details()


def test_a_constrained_stream_is_admitted_and_cancelled_like_any_other(smol_server, stub):
    srv = smol_server[0]
    call = stub.Chat(pb.ChatRequest(
        model="smollm2", messages=[user("Write a long story as JSON.")], max_tokens=400,
        response_format=pb.ResponseFormat(type=pb.ResponseFormat.JSON_OBJECT),
    ), timeout=300)
    first = next(call)
    assert first.WhichOneof("event") == "admitted" and first.admitted.reserved_bytes > 0
    reserved = srv.admission.snapshot()["reserved_bytes"]
    assert reserved >= first.admitted.reserved_bytes
    for ev in call:
        if ev.WhichOneof("event") == "delta":
            call.cancel()
            break
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (srv.engine.loaded["smollm2"].decoding
                                           or srv.admission.snapshot()["reserved_bytes"]):
        time.sleep(0.05)
    assert not srv.engine.loaded["smollm2"].decoding
    assert srv.admission.snapshot()["reserved_bytes"] == 0
