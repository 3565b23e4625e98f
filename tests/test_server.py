"""The inference node over a real gRPC server with the real MLX engine."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import grpc
import pytest
from conftest import cancel_after_deltas, running_server

from inference_node.api import pb


def user(text: str) -> pb.Message:
    return pb.Message(role="user", text=text)


def collect(stream) -> dict:
    out: dict = {"kinds": [], "content": "", "reasoning": "", "tool_calls": [], "done": None}
    for ev in stream:
        kind = ev.WhichOneof("event")
        out["kinds"].append(kind)
        if kind == "delta":
            key = "reasoning" if ev.delta.kind == pb.Delta.REASONING else "content"
            out[key] += ev.delta.text
        elif kind == "tool_call":
            out["tool_calls"].append(ev.tool_call)
        elif kind == "done":
            out["done"] = ev.done
        elif kind == "admitted":
            out["admitted"] = ev.admitted
    return out


@pytest.fixture(scope="module")
def server(chain_models):
    models = [{"name": name, "path": str(path)} for name, path in chain_models.items()]
    with running_server(models) as (srv, target):
        yield srv, target


@pytest.fixture
def stub(server, stub_for):
    return stub_for(server[1])


def test_chat_streams_admitted_then_deltas_then_done(stub):
    r = collect(stub.Chat(pb.ChatRequest(model="hello", messages=[user("hi")]), timeout=60))
    assert r["kinds"][0] == "admitted" and r["kinds"][-1] == "done"
    assert r["content"].split() == ["hello", "world"]
    assert r["done"].finish_reason == "stop"
    assert r["done"].usage.completion_tokens == 3  # hello, world, </s>
    assert r["done"].usage.prompt_tokens == r["admitted"].prompt_tokens > 0
    assert r["done"].timings.time_to_first_token_seconds > 0
    assert r["admitted"].reserved_bytes > 0


def test_default_max_tokens_is_generous_but_capped_by_context(stub):
    r = collect(stub.Chat(pb.ChatRequest(model="hello", messages=[user("hi")]), timeout=60))
    # 32768 by default, capped by the 2048-token context of the tiny model
    assert r["admitted"].max_tokens == 2048 - r["admitted"].prompt_tokens


def test_reasoning_arrives_apart_from_content(stub):
    r = collect(stub.Chat(pb.ChatRequest(model="think", messages=[user("hi")]), timeout=60))
    assert r["reasoning"].split() == ["hmm", "let", "me", "think"]
    assert r["content"].split() == ["the", "answer", "is", "42"]
    assert "think>" not in r["content"] and "think>" not in r["reasoning"]
    assert r["done"].usage.reasoning_tokens >= 4
    assert not r["done"].cut_off_while_reasoning


def test_reply_cut_off_while_reasoning_is_flagged(stub):
    r = collect(stub.Chat(
        pb.ChatRequest(model="think-forever", messages=[user("hi")], max_tokens=12), timeout=60
    ))
    assert r["done"].finish_reason == "length"
    assert r["done"].cut_off_while_reasoning
    assert r["content"] == ""


def test_reply_cut_off_after_reasoning_is_not_flagged(stub):
    r = collect(stub.Chat(
        pb.ChatRequest(model="think", messages=[user("hi")], max_tokens=8), timeout=60
    ))
    assert r["done"].finish_reason == "length"
    assert not r["done"].cut_off_while_reasoning


WEATHER = pb.Tool(
    name="get_weather", description="Weather for a city",
    parameters_json=json.dumps({"type": "object", "properties": {"city": {"type": "string"}}}),
)


def test_tool_call_round_trip(stub):
    r = collect(stub.Chat(
        pb.ChatRequest(model="tool", messages=[user("weather in Paris")], tools=[WEATHER]),
        timeout=60,
    ))
    assert len(r["tool_calls"]) == 1
    call = r["tool_calls"][0]
    assert call.name == "get_weather"
    assert json.loads(call.arguments_json) == {"city": "Paris"}
    assert r["done"].finish_reason == "tool_calls"
    assert "<tool_call>" not in r["content"]

    follow_up = [
        user("weather in Paris"),
        pb.Message(role="assistant", tool_calls=[call]),
        pb.Message(role="tool", tool_call_id=call.id, name="get_weather", text="sunny"),
    ]
    r2 = collect(stub.Chat(
        pb.ChatRequest(model="tool", messages=follow_up, tools=[WEATHER]), timeout=60
    ))
    assert r2["done"] is not None and r2["admitted"].prompt_tokens > r["admitted"].prompt_tokens


def test_cancel_mid_stream_stops_generation_and_next_call_succeeds(server, stub):
    srv, _ = server
    call = stub.Chat(pb.ChatRequest(model="loop", messages=[user("go")], max_tokens=1500),
                     timeout=60)
    cancel_after_deltas(call)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and srv.engine.loaded["loop"].decoding:
        time.sleep(0.02)
    assert not srv.engine.loaded["loop"].decoding, "generation kept running after cancel"
    r = collect(stub.Chat(pb.ChatRequest(model="hello", messages=[user("hi")]), timeout=60))
    assert r["content"].split() == ["hello", "world"]


def test_concurrent_streams_are_batched_and_all_finish(server, stub):
    results: list[dict] = []

    def one(n: int) -> None:
        results.append(collect(stub.Chat(
            pb.ChatRequest(model="loop", messages=[user("go")], max_tokens=20 + n), timeout=60
        )))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r["done"].usage.completion_tokens for r in results) == [20, 21, 22, 23]
    assert all(r["done"].finish_reason == "length" for r in results)


# Whether a request that starts an idle model decodes in its batch or speculatively (prompt
# lookup, a coder model's default): the gathering of requests sent together holds either way.
STARTS_IDLE = pytest.mark.parametrize("lookup", [False, True], ids=["batch", "prompt-lookup"])


def _wait_for(check, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def _spy_on_steps(lm) -> list[set[int]]:
    """The uids each step of `lm`'s batch prefills, from now on."""
    steps: list[set[int]] = []
    step = lm.batch.step

    def spy():
        prefilled, emitted = step()
        steps.append({p.uid for p in prefilled})
        return prefilled, emitted

    lm.batch.step = spy
    return steps


