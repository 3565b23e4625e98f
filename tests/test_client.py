"""agent_node.client against a real inference server (tiny real models), direct mode."""

from __future__ import annotations

import json

import grpc
import pytest
from conftest import running_server

from agent_node import status
from agent_node.client import Client, collect_reply, connect, to_pb_message
from agent_node.config import AgentConfig
from agent_node.exceptions import (
    BadRequest,
    ContextLengthExceeded,
    InferenceError,
    InferenceUnavailable,
    ModelBusy,
    ModelLoadFailed,
    ModelNotFound,
    QueueFull,
    WouldNotFit,
)
from inference_node.api import pb, reasons
from studio_common.net import free_port

WEATHER = {
    "name": "get_weather",
    "description": "weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]},
}


@pytest.fixture(scope="module")
def server(chain_models):
    models = [{"name": name, "path": str(path)} for name, path in chain_models.items()]
    with running_server(models) as (srv, target):
        yield target


def config(target: str, coder: list[str] | None = None, **inference: object) -> AgentConfig:
    cfg = AgentConfig()
    cfg.inference.target = target
    cfg.inference.coder = coder if coder is not None else ["hello"]
    for k, v in inference.items():
        setattr(cfg.inference, k, v)
    return cfg


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def test_chat_collects_content_usage_and_the_model(server):
    with connect(config(server)) as client:
        reply = client.model().chat([user("hi")])
    assert reply.text.split() == ["hello", "world"]
    assert reply.model == "hello" and reply.finish_reason == "stop"
    assert reply.usage.completion_tokens == 3 and reply.usage.prompt_tokens > 0


def test_a_calls_sampling_reaches_the_server(server):
    with connect(config(server)) as client:
        reply = client.model().chat([user("hi")], sampling={"temperature": 0.7, "seed": 3})
        assert reply.text.split() == ["hello", "world"]
        with pytest.raises(BadRequest, match="temperature"):  # refused there, so it got there
            client.model().chat([user("hi")], sampling={"temperature": -1.0})


def test_a_repeated_prompt_reports_the_tokens_its_cache_served(server):
    with connect(config(server)) as client:
        first = client.model().chat([user("the same question, asked twice")])
        second = client.model().chat([user("the same question, asked twice")])
    assert first.usage.cached_prompt_tokens < first.usage.prompt_tokens
    assert second.usage.cached_prompt_tokens >= first.usage.prompt_tokens - 1 > 0


def test_reasoning_is_kept_apart_from_content(server):
    with connect(config(server, ["think"])) as client:
        reply = client.model().chat([user("hi")])
    assert reply.reasoning.split() == ["hmm", "let", "me", "think"]
    assert reply.text.split() == ["the", "answer", "is", "42"]


