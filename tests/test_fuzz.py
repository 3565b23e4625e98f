"""A bounded fuzz of Chat and Describe (hypothesis): every example gets a proper status.

Proper: the stream ends in `done`, or the call fails with a status a caller can act on
(INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, DEADLINE_EXCEEDED) that
carries its reason as ErrorInfo, with the code that reason is sent with. Never INTERNAL or
UNKNOWN, never a missing reason; and the server answers health after every example.

The examples are derandomized, so a run is repeatable; a valid request is read for at most a
few events and then cancelled, so no example waits on a long generation.
"""

from __future__ import annotations

import io
import json
import math

import grpc
import pytest
from conftest import running_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from images import png_declaring

from inference_node.api import pb, reasons

PROPER = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
          grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION,
          grpc.StatusCode.DEADLINE_EXCEEDED}
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])
INT32 = st.integers(-(2**31), 2**31 - 1)
FLOAT32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
MAX_EVENTS = 12  # then the call is cancelled: the status was proper so far


def mostly(valid: st.SearchStrategy, hostile: st.SearchStrategy) -> st.SearchStrategy:
    """Three times in four a valid value, so examples get past the first check."""
    return st.one_of(valid, valid, valid, hostile)


@pytest.fixture(scope="module")
def server(chain_models, tmp_path_factory):
    from tiny_vlm import build_tiny_vlm

    root = tmp_path_factory.mktemp("fuzz-models")
    models = [{"name": "hello", "path": str(chain_models["hello"])},
              {"name": "tool", "path": str(chain_models["tool"])},
              {"name": "eyes", "path": str(build_tiny_vlm(root / "eyes")), "role": "vision"}]
    with running_server(models, queue_timeout_s=20.0) as (srv, target):
        yield srv, target


@pytest.fixture(scope="module")
def channel(server):
    from studio_common.channel import MAX_MESSAGE_BYTES, channel_options

    with grpc.insecure_channel(server[1], options=channel_options(MAX_MESSAGE_BYTES)) as ch:
        yield ch


# ---------------------------------------------------------------- strategies
# Each example is a valid request with 0 to 3 hostile changes, so examples reach every check
# (and generation itself), not only the first check a random request fails.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=12)
hostile_json = st.one_of(json_values.map(json.dumps), st.text(max_size=30),
                         st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
                         st.integers(1, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n))
SCHEMA = '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}'
hostile_name = st.one_of(st.sampled_from(["", "a b", "x" * 80, "ünï"]), st.text(max_size=12))
hostile_float = st.one_of(FLOAT32, st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 5.0,
                                                    1e30]))
hostile_int = st.one_of(INT32, st.sampled_from([-5, -1, 2**31 - 1, -(2**31)]))
NUMBER_FIELDS = ("temperature", "top_p", "min_p", "repetition_penalty")


@st.composite
def valid_sampling(draw: st.DrawFn, *, stops: bool) -> pb.Sampling:
    s = pb.Sampling()
    if draw(st.booleans()):
        s.temperature = draw(st.floats(0, 2, width=32))
    for field in ("top_p", "min_p"):
        if draw(st.booleans()):
            setattr(s, field, draw(st.floats(0, 1, width=32)))
    if draw(st.booleans()):
        s.repetition_penalty = draw(st.floats(0, 3, width=32))
    if draw(st.booleans()):
        s.top_k = draw(st.integers(0, 30))
    if draw(st.booleans()):
        s.seed = draw(st.integers(0, 2**64 - 1))
    if stops and draw(st.booleans()):
        s.stop.extend(draw(st.lists(st.text(min_size=1, max_size=5), max_size=3)))
    return s


def spoil_sampling(draw: st.DrawFn, s: pb.Sampling) -> None:
    kind = draw(st.sampled_from(["number", "top_k", "stop"]))
    if kind == "number":
        setattr(s, draw(st.sampled_from(NUMBER_FIELDS)), draw(hostile_float))
    elif kind == "top_k":
        s.top_k = draw(hostile_int)
    else:
        s.stop.extend(draw(st.lists(st.text(max_size=600), max_size=18)))


@st.composite
def chat_requests(draw: st.DrawFn) -> pb.ChatRequest:
    r = pb.ChatRequest(model=draw(st.sampled_from(["hello", "tool", ""])),
                       request_id=draw(st.sampled_from(["", "req-1", "a" * 128])))
    names = draw(st.lists(st.sampled_from(["get_weather", "lookup", "t"]), max_size=2,
                          unique=True))
    for name in names:
        r.tools.add(name=name, description=draw(st.text(max_size=20)), parameters_json=SCHEMA)
    r.messages.add(role="user", text=draw(st.text(max_size=60)))
    if draw(st.booleans()):
        r.messages.add(role="assistant", text=draw(st.text(max_size=20))).tool_calls.add(
            id="c1", name="get_weather", arguments_json='{"city": "Paris"}')
        r.messages.add(role="tool", text="sunny", tool_call_id="c1", name="get_weather")
    modes = [0, 1] + ([2, 3] if names else [])
    r.tool_choice.mode = draw(st.sampled_from(modes))
    if r.tool_choice.mode == pb.ToolChoice.NAMED:
        r.tool_choice.name = draw(st.sampled_from(names))
    r.response_format.type = draw(st.sampled_from([0, 0, 1, 2]))
    if r.response_format.type == pb.ResponseFormat.JSON_SCHEMA:
        r.response_format.schema_json = SCHEMA
    r.sampling.CopyFrom(draw(valid_sampling(stops=True)))
    if draw(st.booleans()):
        r.max_tokens = draw(st.integers(1, 20))
    for change in draw(st.lists(st.sampled_from(CHAT_CHANGES), max_size=3)):
        change(draw, r)
    return r