def _chats(stub, texts: list[str], results: list[dict]) -> list[threading.Thread]:
    """One thread a text, each a 3-token chat with the "loop" model into `results`; unstarted."""
    def one(text: str) -> None:
        results.append(collect(stub.Chat(pb.ChatRequest(
            model="loop", messages=[user(text)], max_tokens=3), timeout=60)))

    return [threading.Thread(target=one, args=(t,)) for t in texts]


@STARTS_IDLE
def test_requests_sent_together_are_prefilled_in_one_step(chain_models, stub_for, lookup):
    models = [{"name": name, "path": str(path), "prompt_lookup": lookup}
              for name, path in chain_models.items()]
    with running_server(models, engine={"gather_ms": 30_000}) as (srv, target):
        stub = stub_for(target)
        collect(stub.Chat(pb.ChatRequest(model="loop", messages=[user("warm up")],
                                         max_tokens=2), timeout=60))
        lm = srv.engine.loaded["loop"]
        steps = _spy_on_steps(lm)
        slow = srv.engine.arrival()  # a third request, still being read
        results: list[dict] = []
        threads = _chats(stub, ["first", "second"], results)
        threads[0].start()
        _wait_for(lambda: len(lm.decoding) == 1, "the first request started")
        threads[1].start()
        _wait_for(lambda: len(lm.decoding) == 2, "the second request joined it")
        assert steps == []  # nothing ran while a request was still arriving
        slow.done()
        for t in threads:
            t.join(60)
        assert [r["done"].usage.completion_tokens for r in results] == [3, 3]
        assert len(steps[0]) == 2  # the first step prefilled both


@STARTS_IDLE
def test_the_first_request_of_a_burst_holds_its_prefill_for_the_rest(chain_models, stub_for,
                                                                      lookup):
    """A request that starts an idle batch waits a share of its expected prefill (HOLD_SHARE)
    for requests sent with it that the server has not read yet: here the second is sent only
    once the first is in the batch, and still shares its first step."""
    from inference_node.engine import HOLD_SHARE, UNMEASURED_HOLD_S

    models = [{"name": name, "path": str(path), "prompt_lookup": lookup}
              for name, path in chain_models.items()]
    with running_server(models, engine={"gather_ms": 30_000}) as (srv, target):
        stub = stub_for(target)
        engine = srv.engine
        # a fresh node has measured no prefill: a burst's first request still holds a little
        assert engine.prefill_s_per_token is None
        assert engine.hold_for(SimpleNamespace(computed_tokens=500)) == UNMEASURED_HOLD_S > 0
        collect(stub.Chat(pb.ChatRequest(model="loop", messages=[user("warm up " * 10)],
                                         max_tokens=2), timeout=60))
        assert engine.prefill_s_per_token is not None  # measured on that lone request
        lm = engine.loaded["loop"]
        steps = _spy_on_steps(lm)
        # as if a prefill ran at 0.4 s a token: the first request holds ~HOLD_SHARE of that
        engine.prefill_s_per_token = 0.4
        results: list[dict] = []
        threads = _chats(stub, ["first " * 30, "second " * 30], results)
        threads[0].start()
        _wait_for(lambda: len(lm.decoding) == 1, "the first request started")
        first = lm.decoding[0]
        hold = engine.hold_for(first)
        computed = len(first.prompt) - first.cached_tokens
        assert computed == first.computed_tokens
        assert hold == pytest.approx(HOLD_SHARE * 0.4 * computed) and hold > 0.1
        threads[1].start()
        for t in threads:
            t.join(60)
        assert [r["done"].usage.completion_tokens for r in results] == [3, 3]
        assert len(steps[0]) == 2  # the first step prefilled both