def test_tool_calls_come_back_as_parsed_arguments_and_round_trip(server):
    with connect(config(server, ["tool"])) as client:
        coder = client.model()
        first = coder.chat([user("weather in Paris")], tools=[WEATHER])
        assert first.finish_reason == "tool_calls"
        (call,) = first.tool_calls
        assert call.name == "get_weather" and call.arguments == {"city": "Paris"}
        follow_up = [
            user("weather in Paris"),
            {"role": "assistant", "content": "",
             "tool_calls": [{"id": call.id, "name": call.name, "arguments": call.arguments}]},
            {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": "sunny"},
        ]
        second = coder.chat(follow_up, tools=[WEATHER])
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


def test_stream_yields_admitted_deltas_and_done(server):
    with connect(config(server)) as client:
        kinds = [ev.WhichOneof("event") for ev in client.model().stream([user("hi")])]
    assert kinds[0] == "admitted" and kinds[-1] == "done" and "delta" in kinds


def test_dict_messages_translate_to_the_wire_shape():
    m = to_pb_message({"role": "assistant", "content": [{"type": "text", "text": "a"}],
                       "tool_calls": [{"id": "c1", "type": "function",
                                       "function": {"name": "f", "arguments": "{\"x\": 1}"}}]})
    assert m.text == "a" and m.tool_calls[0].name == "f"
    assert json.loads(m.tool_calls[0].arguments_json) == {"x": 1}
    events = [pb.ChatEvent(delta=pb.Delta(kind=pb.Delta.REASONING, text="r")),
              pb.ChatEvent(delta=pb.Delta(text="c")),
              pb.ChatEvent(done=pb.Done(finish_reason="length", cut_off_while_reasoning=True))]
    reply = collect_reply(iter(events))
    assert (reply.reasoning, reply.text, reply.cut_off_while_reasoning) == ("r", "c", True)


def test_fallback_chain_uses_the_second_model_when_the_first_is_not_served(server):
    with connect(config(server, ["no-such-model", "hello"])) as client:
        coder = client.model()
        reply = coder.chat([user("hi")])
        assert reply.model == "hello" and coder.chosen == "hello"
        (rec,) = coder.fallback_log
        assert rec.skipped == "no-such-model" and rec.used == "hello"
        assert "not in the catalog" in rec.reason
        assert "no-such-model skipped" in coder.why
        assert coder.record()["fallbacks"][0]["skipped"] == "no-such-model"


def test_fallback_chain_also_falls_back_on_not_found_from_chat(server):
    with connect(config(server, ["ghost", "hello"])) as client:
        coder = client.model()
        client._catalog = []  # a stale catalog: the server's NOT_FOUND must drive the fallback
        coder._candidates = lambda: ["ghost", "hello"]  # type: ignore[method-assign]
        assert coder.chat([user("hi")]).model == "hello"
        assert coder.fallback_log[0].code == "NOT_FOUND"


def test_a_chain_where_nothing_serves_says_what_to_fix(server):
    with connect(config(server, ["ghost"])) as client, pytest.raises(ModelNotFound) as e:
        client.model().chat([user("hi")])
    assert "ghost" in str(e.value) and "[inference] coder" in str(e.value)


def test_bad_request_is_mapped_once_with_the_servers_words(server):
    with connect(config(server)) as client, pytest.raises(BadRequest) as e:
        client.model().chat([])
    assert e.value.code == "INVALID_ARGUMENT"


def test_describer_is_none_without_a_vision_model(server):
    with connect(config(server)) as client:
        assert client.describer() is None
        client.cfg.inference.vision = ["not-served"]
        assert client.describer() is None


def test_health_models_and_memory(server):
    with connect(config(server)) as client:
        assert client.health() == "SERVING"
        names = {m.name for m in client.list_models()}
        assert {"hello", "tool"} <= names
        assert client.memory().budget_bytes > 0


def dead_target() -> str:
    return f"127.0.0.1:{free_port()}"


def test_unreachable_target_is_inference_unavailable_not_a_hang():
    cfg = config(dead_target(), call_timeout_s=1.0, connect_timeout_s=1.0)
    with Client(cfg) as client, pytest.raises(InferenceUnavailable) as e:
        client.list_models()
    assert cfg.inference.target in str(e.value) and "inference-node serve" in str(e.value)


def write_config(tmp_path, target: str) -> str:
    path = tmp_path / "agent-node.toml"
    path.write_text(f'[inference]\ntarget = "{target}"\ncoder = ["hello"]\n'
                    "connect_timeout_s = 1.0\ncall_timeout_s = 2.0\n")
    return str(path)


def test_status_json_reports_health_models_and_memory(server, tmp_path, capsys):
    assert status.main(["--json", "--config", write_config(tmp_path, server)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["health"] == "SERVING" and out["tunnel"] is None
    assert "hello" in {m["name"] for m in out["models"]}
    assert out["memory"]["budget_bytes"] > 0


def test_status_exits_3_and_says_what_to_check_when_unreachable(tmp_path, capsys):
    target = dead_target()
    assert status.main(["--config", write_config(tmp_path, target)]) == 3
    captured = capsys.readouterr()
    assert "unreachable" in captured.err and target in captured.err


def rpc_error(code: grpc.StatusCode, message: str, reason: str = "",
              **metadata: str) -> grpc.RpcError:
    """A gRPC error as the server sends it: code, message and (with a reason) ErrorInfo."""
    trailers = ()
    if reason:
        status_ = reasons.to_status(code, message, reasons.ErrorDetail(reason, metadata=metadata))
        trailers = status_.trailing_metadata

    class Error(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return code

        def details(self) -> str:
            return message

        def trailing_metadata(self) -> tuple:
            return trailers

    return Error()


@pytest.mark.parametrize(("code", "message", "reason", "expected"), [
    # the old map read "queue" in the message; the reason decides now, whatever the words
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "the queue of loads is long", reasons.MODEL_WOULD_NOT_FIT,
     WouldNotFit),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "no room", reasons.QUEUE_FULL, QueueFull),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "32 streams are open", reasons.TOO_MANY_STREAMS,
     QueueFull),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "KV", reasons.REQUEST_WOULD_NOT_FIT, WouldNotFit),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max", "", InferenceError),
    (grpc.StatusCode.INVALID_ARGUMENT, "too long", reasons.CONTEXT_LENGTH_EXCEEDED,
     ContextLengthExceeded),
    (grpc.StatusCode.INVALID_ARGUMENT, "bad", reasons.INVALID_FIELD, BadRequest),
    (grpc.StatusCode.FAILED_PRECONDITION, "busy", reasons.MODEL_BUSY, ModelBusy),
    (grpc.StatusCode.FAILED_PRECONDITION, "corrupt folder", reasons.MODEL_LOAD_FAILED,
     ModelLoadFailed),
    (grpc.StatusCode.UNAVAILABLE, "under the floor", reasons.MEMORY_FLOOR, InferenceUnavailable),
])
def test_errors_are_mapped_from_code_and_reason_never_from_message_text(code, message, reason,
                                                                        expected):
    from agent_node.client import map_grpc_error

    err = map_grpc_error(rpc_error(code, message, reason, model="m"), during="Chat")
    assert type(err) is expected
    assert err.reason == reason and err.detail == message and err.code == code.name
    if reason:
        assert err.metadata == {"model": "m"}