CHAT_CHANGES = [
    lambda d, r: setattr(r, "model", d(st.sampled_from(["eyes", "nope", "x" * 300]))),
    lambda d, r: setattr(r, "request_id", d(st.text(max_size=140))),
    lambda d, r: r.ClearField("messages"),
    lambda d, r: r.messages.add(role=d(st.text(max_size=8)), text="x"),
    lambda d, r: r.messages.add(role="user", text="see").images.add(
        data=d(st.binary(max_size=20))),
    lambda d, r: r.messages.add(role="assistant").tool_calls.add(
        name=d(hostile_name), arguments_json=d(hostile_json)),
    lambda d, r: r.tools.add(name=d(hostile_name), parameters_json=d(hostile_json)),
    lambda d, r: r.tools.add(name="t", parameters_json=SCHEMA),  # maybe a duplicate
    lambda d, r: setattr(r.tool_choice, "mode", d(hostile_int)),
    lambda d, r: setattr(r.tool_choice, "name", d(hostile_name)),
    lambda d, r: setattr(r.response_format, "type", d(hostile_int)),
    lambda d, r: setattr(r.response_format, "schema_json", d(hostile_json)),
    lambda d, r: setattr(r.response_format, "name", d(st.text(max_size=100))),
    lambda d, r: spoil_sampling(d, r.sampling),
    lambda d, r: setattr(r, "max_tokens", d(hostile_int)),
]


BOMBS = [png_declaring(13000, 13000), png_declaring(20000, 1),
         png_declaring(60_000, 60_000), png_declaring(8000, 6000, mode="RGB")]


def real_image(draw: st.DrawFn) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    mode = draw(st.sampled_from(["RGB", "RGBA", "L", "P"]))
    fmt = "JPEG" if mode in ("RGB", "L") and draw(st.booleans()) else "PNG"
    size = (draw(st.integers(1, 96)), draw(st.integers(1, 96)))
    Image.new(mode, size).save(out, format=fmt)
    return out.getvalue()


@st.composite
def describe_requests(draw: st.DrawFn) -> pb.DescribeRequest:
    r = pb.DescribeRequest(model=draw(st.sampled_from(["eyes", ""])),
                           image=pb.Image(data=real_image(draw)),
                           instruction=draw(st.text(max_size=40)))
    r.sampling.CopyFrom(draw(valid_sampling(stops=False)))
    if draw(st.booleans()):
        r.max_tokens = draw(st.integers(1, 8))
    for change in draw(st.lists(st.sampled_from(DESCRIBE_CHANGES), max_size=3)):
        change(draw, r)
    return r


def spoil_image(draw: st.DrawFn, r: pb.DescribeRequest) -> None:
    data = r.image.data
    r.image.data = draw(st.sampled_from([
        b"", data[: len(data) // 2], data[:16], b"\x89PNG\r\n\x1a\n" + bytes(64),
        b"\xff\xd8\xff" + bytes(64), *BOMBS,
    ]))


DESCRIBE_CHANGES = [
    lambda d, r: setattr(r, "model", d(st.sampled_from(["hello", "nope", "x" * 300]))),
    lambda d, r: setattr(r, "request_id", d(st.text(max_size=140))),
    lambda d, r: setattr(r, "instruction", "x" * 4100),
    spoil_image,
    lambda d, r: setattr(r.image, "data", d(st.binary(max_size=200))),
    lambda d, r: spoil_sampling(d, r.sampling),
    lambda d, r: setattr(r, "max_tokens", d(hostile_int)),
]


# ---------------------------------------------------------------- checks


def answered_properly(call: grpc.Call) -> None:
    try:
        for i, _ in enumerate(call):
            if i >= MAX_EVENTS:
                call.cancel()
                return
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.CANCELLED and call.cancelled():
            return
        assert e.code() in PROPER, f"{e.code().name}: {e.details()}"
        info = reasons.from_error(e)
        assert info is not None, f"no reason with {e.code().name}: {e.details()}"
        assert reasons.CODES[info.reason] == e.code().name, (info, e.details())
        assert len(e.details()) <= 2000


def health_answers(channel: grpc.Channel) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@FUZZ
@given(request=chat_requests())
def test_fuzzed_chat_requests_get_a_proper_status(channel, request):
    from inference_node.api import rpc

    answered_properly(rpc.InferenceStub(channel).Chat(request, timeout=60))
    health_answers(channel)


@settings(FUZZ, max_examples=80)
@given(request=describe_requests())
def test_fuzzed_describe_requests_get_a_proper_status(channel, request):
    from inference_node.api import rpc

    answered_properly(rpc.InferenceStub(channel).Describe(request, timeout=60))
    health_answers(channel)


@FUZZ
@given(request=chat_requests(), flips=st.lists(st.tuples(st.integers(0, 10**6),
                                                         st.integers(0, 255)), max_size=4))
def test_fuzzed_request_bytes_get_a_proper_status(channel, request, flips):
    """Valid requests with bytes overwritten: broken wire format or invalid UTF-8."""
    data = bytearray(request.SerializeToString())
    for at, value in flips:
        if data:
            data[at % len(data)] = value
    call = channel.unary_stream("/inference.v1.Inference/Chat",
                                response_deserializer=pb.ChatEvent.FromString)
    answered_properly(call(bytes(data), timeout=60))
    health_answers(channel)