@STARTS_IDLE
def test_a_lone_request_holds_no_longer_than_gather_ms(chain_models, stub_for, lookup):
    models = [{"name": name, "path": str(path), "prompt_lookup": lookup}
              for name, path in chain_models.items()]
    with running_server(models, engine={"gather_ms": 100}) as (srv, target):
        stub = stub_for(target)
        srv.engine.prefill_s_per_token = 1000.0  # a wildly slow estimate
        t0 = time.monotonic()
        out = collect(stub.Chat(pb.ChatRequest(model="loop", messages=[user("go " * 30)],
                                               max_tokens=3), timeout=60))
        assert out["done"].usage.completion_tokens == 3
        assert time.monotonic() - t0 < 5.0  # held 0.1 s at most, not HOLD_SHARE x 1000 s
        # and its own time to the first token is the new estimate
        assert srv.engine.prefill_s_per_token < 1000.0


def test_a_request_that_never_arrives_holds_the_others_only_so_long(chain_models, stub_for):
    models = [{"name": name, "path": str(path)} for name, path in chain_models.items()]
    with running_server(models, engine={"gather_ms": 200}) as (srv, target):
        stub = stub_for(target)
        srv.engine.arrival()  # read, never submitted, never done
        out = collect(stub.Chat(pb.ChatRequest(model="loop", messages=[user("go")],
                                               max_tokens=3), timeout=60))
        assert out["done"].usage.completion_tokens == 3


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (pb.ChatRequest(model="hello"), grpc.StatusCode.INVALID_ARGUMENT, "messages is empty"),
        (pb.ChatRequest(model="hello", messages=[pb.Message(role="robot", text="x")]),
         grpc.StatusCode.INVALID_ARGUMENT, "unknown role 'robot'"),
        (pb.ChatRequest(model="gpt-9", messages=[user("x")]), grpc.StatusCode.NOT_FOUND,
         "unknown model 'gpt-9'"),
        (pb.ChatRequest(model="hello", messages=[user("x")], max_tokens=-5),
         grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        (pb.ChatRequest(model="hello", messages=[user("x")], max_tokens=2_000_000_000),
         grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        (pb.ChatRequest(model="hello", messages=[user("x")], max_tokens=4000),
         grpc.StatusCode.INVALID_ARGUMENT, "ask for at most"),
        (pb.ChatRequest(model="hello", messages=[user("x")],
                        tools=[pb.Tool(name="t", parameters_json="{not json")]),
         grpc.StatusCode.INVALID_ARGUMENT, "not valid JSON"),
        (pb.ChatRequest(model="hello", messages=[user("x")],
                        tools=[pb.Tool(name="t", parameters_json='{"type": "string"}')]),
         grpc.StatusCode.INVALID_ARGUMENT, "type 'object'"),
        (pb.ChatRequest(model="hello", messages=[pb.Message(
            role="user", text="x", images=[pb.Image(data=b"\x89PNG")])]),
         grpc.StatusCode.INVALID_ARGUMENT, "text model"),
    ],
    ids=["empty", "role", "model", "negative", "absurd", "over-context", "tool-json",
         "tool-type", "image-to-coder"],
)
def test_bad_requests_get_a_clear_status_and_the_server_keeps_serving(
    stub, request_, code, words
):
    with pytest.raises(grpc.RpcError) as err:
        collect(stub.Chat(request_, timeout=30))
    assert err.value.code() == code
    assert words in err.value.details()
    r = collect(stub.Chat(pb.ChatRequest(model="hello", messages=[user("hi")]), timeout=60))
    assert r["done"].finish_reason == "stop"


def test_message_over_the_size_limit_is_refused(server):
    from inference_node.api import rpc

    big = 40 * 1024 * 1024
    opts = [("grpc.max_send_message_length", big * 2), ("grpc.max_receive_message_length", big)]
    with grpc.insecure_channel(server[1], options=opts) as ch:
        stub = rpc.InferenceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            collect(stub.Chat(pb.ChatRequest(model="hello", messages=[user("x" * big)]),
                              timeout=30))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in err.value.details()
        r = collect(stub.Chat(pb.ChatRequest(model="hello", messages=[user("hi")]), timeout=60))
        assert r["done"] is not None


def test_health_and_reflection_are_served(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server[1]) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "inference.v1.Inference"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for r in replies for s in r.list_services_response.service}
        assert "inference.v1.Inference" in names


