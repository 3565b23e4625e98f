"""Bad input at the bridge: every bad field is a JSON 4xx naming it, nothing is a 500, and the
bridge and the node behind it keep answering. Raw HTTP (httpx) against a real node."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from conftest import running_server
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent_node.bridge import BridgeServer, create_app
from agent_node.config import AgentConfig

TOKEN = "input-token"
HI = [{"role": "user", "content": "hi"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
DEEP = 100_000


@pytest.fixture(scope="module")
def url(chain_models) -> Iterator[str]:
    models = [{"name": n, "path": str(chain_models[n])} for n in ("hello", "tool")]
    with running_server(models) as (_, target):
        cfg = AgentConfig()
        cfg.inference.target = target
        with BridgeServer(create_app(cfg, token=TOKEN)) as srv:
            yield srv.url


@pytest.fixture(scope="module")
def http(url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=60) as client:
        yield client


def post(http: httpx.Client, body: object | bytes) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post("/chat/completions", content=raw,
                     headers={"Content-Type": "application/json"})


def error_of(r: httpx.Response, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error"
    return err


def still_serves(http: httpx.Client) -> None:
    r = post(http, {"model": "hello", "messages": HI})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].split() == ["hello", "world"]


# The five bodies the adversarial pass found giving a plain-text 500, and their param.
@pytest.mark.parametrize("body, param", [
    ({"max_tokens": 1e10}, "max_tokens"),
    ({"seed": 2**70}, "seed"),
    ({"top_k": 2**40}, "top_k"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 5}]}]},
     "messages[0].content[0].image_url"),
    ({"tools": [{"type": "function", "function": "x"}]}, "tools[0].function"),
])
def test_values_that_gave_plain_text_500s_are_json_400s_naming_the_field(http, body, param):
    err = error_of(post(http, {"model": "hello", "messages": HI, **body}))
    assert err["param"] == param, err
    assert param.split("[")[0].split(".")[0] in err["message"]
    still_serves(http)


@pytest.mark.parametrize("body, param", [
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "assistant", "content": None,
                    "tool_calls": [{"id": "c", "function": {"name": 3}}]}]},
     "messages[0].tool_calls[0].function.name"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 2}, "top_p"),
    ({"min_p": 5}, "min_p"),
    ({"top_k": -5}, "top_k"),
    ({"repetition_penalty": -1}, "repetition_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": True}, "max_completion_tokens"),
    ({"seed": -1}, "seed"),
    ({"stop": 5}, "stop"),
    ({"stop": ["a", ""]}, "stop[1]"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"model": "m" * 1_000_000}, "model"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
     "tools[0].function.parameters"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "absent"}}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "allowed_tools": {
        "mode": "auto", "tools": [WEATHER]}}}, "tool_choice.allowed_tools.mode"),
    ({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "allowed_tools": {
        "tools": [{"type": "function", "function": {"name": "absent"}}]}}},
     "tool_choice.allowed_tools.tools[0]"),
    ({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "allowed_tools": {
        "tools": []}}}, "tool_choice.allowed_tools.tools"),
    ({"response_format": {"type": 7}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
])
def test_every_bad_field_is_a_400_whose_param_names_it(http, body, param):
    err = error_of(post(http, {"model": "hello", "messages": HI, **body}))
    assert err["param"] == param, err
    assert len(err["message"]) < 1000  # a megabyte model name is not echoed back


@pytest.mark.parametrize("raw", [b"not json", b"", b"{", b"[1, 2]", b"0", b'"text"',
                                 b"\xff\xfe\xfd", b'{"messages": "\xff"}'])
def test_a_body_that_is_not_a_json_object_says_so_without_a_param(http, raw):
    err = error_of(post(http, raw))
    assert err["param"] is None  # never "0", the position pydantic used to report
    assert "body" in err["message"]


def test_a_lone_surrogate_is_refused_naming_the_field(http):
    raw = b'{"model": "hello", "messages": [{"role": "user", "content": "\\ud800"}]}'
    err = error_of(post(http, raw))
    assert err["param"] == "messages[0].content" and "surrogate" in err["message"]


@pytest.mark.parametrize("where, param", [
    (lambda d: {"tools": [{"type": "function", "function": {"name": "f", "parameters": d}}]},
     "tools[0].function.parameters"),
    (lambda d: {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": "x", "schema": d}}},
     "response_format.json_schema.schema"),
    (lambda d: {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": d}}]}, *HI]},
     "messages[0].tool_calls[0].function.arguments"),
])
def test_json_nested_100000_deep_is_a_400_naming_the_field(http, where, param):
    marker = '"@DEEP@"'
    body = json.dumps({"model": "hello", "messages": HI, **where("@DEEP@")})
    deep = '{"a":' * DEEP + "1" + "}" * DEEP
    err = error_of(post(http, body.replace(marker, deep).encode()))
    assert err["param"] == param, err
    assert "nested more than" in err["message"]
    still_serves(http)


def test_a_40_mb_body_is_413_and_the_bridge_still_answers(http):
    big = {"model": "hello", "messages": [{"role": "user", "content": "x" * (40 * 2**20)}]}
    r = post(http, big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert "max_body_mb" in r.json()["error"]["message"]
    assert "retry-after" not in r.headers  # retrying the same body cannot help
    still_serves(http)


# ---------------------------------------------------------------------- fuzz

LEAF = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
        | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
        | st.just("\ud800"))
ANY = st.recursive(LEAF, lambda c: st.lists(c, max_size=3)
                   | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=8)
EDGE = st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, 2**70, 1e10, float("nan"), float("inf"),
                        -0.0, 0.5, True, "1", None, "", [], {}])
WRONG = ANY | EDGE


def with_one_wrong(valid: st.SearchStrategy[dict], keys: list[str]) -> st.SearchStrategy[dict]:
    """`valid`, or `valid` with one of `keys` set to something odd."""
    mutant = st.tuples(valid, st.sampled_from(keys), WRONG).map(lambda t: {**t[0], t[1]: t[2]})
    return st.one_of(valid, valid, mutant)


TEXT = st.text(max_size=20)
PART = st.sampled_from([{"type": "text", "text": "hi"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                        {"type": "image_url", "image_url": "data:,x"}])
MESSAGE = with_one_wrong(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "user", "tool"]),
     "content": TEXT | st.lists(PART, min_size=1, max_size=2)},
    optional={"name": st.just("get_weather"), "tool_call_id": st.just("call_1")}),
    ["role", "content", "name", "tool_call_id", "tool_calls"])
ASSISTANT = with_one_wrong(st.fixed_dictionaries(
    {"role": st.just("assistant"), "content": st.none() | TEXT,
     "tool_calls": st.lists(st.fixed_dictionaries(
         {"id": st.just("call_1"), "type": st.just("function"),
          "function": st.fixed_dictionaries({"name": st.just("get_weather"),
                                             "arguments": st.just('{"city": "Paris"}')})}),
         min_size=1, max_size=2)}), ["content", "tool_calls"])
TOOL = with_one_wrong(st.fixed_dictionaries(
    {"type": st.just("function"),
     "function": st.fixed_dictionaries({"name": st.sampled_from(["get_weather", "f"]),
                                        "parameters": st.just({"type": "object"})})}),
    ["type", "function"])
SAMPLING = {
    "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "top_k": st.integers(0, 50),
    "min_p": st.floats(0, 1), "repetition_penalty": st.floats(0.5, 2),
    "seed": st.integers(0, 2**64 - 1), "max_tokens": st.integers(1, 32),
    "max_completion_tokens": st.integers(1, 32),
    "stop": TEXT.filter(bool) | st.lists(TEXT.filter(bool), max_size=3),
}
BODY = with_one_wrong(st.fixed_dictionaries(
    {"messages": st.lists(MESSAGE, min_size=1, max_size=3).flatmap(
        lambda ms: st.just(ms) | ASSISTANT.map(lambda a: [*ms, a, HI[0]]))},
    optional={
        "model": st.sampled_from(["hello", "tool", "", "no-such-model"]),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        **SAMPLING,
        "tools": st.lists(TOOL, max_size=2),
        "tool_choice": st.sampled_from(["auto", "none"]),
        "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
        "n": st.just(1), "logprobs": st.just(False), "user": TEXT,
    }), ["messages", "model", "stream", "stream_options", *SAMPLING, "tools", "tool_choice",
         "response_format", "n", "logprobs"])


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.one_of(BODY, BODY, BODY, st.binary(max_size=40)))
def test_fuzzed_chat_bodies_get_a_json_4xx_or_a_reply_and_the_bridge_keeps_answering(http, body):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = post(http, raw)
    event(f"HTTP {r.status_code}")  # pytest --hypothesis-show-statistics shows the spread
    assert r.status_code < 500, f"{r.status_code} for {raw[:300]!r}: {r.text[:500]}"
    if r.status_code == 200:
        if r.headers["content-type"].startswith("text/event-stream"):
            events = [line for line in r.text.splitlines() if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]" or '"error"' in events[-1], r.text[-500:]
        else:
            assert r.json()["choices"][0]["message"]["role"] == "assistant"
    else:
        err = r.json()["error"]
        assert err["message"] and (err["param"] is None or isinstance(err["param"], str))
        assert err["param"] != "0"
    health = http.get(str(http.base_url).replace("/v1", "") + "health")
    assert health.status_code == 200, health.text
