"""Control-plane latency with many streams open (issue 18's bound: 99 calls in 100 within 100 ms).

`inference-node serve` runs in a process of its own, as in production, serving the scripted
"loop" model (its streams never end on their own; tests/tiny_models.py), so an open stream steps
as fast as the engine can go: the most a stream can take from the control plane. With 0, 16
(the thread pool's old size) and 32 (`server.max_streams`) streams open, a probe in a third
process calls health (the tunnel's probe, twice as often), GetMemory, ListModels, and Load and
Unload of a model already in that state, for a few seconds, and records each call's latency.

Reported per level and call: median, p95, p99 and max in ms, and the p99's ratio to the same
call's with no stream open, measured in the same run. Targets: `control_plane_p99_lt_100ms_at_16`
and `..._at_32`, every call's p99 under 100 ms. A loaded machine shows here, not in the tests:
at load averages of 14-19 on the 2-core VM single calls took 110-320 ms (the processes were not
scheduled) while the median stayed at 1-6 ms.

    python -m bench.control_plane [--quick]
    python -m bench.control_plane --probe HOST:PORT SECONDS   # the probe alone, JSON on stdout
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.stats import median, percentile, smoke
from inference_node.api import pb, rpc
from studio_common.channel import MAX_MESSAGE_BYTES, channel_options

REPO = Path(__file__).resolve().parent.parent
BOUND_MS = 100.0  # issue 18
CALL_TIMEOUT_S = 10.0  # a starved call (no thread free) would wait past this: streams never end


# ------------------------------------------------------------------ the probe


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def probe(target: str, seconds: float) -> dict[str, list[float]]:
    """Each control call's latencies in seconds, polled every 20 ms for `seconds`. A call that
    fails (its deadline passed: starved) raises."""
    with grpc.insecure_channel(target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        stub = rpc.InferenceStub(ch)
        t = CALL_TIMEOUT_S
        calls: dict[str, Callable[[], Any]] = {
            "health": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=t),
            "GetMemory": lambda: stub.GetMemory(pb.GetMemoryRequest(), timeout=t),
            "ListModels": lambda: stub.ListModels(pb.ListModelsRequest(), timeout=t),
            "LoadModel": lambda: stub.LoadModel(pb.LoadModelRequest(name="loop"), timeout=t),
            "UnloadModel": lambda: stub.UnloadModel(pb.UnloadModelRequest(name="hello"),
                                                    timeout=t),
        }
        for fn in calls.values():  # the channel connected and every path warm
            fn()
        out: dict[str, list[float]] = {name: [] for name in calls}
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for name, fn in calls.items():
                out[name].append(timed(fn))
                if name == "health":
                    out[name].append(timed(fn))
            time.sleep(0.02)
    return out


def probe_elsewhere(target: str, seconds: float) -> dict[str, list[float]]:
    """`probe` in a process of its own: the clients reading the open streams would otherwise
    delay the probe itself. Raises with the probe's error if a call failed."""
    out = subprocess.run([sys.executable, "-m", "bench.control_plane", "--probe", target,
                          str(seconds)], cwd=REPO, capture_output=True, text=True,
                         timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError(f"the control-plane probe failed: {out.stderr.strip()[-1500:]}")
    return dict(json.loads(out.stdout))


def memory(target: str) -> pb.MemoryStatus:
    with grpc.insecure_channel(target) as ch:
        return rpc.InferenceStub(ch).GetMemory(pb.GetMemoryRequest(), timeout=CALL_TIMEOUT_S)


# ------------------------------------------------------------------ open streams


class OpenStreams:
    """`n` Chat streams of the loop model that never finish on their own (1900 tokens), read in
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
            if not self.admitted.acquire(timeout=120):
                raise RuntimeError("a stream was not admitted within 120 s")

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
        if memory(self.target).open_streams:
            raise RuntimeError("cancelled streams kept their slots for 60 s")


@contextmanager
def open_streams(target: str, n: int) -> Iterator[OpenStreams]:
    streams = OpenStreams(target, n)
    try:
        streams.start()
        yield streams
    finally:
        streams.close()
    if streams.errors:
        raise streams.errors[0]


# ------------------------------------------------------------------ the server


def node_config(models: dict[str, Path], path: Path) -> Path:
    path.write_text("[memory]\nbudget_gb = 8.0\nfloor_gb = 0.0\n\n" + "".join(
        f'[[models]]\nname = "{name}"\npath = "{models[name]}"\n\n' for name in ("loop", "hello")))
    return path


@contextmanager
def serve(models: dict[str, Path], tmp: Path) -> Iterator[str]:
    """`inference-node serve` with the loop and hello models, in its own process."""
    from bench.servers import process, wait_grpc
    from studio_common.net import free_port

    port = free_port()
    conf = node_config(models, tmp / "inference-node.toml")
    cmd = [sys.executable, "-m", "inference_node.cli", "serve", "--config", str(conf),
           "--port", str(port)]
    with process(cmd, tmp / "grpc-server.log") as proc:
        target = f"127.0.0.1:{port}"
        wait_grpc(target, proc, tmp / "grpc-server.log")
        yield target


def scripted_models(root: Path) -> dict[str, Path]:
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import EOS, build_chain_model

    return {"loop": build_chain_model(root / "loop", ["a", "b", "c", "d", "e", "f", "a"]),
            "hello": build_chain_model(root / "hello", ["hello", "world", EOS])}


# ------------------------------------------------------------------ the benchmark


def summarize(latencies: dict[str, list[float]], idle: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, xs in latencies.items():
        ms = [x * 1000 for x in xs]
        row = {"n": len(ms), "median_ms": round(median(ms), 2),
               "p95_ms": round(percentile(ms, 95), 2), "p99_ms": round(percentile(ms, 99), 2),
               "max_ms": round(max(ms), 2)}
        if idle is not None:
            row["p99_over_idle"] = round(row["p99_ms"] / max(idle[name]["p99_ms"], 1e-3), 2)
        out[name] = row
    return out


def run(quick: bool) -> dict[str, Any]:
    levels, seconds = ([0, 2], 1.0) if smoke() else ([0, 16, 32], 4.0 if quick else 15.0)
    result: dict[str, Any] = {"model": "scripted loop (tests/tiny_models.py), streams of 1900 "
                                       "tokens that never end on their own",
                              "seconds_per_level": seconds, "levels": {}}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with serve(scripted_models(tmp), tmp) as target:
            idle: dict[str, Any] | None = None
            for n in levels:
                with open_streams(target, n):
                    latencies = probe_elsewhere(target, seconds)
                    still_open = memory(target).open_streams
                row = summarize(latencies, idle)
                idle = idle or row
                result["levels"][str(n)] = {"open_streams": still_open, "calls": row}
    result["targets"] = {
        f"control_plane_p99_lt_100ms_at_{n}": all(
            c["p99_ms"] < BOUND_MS for c in result["levels"][str(n)]["calls"].values())
        for n in levels if n >= 16}
    result["wall_s"] = round(time.monotonic() - t0, 1)
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        print(json.dumps(probe(sys.argv[2], float(sys.argv[3]))))
    else:
        print(json.dumps(run("--quick" in sys.argv), indent=1))