def test_list_models_reports_the_catalog(stub):
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert {"hello", "think", "tool", "loop"} <= set(models)
    assert models["hello"].role == "coder"
    assert models["hello"].state == pb.ModelInfo.LOADED
    assert models["hello"].kv_bytes_per_token > 0
    assert models["hello"].context_length == 2048


def test_non_loopback_host_is_refused_with_the_tunnel_as_the_way_in():
    from inference_node.server import check_host

    with pytest.raises(ValueError, match="SSH tunnel"):
        check_host("0.0.0.0", allow_remote=False)
    check_host("0.0.0.0", allow_remote=True)
    check_host("127.0.0.1", allow_remote=False)
    check_host("::1", allow_remote=False)


def test_second_server_on_the_same_port_fails_loudly(server, chain_models):
    from inference_node.config import InferenceConfig, ModelEntry
    from inference_node.server import create_server

    port = server[1].rsplit(":", 1)[1]
    cfg = InferenceConfig(models=[ModelEntry(name="hello", path=str(chain_models["hello"]))])
    with pytest.raises(OSError, match="port is taken"):
        create_server(f"127.0.0.1:{port}", cfg)


def test_next_turn_reuses_the_kv_of_the_previous_one(stub):
    first = [user("hi")]
    r1 = collect(stub.Chat(pb.ChatRequest(model="hello", messages=first), timeout=60))
    second = [*first, pb.Message(role="assistant", text=r1["content"]), user("hello again")]
    r2 = collect(stub.Chat(pb.ChatRequest(model="hello", messages=second), timeout=60))
    assert r2["done"].usage.cached_prompt_tokens >= r1["admitted"].prompt_tokens
    assert r2["content"].split() == ["hello", "world"]  # same reply as without the cache


def test_batch_peak_counts_every_live_sequence_at_the_longest_ones_length() -> None:
    from inference_node.engine import batch_peak_tokens

    assert batch_peak_tokens([(10, 100)]) == 256  # alone: its own length, in whole steps
    # a short request beside a 900-token one is stored at 900+ tokens until it finishes
    assert batch_peak_tokens([(900, 200), (10, 100)]) == 2 * 1024
    # a brief neighbour costs less than the long one's own growth: 1100 tokens, 1280 slots
    assert batch_peak_tokens([(100, 1000), (10, 10)]) == 1280
    # equal sequences cost what they reserve
    assert batch_peak_tokens([(10, 246), (10, 246)]) == 2 * 256


def test_the_log_file_follows_newsyslog_rotation(tmp_path) -> None:
    import logging

    from inference_node.server import log_to_file
    from studio_common.tomlconf import ConfigError

    root = logging.getLogger()
    saved = root.handlers[:]
    logs = tmp_path / "logs"
    try:
        log_to_file(logs / "inference-node.log")
        log = logging.getLogger("inference_node.test")
        log.warning("before rotation")
        (logs / "inference-node.log").rename(logs / "inference-node.log.0")  # as newsyslog does
        log.warning("after rotation")
        assert "before rotation" in (logs / "inference-node.log.0").read_text()
        assert "after rotation" not in (logs / "inference-node.log.0").read_text()
        assert "after rotation" in (logs / "inference-node.log").read_text()
    finally:
        for h in root.handlers[:]:
            root.removeHandler(h)
            h.close()
        for h in saved:
            root.addHandler(h)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot write the log file .*drop --log-file"):
        log_to_file(tmp_path / "file" / "x.log")


def test_stopping_the_server_mid_stream_ends_the_streams_handler(chain_models, stub_for):
    """Past the grace period the stream is cut off and the engine stopped; an engine busy in
    a long step stops with the stream's request still in it. The handler must not wait on for
    events a stopped engine will never send: it would hold its reservation and keep the
    process from exiting (a launchd stop would end in SIGKILL). The engine is stopped first
    here, as it is when its step outlasts the cut-off stream."""
    with running_server([{"name": "loop", "path": str(chain_models["loop"])}]) as (srv, target):
        step = srv.engine._step_batch  # a step of 20 ms: the stream is long in flight

        def slow_step(lm: object) -> None:
            time.sleep(0.02)
            step(lm)

        srv.engine._step_batch = slow_step
        call = stub_for(target).Chat(pb.ChatRequest(
            model="loop", messages=[user("go")], max_tokens=2000), timeout=60)
        deltas = 0
        for ev in call:
            deltas += ev.WhichOneof("event") == "delta"
            if deltas == 5:
                break
        assert srv.admission.in_flight("loop") == 1
        srv.engine.stop()
        srv.stop(0)
        deadline = time.monotonic() + 10
        while srv.admission.in_flight("loop") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.admission.in_flight("loop") == 0, "the handler still waits on the engine"