def test_a_floor_refusal_says_the_node_answered_not_that_it_was_unreachable():
    from agent_node.client import map_grpc_error

    err = map_grpc_error(rpc_error(grpc.StatusCode.UNAVAILABLE, "system has 0.5 GiB available",
                                   reasons.MEMORY_FLOOR), target="127.0.0.1:1", during="Chat")
    assert "refused: system has 0.5 GiB available" in str(err)
    assert "could not reach" not in str(err)


def test_context_overflow_reaches_the_caller_with_its_numbers(server):
    with connect(config(server)) as client, pytest.raises(ContextLengthExceeded) as e:
        client.model().chat([{"role": "user", "content": "hi"}], max_tokens=4000)
    err = e.value
    assert err.reason == reasons.CONTEXT_LENGTH_EXCEEDED and err.code == "INVALID_ARGUMENT"
    assert err.metadata[reasons.CONTEXT] == "2048" and err.metadata[reasons.MAX_TOKENS] == "4000"
    assert int(err.metadata[reasons.MAX_TOKENS_ALLOWED]) == 2048 - int(
        err.metadata[reasons.PROMPT_TOKENS])
    assert "maximum context length is 2048 tokens" in err.detail


def test_status_text_gives_weights_and_overhead_in_gib(server, tmp_path, capsys):
    assert status.main(["--config", write_config(tmp_path, server)]) == 0
    out = capsys.readouterr().out
    assert "weights " in out and "+ overhead 64.0 MiB" in out
    assert " of 7.5 GiB committed" in out and "streams 0/32" in out  # 8 less the prompt cache
    assert " GB" not in out
