"""The OpenAI-compatible bridge, driven by the official openai SDK, in front of a real node."""

from __future__ import annotations

import base64
import importlib.util
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import openai
import pytest
from conftest import running_server

from agent_node.bridge import BridgeServer, check_host, create_app
from agent_node.bridge.request import parse_chat_body
from agent_node.client import connect
from agent_node.config import AgentConfig
from inference_node.api import pb
from studio_common.net import free_port

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}
HI = [{"role": "user", "content": "hi"}]


TOKEN = "test-token"


def config(target: str, **inference: object) -> AgentConfig:
    cfg = AgentConfig()
    cfg.inference.target = target
    cfg.bridge.token = TOKEN
    for k, v in inference.items():
        setattr(cfg.inference, k, v)
    return cfg


@contextmanager
def bridge(cfg: AgentConfig, api_key: str = TOKEN) -> Iterator[openai.OpenAI]:
    with BridgeServer(create_app(cfg, token=cfg.bridge.token)) as srv:
        sdk = openai.OpenAI(base_url=srv.url, api_key=api_key, max_retries=0, timeout=60)
        try:
            yield sdk
        finally:
            sdk.close()


@pytest.fixture(scope="module")
def node(chain_models, tmp_path_factory):
    from tiny_models import build_chain_model

    long = build_chain_model(tmp_path_factory.mktemp("long") / "long",
                             ["a", "b", "c", "d", "e", "f", "a"], context=65536)
    models = [{"name": name, "path": str(path)} for name, path in chain_models.items()]
    plain = {"name": "one-a-pass", "path": str(chain_models["loop"]), "prompt_lookup": False}
    with running_server([*models, {"name": "long", "path": str(long)}, plain]) as (srv, target):
        yield srv, target


@pytest.fixture(scope="module")
def sdk(node) -> Iterator[openai.OpenAI]:
    with bridge(config(node[1])) as client:
        yield client


def test_non_streaming_reply_with_usage(sdk):
    r = sdk.chat.completions.create(model="hello", messages=HI)
    (choice,) = r.choices
    assert choice.message.content.split() == ["hello", "world"]
    assert choice.finish_reason == "stop" and r.model == "hello"
    assert r.usage.completion_tokens == 3 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_the_next_turn_says_how_much_of_its_prompt_the_node_s_cache_served(sdk):
    turn1 = [{"role": "user", "content": "hi, a first turn no other test sends"}]
    first = sdk.chat.completions.create(model="hello", messages=turn1)
    assert first.usage.prompt_tokens_details.cached_tokens < first.usage.prompt_tokens
    turn2 = [*turn1, first.choices[0].message.model_dump(exclude_none=True),
             {"role": "user", "content": "and once more"}]
    second = sdk.chat.completions.create(model="hello", messages=turn2, stream=True,
                                         stream_options={"include_usage": True})
    usage = list(second)[-1].usage
    assert usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
    assert usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens


def test_prompt_lookup_s_proposals_are_counted_as_openai_s_predicted_output_tokens(sdk):
    """The loop model repeats a-f: with prompt lookup (a coder model's default), the request's
    own tokens propose what comes next, and the usage says how many the model kept and how
    many it did not."""
    for model, kept in (("one-a-pass", False), ("loop", True)):
        r = sdk.chat.completions.create(model=model, messages=HI, max_tokens=40)
        details = r.usage.completion_tokens_details
        assert r.usage.completion_tokens == 40
        if kept:
            assert details.accepted_prediction_tokens > 20
            assert details.rejected_prediction_tokens >= 0
        else:
            assert details.accepted_prediction_tokens == details.rejected_prediction_tokens == 0


def test_streaming_reply_ends_with_usage_when_asked(sdk):
    chunks = list(sdk.chat.completions.create(
        model="hello", messages=HI, stream=True, stream_options={"include_usage": True},
        temperature=0.0, top_p=1.0, seed=1, max_completion_tokens=50))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == ["hello", "world"]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3


