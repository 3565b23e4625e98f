"""Bad input at the inference node's edge: every field checked before anything is queued.

Each case the adversarial pass found (issue 18) is here: values that poisoned the server, the
wrong status codes (UNKNOWN, INTERNAL, metadata over gRPC's limit) and values that were
silently accepted. Each gets INVALID_ARGUMENT (or NOT_FOUND) naming the field, its value and
its range, with a machine-readable reason, and the server keeps serving.
"""

from __future__ import annotations

import math

import grpc
import pytest
from conftest import running_server

from inference_node.api import pb, reasons

DEEP = "[" * 100_000 + "]" * 100_000  # a recursion error in any recursive JSON reader


def user(text: str) -> pb.Message:
    return pb.Message(role="user", text=text)


def chat(**fields: object) -> pb.ChatRequest:
    return pb.ChatRequest(model=str(fields.pop("model", "hello")), messages=[user("hi")],
                          **fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server(chain_models):
    models = [{"name": name, "path": str(path)} for name, path in chain_models.items()]
    with running_server(models) as (srv, target):
        yield srv, target


@pytest.fixture
def stub(server, stub_for):
    return stub_for(server[1])


def refused(stub, request: pb.ChatRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Chat(request, timeout=60))
    return err.value


def still_serving(server, stub) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server[1]) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    events = list(stub.Chat(chat(sampling=pb.Sampling(temperature=0.7, seed=1), max_tokens=5),
                            timeout=60))
    assert events[-1].done.finish_reason in ("stop", "length")


SAMPLING_CASES = [
    ("temperature", math.nan, "from 0 (greedy) to 2"),
    ("temperature", math.inf, "from 0 (greedy) to 2"),
    ("temperature", -1.0, "from 0 (greedy) to 2"),
    ("temperature", 3.0, "from 0 (greedy) to 2"),
    ("top_p", -1.0, "from 0 to 1"),
    ("top_p", 2.0, "from 0 to 1"),
    ("top_p", math.nan, "from 0 to 1"),
    ("min_p", 5.0, "from 0 to 1"),
    ("min_p", -0.5, "from 0 to 1"),
    ("top_k", -5, "from 0 (off) to"),
    ("top_k", 2**31 - 1, "from 0 (off) to"),
    ("repetition_penalty", -1.0, ">= 0"),
    ("repetition_penalty", math.inf, ">= 0"),
]


@pytest.mark.parametrize(("name", "value", "range_words"), SAMPLING_CASES,
                         ids=[f"{n}={v}" for n, v, _ in SAMPLING_CASES])
def test_a_sampling_value_out_of_range_is_refused_naming_field_value_and_range(
        server, stub, name, value, range_words):
    err = refused(stub, chat(sampling=pb.Sampling(**{name: value})))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"sampling.{name} is " in err.details() and range_words in err.details()
    info = reasons.from_error(err)
    assert info is not None and info.reason == reasons.INVALID_FIELD
    assert info.domain == reasons.DOMAIN
    assert info.metadata[reasons.FIELD] == f"sampling.{name}"
    assert info.metadata[reasons.EXPECTED] and info.metadata[reasons.VALUE]
    still_serving(server, stub)


