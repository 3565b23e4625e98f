"""The gRPC server: `create_server(addr) -> (server, port)` and `serve()`.

The service's methods are `service.InferenceServicer`; how they meet the wire (parsing, errors
with reasons, reflection) is `wire.py`. The thread pool holds `server.max_streams` streams plus
`server.control_workers` threads kept for the control plane (see service.py).
"""

from __future__ import annotations

import logging
import logging.handlers
import signal
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from inference_node import wire
from inference_node.config import InferenceConfig, load_config
from inference_node.engine import Engine
from inference_node.machine import gib
from inference_node.models import Catalog
from inference_node.service import InferenceServicer
from studio_common.channel import server_options
from studio_common.net import require_loopback
from studio_common.tomlconf import ConfigError

log = logging.getLogger("inference_node.server")
SERVICE_NAME = wire.SERVICE_NAME


def check_host(host: str, allow_remote: bool) -> None:
    require_loopback(host, allow_remote, (
        "the inference node binds loopback only. Reach it from the workstation through the SSH "
        "tunnel (agent-node.toml [tunnel]); pass --allow-remote only if you really mean to "
        "expose it"))


class InferenceServer:
    """The running gRPC server with the engine and admission it owns."""

    def __init__(self, grpc_server: grpc.Server, servicer: InferenceServicer,
                 health_servicer: health.HealthServicer) -> None:
        self.grpc = grpc_server
        self.servicer = servicer
        self.health = health_servicer
        self.engine = servicer.engine
        self.admission = servicer.admission

    def start(self) -> None:
        from inference_node.admission import apply_mlx_limits

        mem = self.servicer.cfg.memory
        cache = int(mem.cache_limit_gb * 2**30) if mem.cache_limit_gb else None
        prompt_cache = self.engine.prompt_cache_bytes  # set aside from admission's budget
        apply_mlx_limits(self.admission.budget_bytes + prompt_cache, cache, mem.wired_limit_mb)
        self.admission.start()  # the memory-floor watchdog
        self.engine.start()
        self.grpc.start()

    def stop(self, grace: float | None = None) -> threading.Event:
        """Drain: refuse new work, let streams finish within `grace`, then stop the engine."""
        self.servicer.draining = True
        self.health.enter_graceful_shutdown()
        done = self.grpc.stop(grace)
        done.wait()
        self.engine.stop()
        self.admission.stop()
        return done

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc.wait_for_termination(timeout)


def create_server(addr: str = "127.0.0.1:0", cfg: InferenceConfig | None = None, *,
                  catalog: Catalog | None = None, admission: Any = None,
                  engine: Engine | None = None) -> tuple[InferenceServer, int]:
    """Build (not start) the server bound to `addr`; port 0 picks a free port. `engine`:
    one built by the caller (rank 0 of a distributed group passes its own)."""
    from inference_node.admission import Admission

    cfg = cfg or InferenceConfig()
    host, _, port_text = addr.rpartition(":")
    host = host.strip("[]")
    check_host(host, cfg.server.allow_remote)
    catalog = catalog or Catalog.from_config(cfg)
    if admission is None:
        admission = Admission(cfg.memory, cfg.source)
        cache = int(cfg.engine.prompt_cache_mb * 1024 * 1024)
        if cache:  # the prompt cache's cap is memory admission must not promise to anyone
            admission.budget_bytes -= cache
            admission.budget_source += f" − prompt cache {cfg.engine.prompt_cache_mb:.0f} MiB"
    engine = engine or Engine(cfg, admission, catalog.draft_of)
    servicer = InferenceServicer(cfg, catalog, admission, engine)

    max_bytes = cfg.server.max_message_mb * 1024 * 1024
    options = [*server_options(max_bytes), ("grpc.so_reuseport", 0)]
    workers = cfg.server.max_streams + cfg.server.control_workers  # see StreamSlots
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
        options=options,
    )
    wire.add_inference_service(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    wire.enable_reflection(server, (SERVICE_NAME, health.SERVICE_NAME))
    try:
        bound = server.add_insecure_port(addr)
    except RuntimeError:  # newer grpcio raises instead of returning 0
        bound = 0
    if bound == 0:
        raise OSError(
            f"could not listen on {addr}: the port is taken (another inference-node?) or the "
            "address is not this machine's; pick another with --port"
        )
    log.info("memory budget %s (%s)", gib(admission.budget_bytes), admission.budget_source)
    return InferenceServer(server, servicer, health_servicer), bound


def serve(cfg: InferenceConfig, host: str, port: int) -> int:
    """Run until SIGTERM/SIGINT, then drain for `server.grace_seconds`."""
    try:
        server, bound = create_server(f"{host}:{port}", cfg)
    except OSError as e:  # a taken port is bad usage: exit 2 with the message, no traceback
        raise ConfigError(str(e)) from None
    server.start()
    print(
        f"inference-node listening on {host}:{bound}; budget "
        f"{gib(server.admission.budget_bytes)} ({server.admission.budget_source}); "
        f"models: {', '.join(server.servicer.catalog.models)}",
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print(f"draining (up to {cfg.server.grace_seconds:.0f}s)", flush=True)
    server.stop(cfg.server.grace_seconds)
    return 0


def log_to_file(path: Path) -> None:
    """Send the root logger to `path` alone, reopening it whenever it is moved or removed.

    launchd opens StandardErrorPath once, so a rotated stderr log keeps being written after
    newsyslog moves it; a file the server opens itself can follow the rotation.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.WatchedFileHandler(path)
    except OSError as e:
        raise ConfigError(f"cannot write the log file {path}: {e.strerror or e}; create its "
                          f"folder writable by this user, or drop --log-file") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="inference-node serve")
    p.add_argument("--config", type=Path)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--allow-remote", action="store_true")
    p.add_argument("--log-file", type=Path,
                   help="log here instead of stderr; reopened when newsyslog rotates it")
    ranks = p.add_mutually_exclusive_group()
    ranks.add_argument("--ranks", type=int, help="one model across N local mlx.distributed "
                       "ranks (ring backend on loopback); for one machine and tests")
    ranks.add_argument("--hostfile", type=Path, help="one model across the hosts of an mlx "
                       "hostfile (ring or JACCL); rank 0 is this machine")
    args = p.parse_args(argv)
    if args.log_file:
        log_to_file(args.log_file)
    cfg = load_config(args.config)
    if args.allow_remote:
        cfg.server.allow_remote = True
    if args.ranks is not None or args.hostfile is not None:
        cfg.distributed.ranks = args.ranks or 0
        cfg.distributed.hostfile = str(args.hostfile.resolve()) if args.hostfile else ""
    host = args.host if args.host is not None else cfg.server.host
    port = args.port if args.port is not None else cfg.server.port
    if cfg.distributed.enabled or args.ranks is not None:
        from inference_node.distributed.supervisor import supervise

        return supervise(cfg, args.config, host, port, args.log_file)
    return serve(cfg, host, port)