def test_tool_call_round_trips(sdk):
    ask = [{"role": "user", "content": "weather in Paris"}]
    first = sdk.chat.completions.create(model="tool", messages=ask, tools=[WEATHER])
    msg = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    (call,) = msg.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    follow_up = [*ask, msg.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    second = sdk.chat.completions.create(model="tool", messages=follow_up, tools=[WEATHER])
    assert second.usage.prompt_tokens > first.usage.prompt_tokens

    streamed = list(sdk.chat.completions.create(model="tool", messages=ask, tools=[WEATHER],
                                                stream=True))
    calls = [tc for c in streamed for tc in c.choices[0].delta.tool_calls or []]
    assert [(tc.index, tc.function.name) for tc in calls] == [(0, "get_weather")]
    assert streamed[-1].choices[0].finish_reason == "tool_calls"


def test_reasoning_arrives_as_reasoning_content_not_content(sdk):
    msg = sdk.chat.completions.create(model="think", messages=HI).choices[0].message
    assert msg.reasoning_content.split() == ["hmm", "let", "me", "think"]
    assert msg.content.split() == ["the", "answer", "is", "42"]

    chunks = list(sdk.chat.completions.create(model="think", messages=HI, stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    assert reasoning.split() == ["hmm", "let", "me", "think"]
    assert content.split() == ["the", "answer", "is", "42"] and "think" not in content


@pytest.mark.skipif(importlib.util.find_spec("inference_node.constrained") is None,
                    reason="constrained decoding (inference_node/constrained.py) has not landed")
def test_json_schema_response_format_reply_validates(smollm2_dir):
    import jsonschema

    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
              "required": ["city"], "additionalProperties": False}
    with running_server([{"name": "smollm2", "path": str(smollm2_dir)}]) as (_, target), \
            bridge(config(target)) as client:
        r = client.chat.completions.create(
            model="smollm2", max_tokens=40,
            messages=[{"role": "user", "content": "Which city is the capital of France?"}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": "city", "schema": schema}})
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_chat_completions_fields_map_to_the_wire():
    body = parse_chat_body(json.dumps(dict(
        model="m", messages=[{"role": "developer", "content": "be brief"}, *HI],
        response_format={"type": "json_object"}, max_tokens=7, max_completion_tokens=9,
        stop="END", temperature=0.5, seed=3, tool_choice="required", tools=[WEATHER],
        stream=True, stream_options={"include_usage": True})).encode())
    req = body.request
    assert req.response_format.type == pb.ResponseFormat.JSON_OBJECT
    assert req.max_tokens == 9 and list(req.sampling.stop) == ["END"]
    assert req.sampling.temperature == 0.5 and req.sampling.seed == 3
    assert req.messages[0].role == "system" and req.tool_choice.mode == pb.ToolChoice.REQUIRED
    assert req.tools[0].name == "get_weather" and body.stream and body.include_usage
    assert parse_chat_body(json.dumps({"messages": HI}).encode()).request.model == ""


def test_allowed_tools_narrow_the_call_and_keep_every_tool_in_the_prompt():
    other = {"type": "function", "function": {"name": "get_time", "parameters": {}}}
    body = parse_chat_body(json.dumps(dict(
        messages=HI, tools=[WEATHER, other],
        tool_choice={"type": "allowed_tools", "allowed_tools": {
            "mode": "required", "tools": [{"type": "function",
                                           "function": {"name": "get_time"}}]}})).encode())
    req = body.request
    assert req.tool_choice.mode == pb.ToolChoice.REQUIRED
    assert list(req.tool_choice.allowed) == ["get_time"]
    assert [t.name for t in req.tools] == ["get_weather", "get_time"]


def test_models_and_health(sdk, node):
    names = {m.id for m in sdk.models.list()}
    assert {"hello", "tool", "think", "loop"} <= names
    url = str(sdk.base_url).replace("/v1/", "/health")
    with urllib.request.urlopen(url, timeout=10) as health:
        assert health.status == 200 and json.load(health)["inference"] == "SERVING"


def test_requests_use_the_clients_fallback_chain(node):
    # The chain from agent-node.toml: "ghost" is not served, so "hello" answers for it.
    with bridge(config(node[1], coder=["ghost", "hello"])) as client:
        for asked in ("", "ghost"):  # no model, or a model of the chain: the chain from there
            r = client.chat.completions.create(model=asked, messages=HI)
            assert r.model == "hello" and r.choices[0].message.content == "hello world"
        r = client.chat.completions.create(model="think", messages=HI)  # not in the chain
        assert r.model == "think"
        with pytest.raises(openai.NotFoundError):  # outside the chain: that model or nothing
            client.chat.completions.create(model="no-such-model", messages=HI)


def test_unknown_model_is_not_found(sdk):
    with pytest.raises(openai.NotFoundError) as e:
        sdk.chat.completions.create(model="no-such-model", messages=HI)
    err = e.value.body
    assert err["param"] == "model" and "no-such-model" in err["message"]
    assert "hello" in err["message"]  # says what is served


def test_bad_input_is_400_with_the_reason(sdk):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
    image_msg = [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]}]
    with pytest.raises(openai.BadRequestError) as e:
        sdk.chat.completions.create(model="hello", messages=image_msg)
    assert "text model" in e.value.body["message"]
    remote = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]
    with pytest.raises(openai.BadRequestError) as e:
        sdk.chat.completions.create(model="hello", messages=remote)
    assert "data URL" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        sdk.chat.completions.create(model="hello", messages=HI, temperature=5)
    assert e.value.body["param"] == "temperature"


def test_admission_refusal_is_503_with_retry_after(chain_models):
    # The memory budget, not the caller's request rate, is what ran out: 503 + Retry-After.
    # (A full admission queue is the caller's rate: 429.)
    models = [{"name": "hello", "path": str(chain_models["hello"])}]
    with running_server(models, budget_gb=1e-5) as (_, target), \
            bridge(config(target)) as client:
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model="hello", messages=HI)
    assert e.value.status_code == 503 and int(e.value.response.headers["retry-after"]) > 0
    assert "budget" in e.value.body["message"]
    assert e.value.body["code"] == "model_would_not_fit"  # the node's reason, lower-cased


