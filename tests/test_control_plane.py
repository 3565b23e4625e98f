"""The control plane answers whatever the number of open streams (issue 18).

Before: with 16 streams open (the thread pool's size) health checks and GetMemory timed out at
5 s, and the tunnel's probe would then tear the tunnel down. Now streams take at most
`server.max_streams` threads, `server.control_workers` more are kept for everything else, and a
stream past the limit is refused at once with RESOURCE_EXHAUSTED (TOO_MANY_STREAMS).

The bound is the issue's own, 100 ms, with 16 and with 32 streams open, for health, GetMemory,
ListModels and Load/Unload of a model already in that state: 99 calls in 100 within it, and
none past 1 s (starved, they waited 5 s and more). Not every single call: on the shared 2-core
machine these tests run on, at load averages of 14-19, single calls of every kind (health
too) took 110-180 ms while the median stayed at 1-3 ms; the processes were not scheduled,
which no server can help. The server and the probe run in processes of their own, as in
production, so the 32 clients reading streams here delay neither. The measured distribution
is printed (pytest -s) for the record.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inference_node.api import pb, reasons, rpc
from studio_common.channel import MAX_MESSAGE_BYTES, channel_options

BOUND_S = 0.100  # the requirement
STARVED_S = 1.0  # no control call may wait this long, whatever the machine's load
STREAM_LIMIT = 32  # server.max_streams, the default


@pytest.fixture(scope="module")
def target(chain_models, tmp_path_factory):
    """`inference-node serve` in its own process, as in production: the 32 clients reading
    their streams here do not share the server's interpreter."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import REPO

    from studio_common.net import free_port

    port = free_port()
    cfg = tmp_path_factory.mktemp("control-plane") / "inference-node.toml"
    cfg.write_text("[memory]\nbudget_gb = 8.0\nfloor_gb = 0.0\n\n" + "".join(
        f'[[models]]\nname = "{name}"\npath = "{chain_models[name]}"\n\n'
        for name in ("loop", "hello")))
    proc = subprocess.Popen([sys.executable, "-m", "inference_node.cli", "serve", "--config",
                             str(cfg), "--port", str(port)], cwd=REPO, env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def memory(target: str) -> pb.MemoryStatus:
    with grpc.insecure_channel(target) as ch:
        return rpc.InferenceStub(ch).GetMemory(pb.GetMemoryRequest(), timeout=5)


class OpenStreams:
    """`n` Chat streams that never finish on their own (the loop model at 1900 tokens), read in
    the background, each on its own channel as separate clients would be."""

    def __init__(self, target: str, n: int) -> None:
        self.target = target
        self.channels = [grpc.insecure_channel(target, options=channel_options(MAX_MESSAGE_BYTES))
                         for _ in range(n)]
        self.calls: list[Any] = []
        self.admitted = threading.Semaphore(0)
        self.errors: list[grpc.RpcError] = []
        self.threads = [threading.Thread(target=self._read, args=(ch, i), daemon=True)
                        for i, ch in enumerate(self.channels)]

    def _read(self, channel: grpc.Channel, i: int) -> None:
        call = rpc.InferenceStub(channel).Chat(pb.ChatRequest(
            model="loop", messages=[pb.Message(role="user", text=f"stream {i}")],
            max_tokens=1900), timeout=300)
        self.calls.append(call)
        try:
            for ev in call:
                if ev.HasField("admitted"):
                    self.admitted.release()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.errors.append(e)

    def start(self) -> None:
        for t in self.threads:
            t.start()
        for _ in self.threads:
            assert self.admitted.acquire(timeout=120), "a stream was never admitted"

    def close(self) -> None:
        for call in self.calls:
            call.cancel()
        for t in self.threads:
            t.join(30)
        for ch in self.channels:
            ch.close()
        # the server frees a slot when it sees the cancel (within a step); wait for all of them
        deadline = time.monotonic() + 60
        while memory(self.target).open_streams and time.monotonic() < deadline:
            time.sleep(0.05)
        assert memory(self.target).open_streams == 0, "cancelled streams kept their slots"


@contextmanager
def open_streams(target: str, n: int) -> Iterator[OpenStreams]:
    streams = OpenStreams(target, n)
    try:
        streams.start()
        yield streams
    finally:
        streams.close()
    assert not streams.errors, streams.errors[0]


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(target: str, seconds: float) -> dict[str, list[float]]:
    """The control-plane latencies, measured by tests/control_probe.py in a process of its own:
    the 32 clients reading streams here would otherwise delay the probe itself."""
    import json
    import subprocess
    import sys

    from conftest import TESTS

    out = subprocess.run([sys.executable, str(TESTS / "control_probe.py"), target,
                          str(seconds)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def summary(n: int, latencies: dict[str, list[float]]) -> str:
    parts = []
    for name, xs in latencies.items():
        ms = sorted(x * 1000 for x in xs)
        parts.append(f"{name} n={len(ms)} median {statistics.median(ms):.1f} "
                     f"p95 {ms[int(0.95 * (len(ms) - 1))]:.1f} max {ms[-1]:.1f} ms")
    return f"{n} open streams: " + "; ".join(parts)


@pytest.mark.parametrize("n", [16, 32])
def test_control_plane_answers_within_100_ms_with_many_streams_open(target, n):
    with open_streams(target, n):
        assert memory(target).open_streams == n
        latencies = measure(target, seconds=4.0)
        after = memory(target)
    report = summary(n, latencies)
    print(report)
    assert after.open_streams == n  # all still open: measured under load
    assert after.stream_limit == STREAM_LIMIT
    for name, xs in latencies.items():
        p99 = sorted(xs)[int(0.99 * (len(xs) - 1))]
        assert p99 < BOUND_S, f"{name}: 99th percentile {p99 * 1000:.0f} ms; {report}"
        assert max(xs) < STARVED_S, f"{name} took {max(xs) * 1000:.0f} ms; {report}"


def test_a_stream_past_the_limit_is_refused_at_once_and_health_still_answers(target):
    with open_streams(target, STREAM_LIMIT), grpc.insecure_channel(target) as ch:
        t0 = time.perf_counter()
        with pytest.raises(grpc.RpcError) as err:
            list(rpc.InferenceStub(ch).Chat(pb.ChatRequest(
                model="loop", messages=[pb.Message(role="user", text="one more")]), timeout=30))
        refused_in = time.perf_counter() - t0
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "32 streams are open" in err.value.details()
        assert "server.max_streams = 32" in err.value.details()
        info = reasons.from_error(err.value)
        assert info is not None and info.reason == reasons.TOO_MANY_STREAMS
        assert info.number(reasons.OPEN_STREAMS) == 32
        assert info.number(reasons.STREAM_LIMIT) == 32
        assert refused_in < 5.0  # at once, not after waiting for a thread or for memory
        health = health_pb2_grpc.HealthStub(ch)
        assert timed(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5)) < BOUND_S
    # the slots were given back as the server saw the cancels: a stream is served again
    with grpc.insecure_channel(target) as ch:
        events = list(rpc.InferenceStub(ch).Chat(pb.ChatRequest(
            model="loop", messages=[pb.Message(role="user", text="again")], max_tokens=5),
            timeout=60))
        assert events[-1].done.usage.completion_tokens == 5
    assert memory(target).open_streams == 0
