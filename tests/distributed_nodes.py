"""A real `inference-node serve --ranks N` for tests: mlx.launch, the ring backend on loopback.

`serving_ranks(tmp, models, ranks=2, ...)` writes an inference-node.toml, starts the real
command in its own session, waits until its gRPC health check answers SERVING and yields a
`Node`; it stops the node (SIGTERM, then the session's processes) on the way out. The ranks'
process ids come from /proc (`rank_pids`), so a test can kill or stop one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio_common.net import free_port

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 300.0  # two or three ranks importing mlx-lm on a shared 2-core machine


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


def write_config(path: Path, tables: dict[str, dict[str, Any]],
                 models: list[dict[str, Any]]) -> Path:
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    for m in models:
        lines.append("[[models]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in m.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def free_port_block(n: int) -> int:
    """A first port such that it and the next n - 1 are free now (the ring's ports)."""
    for _ in range(200):
        start = free_port()
        socks = []
        try:
            for p in range(start, start + n):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return start
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def launcher_pid(port: int) -> int:
    """The launcher (inference_node.distributed.launcher) of the ranks serving `port`."""
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes() if d.name.isdigit() else b""
        except OSError:
            continue
        if b"inference_node.distributed.launcher" in cmd and str(port).encode() in cmd:
            return int(d.name)
    raise AssertionError(f"no launcher for the ranks serving port {port}")


def rank_pids(port: int) -> dict[int, int]:
    """MLX_RANK -> pid of the rank processes serving `port`."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"inference_node.distributed.rank" not in cmd or str(port).encode() not in cmd:
            continue
        for e in env:
            if e.startswith(b"MLX_RANK="):
                out[int(e[len(b"MLX_RANK="):])] = int(d.name)
    return out


def cpu_seconds(pid: int) -> float:
    """CPU seconds a process has used (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def health(target: str, timeout: float = 2.0) -> str:
    """SERVING / NOT_SERVING, or UNREACHABLE when nothing answers."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as ch:
        try:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                     timeout=timeout)
        except grpc.RpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))


def wait_for_health(target: str, want: str, timeout: float, proc: Any = None,
                    log: Path | None = None) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-4000:] if log else ""
            raise AssertionError(f"serve exited with {proc.returncode} before {want}:\n{tail}")
        if health(target) == want:
            return time.monotonic() - t0
        time.sleep(0.25)
    tail = log.read_text()[-4000:] if log else ""
    raise AssertionError(f"{target} not {want} within {timeout:.0f} s:\n{tail}")


@dataclass
class Node:
    target: str
    port: int
    config: Path
    log: Path
    proc: subprocess.Popen

    def start(self) -> None:
        """(Re)start serve with the same config, and wait until it serves."""
        self.proc = _spawn(self.config, self.port, self.log)
        wait_for_health(self.target, "SERVING", START_TIMEOUT_S, self.proc, self.log)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for pid in rank_pids(self.port).values():  # nothing may outlive the test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return int(self.proc.returncode)


def _spawn(config: Path, port: int, log: Path) -> subprocess.Popen:
    with log.open("a") as err:
        return subprocess.Popen(
            [str(BIN / "inference-node"), "serve", "--config", str(config), "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)


@contextmanager
def serving_ranks(tmp: Path, models: list[dict[str, Any]], ranks: int = 2, *,
                  distributed: dict[str, Any] | None = None,
                  memory: dict[str, Any] | None = None,
                  engine: dict[str, Any] | None = None) -> Iterator[Node]:
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    tables = {
        "server": {"grace_seconds": 5.0},
        "memory": {"budget_gb": 4.0, "floor_gb": 0.0, **(memory or {})},
        "engine": {"prompt_cache_mb": 64.0, **(engine or {})},
        "distributed": {"ranks": ranks, "starting_port": free_port_block(ranks),
                        "step_timeout_s": 60.0, **(distributed or {})},
    }
    config = write_config(tmp / "inference-node.toml", tables, models)
    log = tmp / "serve.log"
    node = Node(f"127.0.0.1:{port}", port, config, log, _spawn(config, port, log))
    try:
        wait_for_health(node.target, "SERVING", START_TIMEOUT_S, node.proc, log)
        yield node
    except BaseException:
        print(f"--- {log} (tail) ---\n{log.read_text()[-6000:]}")  # shown with the failure
        raise
    finally:
        node.stop()
