"""`inference-node serve --ranks N | --hostfile F`: start the ranks with mlx.launch, keep them.

The supervisor is the process launchd (or the user) runs. It starts `mlx.launch` with the
hostfile (rank 0 on this machine, the others over SSH, as mlx.launch does), and watches:

- rank 0's status file (ready / serving / failed, with the reason naming the host);
- mlx.launch's own report of a rank that exited (it then stops the others).

When the group fails after it has served, the supervisor holds the port itself with a
placeholder that answers health NOT_SERVING and every call UNAVAILABLE with the reason, so a
client learns which host is gone instead of finding nothing there; then it relaunches the
group after `relaunch_s` (doubling up to `relaunch_max_s`) and hands the port back to the new
rank 0 as soon as its group is up. A group that never served (a wrong hostfile, a host that is
off) is not retried here: the exit status says so, and launchd's KeepAlive retries.

SIGTERM / SIGINT: rank 0 drains its streams, tells the other ranks to exit, and all stop.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

from inference_node.config import InferenceConfig
from inference_node.distributed import cluster as clusters
from inference_node.distributed.leader import alive
from inference_node.distributed.rank import read_status
from studio_common.tomlconf import ConfigError

log = logging.getLogger("inference_node.distributed.supervisor")
RANK_EXIT = re.compile(r"Node with rank (\d+) (?:exited with code (-?\d+)|was killed)")
POLL_S = 0.2
KILL_AFTER_S = 5.0


def mlx_launch() -> list[str]:
    """mlx.launch as this Python runs it, without its idle spin (launcher.py)."""
    if importlib.util.find_spec("mlx._distributed_utils.launch") is None:
        raise ConfigError("mlx.launch is not installed with this Python; install mlx "
                          "(pip install 'studio-coder[inference]')")
    return [sys.executable, "-m", "inference_node.distributed.launcher"]


def check_rank0_here(cluster: clusters.Cluster) -> None:
    """Rank 0 serves gRPC on this machine's loopback, so hosts[0] must be this machine."""
    ip = cluster.hosts[0].ips[0] if cluster.hosts[0].ips else ""
    if not ip or cluster.local:
        return
    try:
        with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
            s.bind((ip, 0))
    except OSError:
        raise ConfigError(
            f"{cluster.source}: hosts[0] ({cluster.hosts[0].ssh}, {ip}) must be this machine: "
            "rank 0 serves gRPC here. Run serve on that host, or put this one first") from None


class Placeholder:
    """The port while the ranks are down: health NOT_SERVING, every RPC UNAVAILABLE + why."""

    def __init__(self, addr: str, reason: str) -> None:
        import grpc
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        from inference_node.api import pb
        from inference_node.server import SERVICE_NAME

        self.reason = reason
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                  options=[("grpc.so_reuseport", 0)])
        h = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(h, self.server)
        for name in ("", SERVICE_NAME):
            h.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        handlers = {}
        for m in pb.DESCRIPTOR.services_by_name["Inference"].methods:
            request = getattr(pb, m.input_type.name)
            make = (grpc.unary_stream_rpc_method_handler if m.server_streaming
                    else grpc.unary_unary_rpc_method_handler)
            handlers[m.name] = make(self._refuse, request_deserializer=request.FromString)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        deadline = time.monotonic() + 15  # rank 0 may still be letting go of the port
        while True:
            try:
                if self.server.add_insecure_port(addr):
                    break
            except RuntimeError:
                pass
            if time.monotonic() > deadline:
                raise OSError(f"could not hold {addr} while the ranks are down")
            time.sleep(0.2)
        self.server.start()

    def _refuse(self, request: Any, context: Any) -> Any:
        import grpc

        context.abort(grpc.StatusCode.UNAVAILABLE, self.reason)

    def stop(self) -> None:
        self.server.stop(0).wait(5)


