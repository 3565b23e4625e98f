"""Measure the inference node's control plane from a process of its own (test_control_plane).

    python tests/control_probe.py HOST:PORT SECONDS   -> JSON {call: [seconds, ...]} on stdout

Health is polled most often (it is the tunnel's probe), every 20 ms with the other calls.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from inference_node.api import pb, rpc  # noqa: E402


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(target: str, seconds: float) -> dict[str, list[float]]:
    with grpc.insecure_channel(target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        stub = rpc.InferenceStub(ch)
        calls: dict[str, Callable[[], Any]] = {
            "health": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5),
            "GetMemory": lambda: stub.GetMemory(pb.GetMemoryRequest(), timeout=5),
            "ListModels": lambda: stub.ListModels(pb.ListModelsRequest(), timeout=5),
            "LoadModel": lambda: stub.LoadModel(pb.LoadModelRequest(name="loop"), timeout=5),
            "UnloadModel": lambda: stub.UnloadModel(pb.UnloadModelRequest(name="hello"),
                                                    timeout=5),
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


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], float(sys.argv[2]))))
