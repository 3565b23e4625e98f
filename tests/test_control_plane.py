"""The control plane answers whatever the number of open streams (issue 18).

Before: with 16 streams open (the thread pool's size) health checks and GetMemory timed out at
5 s, and the tunnel's probe would then tear the tunnel down. Now streams take at most
`server.max_streams` threads, `server.control_workers` more are kept for everything else, and a
stream past the limit is refused at once with RESOURCE_EXHAUSTED (TOO_MANY_STREAMS).

What is checked here is that behaviour: with 16 and with 32 streams open, which never end on
their own, every control call is answered (a starved call waits for a thread that never comes
free, past its deadline), and the streams stay open throughout. How fast the calls are (the
issue's 100 ms for 99 calls in 100) is a benchmark, `bench/control_plane.py`, with its target in
BENCHMARKS.md: on the shared 2-core machine these tests run on, at load averages of 14-19,
single calls of every kind took 110-320 ms while the median stayed at 1-6 ms, which no server
can help. The server and the probe run in processes of their own, as in production.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.control_plane import memory, open_streams, probe_elsewhere, serve, summarize
from inference_node.api import pb, reasons, rpc

STREAM_LIMIT = 32  # server.max_streams, the default


@pytest.fixture(scope="module")
def target(chain_models, tmp_path_factory):
    """`inference-node serve` in its own process, as in production: the 32 clients reading
    their streams here do not share the server's interpreter."""
    with serve(chain_models, tmp_path_factory.mktemp("control-plane")) as target:
        yield target


@pytest.mark.parametrize("n", [16, 32])
def test_every_control_call_is_answered_with_many_streams_open(target, n):
    with open_streams(target, n):
        assert memory(target).open_streams == n
        latencies = probe_elsewhere(target, seconds=2.0)  # raises if a call was starved
        after = memory(target)
    print(n, "open streams:", summarize(latencies, None))
    assert after.open_streams == n  # all still open: measured under load
    assert after.stream_limit == STREAM_LIMIT
    for name in ("health", "GetMemory", "ListModels", "LoadModel", "UnloadModel"):
        assert len(latencies[name]) >= 2, name


def test_a_stream_past_the_limit_is_refused_at_once_and_health_still_answers(target):
    with open_streams(target, STREAM_LIMIT), grpc.insecure_channel(target) as ch:
        with pytest.raises(grpc.RpcError) as err:
            list(rpc.InferenceStub(ch).Chat(pb.ChatRequest(
                model="loop", messages=[pb.Message(role="user", text="one more")]), timeout=30))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "32 streams are open" in err.value.details()
        assert "server.max_streams = 32" in err.value.details()
        info = reasons.from_error(err.value)
        assert info is not None and info.reason == reasons.TOO_MANY_STREAMS
        assert info.number(reasons.OPEN_STREAMS) == 32
        assert info.number(reasons.STREAM_LIMIT) == 32
        # refused, not kept waiting for a slot: the open streams never end, so a wait would
        # have ended in DEADLINE_EXCEEDED
        health = health_pb2_grpc.HealthStub(ch)
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # the slots were given back as the server saw the cancels: a stream is served again
    with grpc.insecure_channel(target) as ch:
        events = list(rpc.InferenceStub(ch).Chat(pb.ChatRequest(
            model="loop", messages=[pb.Message(role="user", text="again")], max_tokens=5),
            timeout=60))
        assert events[-1].done.usage.completion_tokens == 5
    assert memory(target).open_streams == 0