def test_unreachable_node_is_503_not_a_hang():
    dead = f"127.0.0.1:{free_port()}"
    with bridge(config(dead, connect_timeout_s=0.5)) as client:
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="hello", messages=HI)
    assert e.value.status_code == 503 and "retry-after" in e.value.response.headers
    assert dead in e.value.body["message"] and "inference-node serve" in e.value.body["message"]


def test_client_disconnect_mid_stream_frees_the_server(sdk, node):
    server = node[0]
    stream = sdk.chat.completions.create(model="loop", messages=HI, stream=True)
    for i, _ in enumerate(stream):
        if i == 5:
            break
    assert server.engine.loaded["loop"].decoding  # still generating: the reply never ends
    stream.close()
    deadline = time.monotonic() + 10
    while server.engine.loaded["loop"].decoding and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not server.engine.loaded["loop"].decoding
    r = sdk.chat.completions.create(model="loop", messages=HI, max_tokens=4)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4


def test_a_client_that_gives_up_on_a_non_streaming_reply_stops_the_generation(sdk, node):
    server, target = node
    asked = 60_000  # minutes of generation if nothing stopped it
    failed: list[BaseException] = []

    def impatient() -> None:
        try:
            sdk.with_options(timeout=3).chat.completions.create(
                model="long", messages=HI, max_tokens=asked)
        except BaseException as e:  # noqa: BLE001 - the timeout is expected; checked below
            failed.append(e)

    caller = threading.Thread(target=impatient)
    caller.start()
    with connect(config(target)) as grpc_client:
        deadline = time.monotonic() + 30
        while not server.engine.loaded.get("long") or not server.engine.loaded["long"].decoding:
            assert time.monotonic() < deadline, "the request never started generating"
            time.sleep(0.01)
        (job,) = server.engine.loaded["long"].decoding
        assert grpc_client.memory().reserved_bytes > 0
        caller.join(60)
        assert failed and isinstance(failed[0], openai.APITimeoutError)
        tokens_when_it_gave_up = job.completion_tokens
        deadline = time.monotonic() + 30
        while server.engine.loaded["long"].decoding:
            assert time.monotonic() < deadline, f"still generating: {job.completion_tokens}"
            time.sleep(0.01)
        assert job.cancelled.is_set()
        # The node stopped within a few steps of the disconnect, nowhere near max_tokens.
        assert job.completion_tokens - tokens_when_it_gave_up < 200, job.completion_tokens
        assert job.completion_tokens < asked
        stopped_at = job.completion_tokens
        time.sleep(0.5)
        assert job.completion_tokens == stopped_at
        assert grpc_client.memory().reserved_bytes == 0  # its reservation went back


def test_models_retrieve_answers_and_created_stays_put(sdk):
    first = {m.id: m.created for m in sdk.models.list()}
    sdk.chat.completions.create(model="hello", messages=HI)  # moves the node's last-used time
    time.sleep(1.1)
    assert {m.id: m.created for m in sdk.models.list()} == first
    m = sdk.models.retrieve("hello")
    assert (m.id, m.created, m.owned_by) == ("hello", first["hello"], "studio-coder")
    with pytest.raises(openai.NotFoundError) as e:
        sdk.models.retrieve("no-such-model")
    err = e.value.body
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "hello" in err["message"]


def test_token_is_required_when_configured(node):
    cfg = config(node[1])
    cfg.bridge.token = "s3cret-token"
    with bridge(cfg, api_key="wrong") as client:
        with pytest.raises(openai.AuthenticationError) as e:
            client.chat.completions.create(model="hello", messages=HI)
        assert "[bridge] token" in e.value.body["message"]
        authed = client.with_options(api_key="s3cret-token")
        assert authed.chat.completions.create(model="hello", messages=HI).choices[0].message.content


def test_only_loopback_unless_allowed():
    check_host("127.0.0.1", False)
    check_host("::1", False)
    with pytest.raises(ValueError, match="--allow-remote"):
        check_host("0.0.0.0", False)
    check_host("0.0.0.0", True)