def test_top_k_must_be_below_the_models_vocabulary(stub, chain_models):
    import json

    vocab = json.loads((chain_models["hello"] / "config.json").read_text())["vocab_size"]
    err = refused(stub, chat(sampling=pb.Sampling(temperature=0.5, top_k=vocab)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{vocab}-token vocabulary" in err.details()
    events = list(stub.Chat(chat(sampling=pb.Sampling(temperature=0.5, top_k=vocab - 1),
                                 max_tokens=3), timeout=60))
    assert events[-1].HasField("done")


@pytest.mark.parametrize(("request_", "field", "words"), [
    (chat(tool_choice=pb.ToolChoice(mode=pb.ToolChoice.REQUIRED)), "tool_choice.mode",
     "AUTO or NONE when the request has no tools"),
    (chat(tool_choice=pb.ToolChoice(mode=99)), "tool_choice.mode", "one of AUTO (0)"),
    (chat(tools=[pb.Tool(name="t")], tool_choice=pb.ToolChoice(mode=pb.ToolChoice.NAMED,
                                                                name="nope")),
     "tool_choice.name", "one of the request's tools (t)"),
    (chat(tools=[pb.Tool(name="t")], tool_choice=pb.ToolChoice(name="t")), "tool_choice.name",
     "empty when the mode is AUTO"),
    (chat(tools=[pb.Tool(name="t")], tool_choice=pb.ToolChoice(mode=pb.ToolChoice.REQUIRED,
                                                                allowed=["nope"])),
     "tool_choice.allowed", "names among the request's tools (t)"),
    (chat(tools=[pb.Tool(name="t")], tool_choice=pb.ToolChoice(mode=pb.ToolChoice.REQUIRED,
                                                                allowed=["t", "t"])),
     "tool_choice.allowed", "each tool named once"),
    (chat(tools=[pb.Tool(name="t")], tool_choice=pb.ToolChoice(allowed=["t"])),
     "tool_choice.allowed", "empty when the mode is AUTO"),
    (chat(response_format=pb.ResponseFormat(type=7)), "response_format.type", "one of TEXT (0)"),
    (chat(response_format=pb.ResponseFormat(type=pb.ResponseFormat.JSON_SCHEMA)),
     "response_format.schema_json", "a JSON Schema object"),
    (chat(response_format=pb.ResponseFormat(schema_json='{"type": "object"}')),
     "response_format.schema_json", "empty when the type is TEXT"),
    (chat(tools=[pb.Tool(name="has space")]), "tools[0].name", "letters, digits"),
    (chat(tools=[pb.Tool(name="t"), pb.Tool(name="t")]), "tools[1].name", "unique"),
    (chat(request_id="x" * 500), "request_id", "printable ASCII"),
    (chat(sampling=pb.Sampling(stop=[""])), "sampling.stop[0]", "1 to 500 characters"),
    (chat(sampling=pb.Sampling(stop=["s"] * 17)), "sampling.stop", "at most 16"),
    (chat(max_tokens=0), "max_tokens", "a positive number"),
], ids=["required-without-tools", "mode-99", "named-unknown", "name-without-named",
        "allowed-unknown", "allowed-twice", "allowed-without-required", "format-type-7",
        "schema-missing", "schema-with-text", "tool-name", "tool-twice",
        "request-id", "empty-stop", "too-many-stops", "max-tokens-0"])
def test_a_request_field_that_was_silently_accepted_is_refused(server, stub, request_, field,
                                                                words):
    err = refused(stub, request_)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert words in err.details()
    info = reasons.from_error(err)
    assert info is not None and info.metadata[reasons.FIELD] == field
    still_serving(server, stub)


def nested_cases(deep: str) -> list[tuple[pb.ChatRequest, str]]:
    return [
        (chat(tools=[pb.Tool(name="t", parameters_json=deep)]), "tools[0].parameters_json"),
        (chat(response_format=pb.ResponseFormat(type=pb.ResponseFormat.JSON_SCHEMA,
                                                schema_json=deep)),
         "response_format.schema_json"),
        (pb.ChatRequest(model="hello", messages=[
            user("hi"), pb.Message(role="assistant", tool_calls=[
                pb.ToolCall(id="1", name="t", arguments_json='{"a": ' + deep + "}")])]),
         "messages[1].tool_calls[0].arguments_json"),
    ]


NESTED_IDS = ["tool-parameters", "response-format", "tool-call-arguments"]


@pytest.mark.parametrize(("request_", "field"), nested_cases(DEEP), ids=NESTED_IDS)
def test_json_nested_100000_deep_is_invalid_argument_not_a_recursion_error(server, stub,
                                                                           request_, field):
    err = refused(stub, request_)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.details() and "the limit is" in err.details()  # size or depth
    info = reasons.from_error(err)
    assert info is not None and info.reason == reasons.INVALID_FIELD
    assert info.metadata[reasons.FIELD] == field
    still_serving(server, stub)


@pytest.mark.parametrize(("request_", "field"),
                         nested_cases('{"a": ' + "[" * 1000 + "]" * 1000 + "}"), ids=NESTED_IDS)
def test_json_nested_past_the_depth_limit_is_refused_with_its_depth(stub, request_, field):
    err = refused(stub, request_)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{field} nests objects and arrays 10" in err.details()  # 1001, or 1002 wrapped
    assert "levels deep; the limit is" in err.details()


def test_a_schema_over_the_size_limit_is_refused_before_parsing(stub):
    schema = '{"type": "object", "description": "' + "x" * 200_000 + '"}'
    err = refused(stub, chat(tools=[pb.Tool(name="t", parameters_json=schema)]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "characters; the limit is 131072" in err.details()


def test_repetition_penalty_in_range_is_accepted(stub):
    events = list(stub.Chat(chat(sampling=pb.Sampling(repetition_penalty=1.1), max_tokens=3),
                            timeout=60))
    assert events[-1].HasField("done")


def test_a_1_mb_model_name_is_refused_with_a_short_answer(server, stub):
    err = refused(stub, chat(model="m" * (1 << 20)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata" not in err.details().lower()
    assert len(err.details()) < 1000
    trailer = sum(len(k) + len(v) for k, v in err.trailing_metadata() or ())
    assert trailer < 4000
    info = reasons.from_error(err)
    assert info is not None and info.metadata[reasons.FIELD] == "model"
    assert len(info.metadata[reasons.VALUE]) <= reasons.MAX_VALUE_CHARS
    still_serving(server, stub)


def test_an_unknown_model_name_is_echoed_truncated(stub):
    err = refused(stub, chat(model="m" * 250))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "m" * 100 not in err.details() and "this node serves: hello" in err.details()
    info = reasons.from_error(err)
    assert info is not None and info.reason == reasons.MODEL_NOT_FOUND


def test_invalid_utf8_is_invalid_argument_naming_the_field_not_internal(server, stub):
    good = chat().SerializeToString()
    bad = good.replace(b"hi", b"\xff\xfe")  # messages[0].text
    with grpc.insecure_channel(server[1]) as ch:
        call = ch.unary_stream("/inference.v1.Inference/Chat",
                               response_deserializer=pb.ChatEvent.FromString)
        with pytest.raises(grpc.RpcError) as err:
            list(call(bad, timeout=30))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "messages[0].text is not valid UTF-8" in err.value.details()
        info = reasons.from_error(err.value)
        assert info is not None and info.reason == reasons.MALFORMED_REQUEST
        assert info.metadata[reasons.FIELD] == "messages[0].text"
        with pytest.raises(grpc.RpcError) as err:
            list(call(b"\xff\xff\xff\xff", timeout=30))  # not a protobuf at all
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid inference.v1.ChatRequest" in err.value.details()
    still_serving(server, stub)


def test_context_overflow_has_its_own_reason_with_the_numbers(stub):
    err = refused(stub, chat(max_tokens=4000))  # the tiny model's context is 2048
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = reasons.from_error(err)
    assert info is not None and info.reason == reasons.CONTEXT_LENGTH_EXCEEDED
    prompt = info.number(reasons.PROMPT_TOKENS)
    assert prompt is not None and prompt > 0
    assert info.number(reasons.CONTEXT) == 2048
    assert info.number(reasons.MAX_TOKENS) == 4000
    assert info.number(reasons.MAX_TOKENS_ALLOWED) == 2048 - prompt
    assert info.metadata[reasons.FIELD] == "max_tokens"
    assert "maximum context length is 2048 tokens" in err.details()

    err = refused(stub, chat(max_tokens=2_000_000_000))  # absurd: still the context's refusal
    info = reasons.from_error(err)
    assert info is not None and info.reason == reasons.CONTEXT_LENGTH_EXCEEDED
    assert info.number(reasons.MAX_TOKENS) == 2_000_000_000

    long_prompt = pb.ChatRequest(model="hello", messages=[user("hello " * 3000)])
    err = refused(stub, long_prompt)
    info = reasons.from_error(err)
    assert info is not None and info.reason == reasons.CONTEXT_LENGTH_EXCEEDED
    assert info.metadata[reasons.FIELD] == "messages"
    assert (info.number(reasons.MAX_TOKENS_ALLOWED) or 0) <= 0
    assert reasons.MAX_TOKENS not in info.metadata  # the request did not set it


def test_an_unexpected_exception_is_internal_with_a_reason_and_the_server_keeps_serving(
        server, stub, monkeypatch):
    from inference_node import chat as chat_module

    def broken(*args: object, **kwargs: object) -> list[int]:
        raise KeyError("a bug")

    monkeypatch.setattr(chat_module, "build_prompt", broken)
    err = refused(stub, chat())
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "this is a bug" in err.details()
    info = reasons.from_error(err)
    assert info is not None and info.reason == reasons.INTERNAL_ERROR
    assert info.metadata[reasons.ERROR_TYPE] == "KeyError"
    monkeypatch.undo()
    still_serving(server, stub)