class Supervisor:
    def __init__(self, cfg: InferenceConfig, config_path: Path | None, host: str, port: int,
                 log_file: Path | None, cluster: clusters.Cluster) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.host, self.port = host, port
        self.log_file = log_file
        self.cluster = cluster
        self.work = Path(tempfile.mkdtemp(prefix="inference-node-ranks-"))
        self.status = self.work / "rank0.json"
        self.stopping = threading.Event()
        self.placeholder: Placeholder | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.exits: dict[int, int | None] = {}

    # ------------------------------------------------------------ one launch

    def command(self) -> list[str]:
        launch_hosts = self.cluster.to_json()
        launch_hosts["hosts"][0]["ssh"] = clusters.LOOPBACK  # rank 0 runs here, without SSH
        hostfile = self.work / "hosts.json"
        hostfile.write_text(json.dumps(launch_hosts))
        d = self.cfg.distributed
        rank_args = ["-m", "inference_node.distributed.rank", "--host", self.host,
                     "--port", str(self.port), "--status-file", str(self.status),
                     "--cluster", json.dumps(self.cluster.to_json(), separators=(",", ":")),
                     "--source", self.cluster.source, "--supervisor-pid", str(os.getpid())]
        if self.config_path is not None:
            rank_args += ["--config", str(self.config_path.resolve())]
        if self.log_file is not None:
            rank_args += ["--log-file", str(self.log_file.resolve())]
        if self.cfg.server.allow_remote:
            rank_args.append("--allow-remote")
        return [*mlx_launch(), "--hostfile", str(hostfile), "--backend", self.cluster.backend,
                "--starting-port", str(d.starting_port), "--python", d.python or sys.executable,
                "--", *rank_args]

    def launch(self) -> None:
        from inference_node import blas

        self.status.unlink(missing_ok=True)
        self.exits = {}
        log.info("starting %d ranks (%s): %s", self.cluster.size, self.cluster.backend,
                 ", ".join(h.label for h in self.cluster.hosts))
        # stdin: a pipe nobody writes to. mlx.launch polls its stdin to forward it to the ranks;
        # /dev/null is always readable (EOF) and would keep it spinning on a core.
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, errors="replace",
                                     start_new_session=True, env=blas.with_preload())
        threading.Thread(target=self._read_launcher, args=(self.proc,), daemon=True).start()

    def _read_launcher(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            m = RANK_EXIT.search(line)
            if m:
                self.exits[int(m.group(1))] = int(m.group(2)) if m.group(2) else None
        sys.stderr.flush()

    def _launcher_reason(self) -> str:
        for rank, code in self.exits.items():  # the first to go; the rest were stopped after it
            if code != 0:
                how = "was killed" if code is None or code < 0 else f"exited with code {code}"
                return (f"{self.cluster.label(rank)} {how}; every model here is split across "
                        "the ranks, so nothing runs until they are all back")
        code = self.proc.returncode if self.proc else None
        return f"the ranks stopped (mlx.launch exited with {code}); see the log"

    def watch(self) -> tuple[str, bool]:
        """Until the group fails or stops: (the reason, whether it ever served)."""
        served = False
        while True:
            st = read_status(self.status)
            state = st.get("state")
            if self.placeholder is not None and state in ("ready", "serving", "failed"):
                self.placeholder.stop()  # the new rank 0 is up and binds the port
                self.placeholder = None
            served = served or state == "serving"
            if state == "failed":
                self._signal_rank0()  # it lets go of the port; the placeholder takes it
                return str(st.get("reason") or self._launcher_reason()), served
            if self.stopping.is_set():
                self.end_group(graceful=True)
                return "stopped", served
            assert self.proc is not None
            if self.proc.poll() is not None:
                time.sleep(POLL_S)  # let rank 0's last status and mlx.launch's report land
                st = read_status(self.status)
                reason = st.get("reason") if st.get("state") == "failed" else None
                return str(reason or self._launcher_reason()), served
            time.sleep(POLL_S)

    def end_group(self, graceful: bool) -> None:
        """Stop every rank: rank 0 first, which drains and tells the others; then the rest."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        wait = self.cfg.server.grace_seconds + 30 if graceful else KILL_AFTER_S
        pid = read_status(self.status).get("pid")
        self._signal_rank0()
        deadline = time.monotonic() + wait
        while pid and time.monotonic() < deadline and proc.poll() is None and alive(int(pid)):
            time.sleep(POLL_S)  # rank 0 drains; once it is gone the rest get KILL_AFTER_S
        try:
            proc.wait(max(0.0, min(deadline - time.monotonic(), KILL_AFTER_S)))
        except subprocess.TimeoutExpired:
            log.warning("the ranks did not stop within %.0f s; killing them", wait)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        try:  # whatever mlx.launch left behind in its session
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _signal_rank0(self) -> None:
        """SIGTERM to rank 0 (it drains, or after a failure just exits); to the whole launch
        if rank 0 has not said who it is yet."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        pid = read_status(self.status).get("pid")
        try:
            if pid:
                os.kill(int(pid), signal.SIGTERM)
            else:
                os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    # ------------------------------------------------------------ the loop

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        delay = self.cfg.distributed.relaunch_s
        addr = f"{self.host}:{self.port}"
        ever_served = False
        try:
            while True:
                self.launch()
                reason, served = self.watch()
                ever_served = ever_served or served
                if reason == "stopped":
                    return 0
                log.error("the ranks are down: %s", reason)
                print(f"inference-node: the ranks are down: {reason}", file=sys.stderr,
                      flush=True)
                if not ever_served or self.stopping.is_set():
                    return 1  # never came up (a configuration or a host problem), or stopping
                if self.placeholder is None:
                    self.placeholder = Placeholder(addr, reason)
                else:
                    self.placeholder.reason = reason
                self.end_group(graceful=False)  # a hung rank may need killing
                if delay <= 0:
                    self.stopping.wait()
                    return 1
                if served:
                    delay = self.cfg.distributed.relaunch_s  # it ran: start the backoff over
                log.info("relaunching the ranks in %.0f s", delay)
                if self.stopping.wait(delay):
                    return 1
                delay = min(delay * 2, self.cfg.distributed.relaunch_max_s)
        finally:
            if self.placeholder is not None:
                self.placeholder.stop()
            self.end_group(graceful=False)
            shutil.rmtree(self.work, ignore_errors=True)


def supervise(cfg: InferenceConfig, config_path: Path | None, host: str, port: int,
              log_file: Path | None) -> int:
    from inference_node.models import Catalog
    from inference_node.server import check_host

    cluster = clusters.from_config(cfg.distributed)
    if cluster is None:
        raise ConfigError("serve --ranks needs at least 2 ranks")
    check_host(host, cfg.server.allow_remote)
    check_rank0_here(cluster)
    if port == 0:
        raise ConfigError("serve --ranks/--hostfile needs a fixed --port: the supervisor "
                          "holds it while the ranks restart")
    Catalog.from_config(cfg)  # the default model is imported once, before the ranks read it
    return Supervisor(cfg, config_path, host, port, log_file, cluster).run()
