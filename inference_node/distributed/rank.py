"""What every rank runs under mlx.launch: `python -m inference_node.distributed.rank ...`.

Each rank joins the group (`mx.distributed.init`), and all of them exchange who they are: host
name, process id, memory budget, MLX and mlx-lm versions (ranks on different versions would
not compute the same thing; they refuse to start, naming the host). Then rank 0 serves gRPC on
loopback and leads; every other rank follows and opens no port.

Rank 0 reports to the supervisor through a small JSON status file: `ready` (the group is up and
the models are planned; it binds the port as soon as the supervisor lets go of it), `serving`,
and `failed` with the reason.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

STARTUP_GATHER = ("hostname", "pid", "budget_bytes", "budget_source", "mlx", "mlx_lm")
BIND_WAIT_S = 60.0

log = logging.getLogger("inference_node.distributed.rank")


def write_status(path: Path | None, state: str, **fields: Any) -> None:
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"state": state, "pid": os.getpid(), "time": time.time(),
                               **fields}))
    tmp.replace(path)


def read_status(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError):
        return {}


def _setup_logging(rank: int, log_file: Path | None) -> None:
    fmt = f"%(asctime)s rank {rank} %(name)s %(message)s"
    if log_file is not None:
        from inference_node.server import log_to_file

        path = log_file if rank == 0 else log_file.with_name(
            f"{log_file.stem}.rank{rank}{log_file.suffix}")
        log_to_file(path)
        for h in logging.getLogger().handlers:
            h.setFormatter(logging.Formatter(fmt))
        logging.getLogger().setLevel(logging.INFO)
    else:
        logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr)


def _versions() -> tuple[str, str]:
    from importlib.metadata import version

    return version("mlx"), version("mlx-lm")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="inference_node.distributed.rank")
    p.add_argument("--config", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cluster", required=True, help="the hosts, as Cluster.to_json")
    p.add_argument("--source", default="", help="where the hosts came from, for messages")
    p.add_argument("--status-file", type=Path)
    p.add_argument("--log-file", type=Path)
    p.add_argument("--allow-remote", action="store_true")
    p.add_argument("--supervisor-pid", type=int, default=0,
                   help="rank 0 stops when this process is gone (serve was killed)")
    args = p.parse_args(argv)
    rank = int(os.environ.get("MLX_RANK", "0"))
    _setup_logging(rank, args.log_file)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1: where is each thread
    from inference_node import blas

    blas.drop_from_environ()
    import mlx.core as mx

    from inference_node.admission import apply_mlx_limits, default_budget, system_available_bytes
    from inference_node.config import load_config
    from inference_node.distributed import cluster as clusters
    from inference_node.distributed.control import Channel
    from inference_node.distributed.doorbell import Bell, Line

    cfg = load_config(args.config)
    if args.allow_remote:
        cfg.server.allow_remote = True
    cluster = clusters.from_json(json.loads(args.cluster), args.source)
    backend = "ring" if cluster.backend == "ring" else "jaccl"
    group = mx.distributed.init(strict=True, backend=backend)
    if group.size() != cluster.size:
        log.error("the group has %d ranks, the cluster %d", group.size(), cluster.size)
        return 2
    channel = Channel(group)

    d = cfg.distributed
    if d.budgets_gb:
        budget = int(d.budgets_gb[rank] * 2**30)
        source = f"distributed.budgets_gb[{rank}] in {cfg.source}"
    else:
        budget, source = default_budget(cfg.memory, cfg.source)
    cache = int(cfg.engine.prompt_cache_mb * 2**20)
    if cache:  # every host keeps its part of the prompt cache
        budget -= cache
        source += f" − prompt cache {cfg.engine.prompt_cache_mb:.0f} MB"
    mlx_version, mlx_lm_version = _versions()
    # The wake-up line (doorbell.py): rank 0 listens on its ring address, the others connect.
    bell_ip = cluster.hosts[0].ips[0] if cluster.hosts[0].ips else ""
    bell = None
    if rank == 0 and bell_ip and cluster.size > 1:
        try:
            bell = Bell(bell_ip, list(range(1, cluster.size)))
        except OSError as e:
            log.warning("no wake-up line on %s (%s): the group will poll while idle", bell_ip, e)
    peers = channel.gather_json({"hostname": socket.gethostname(), "pid": os.getpid(),
                                 "budget_bytes": budget, "budget_source": source,
                                 "mlx": mlx_version, "mlx_lm": mlx_lm_version,
                                 "bell_port": bell.port if bell else 0})
    mismatch = [f"{cluster.label(r)} has mlx {q['mlx']}, mlx-lm {q['mlx_lm']}"
                for r, q in enumerate(peers)
                if (q["mlx"], q["mlx_lm"]) != (peers[0]["mlx"], peers[0]["mlx_lm"])]
    if mismatch:
        reason = (f"the ranks run different versions ({'; '.join(mismatch)}; rank 0 has mlx "
                  f"{peers[0]['mlx']}, mlx-lm {peers[0]['mlx_lm']}): install the same on "
                  "every host")
        log.error(reason)
        if rank == 0:
            write_status(args.status_file, "failed", reason=reason)
        return 2
    mem = cfg.memory
    apply_mlx_limits(budget + cache, int(mem.cache_limit_gb * 2**30)
                     if mem.cache_limit_gb else None, mem.wired_limit_mb)
    if rank == 0:
        parks = bell is not None and bell.accept(d.step_timeout_s)
        return lead(cfg, cluster, channel, peers, args, system_available_bytes,
                    bell if parks else None)
    line = None
    if peers[0].get("bell_port"):
        try:
            line = Line(bell_ip, int(peers[0]["bell_port"]), rank, d.step_timeout_s)
        except OSError as e:
            log.warning("no wake-up line to rank 0 at %s (%s): this rank polls while idle",
                        bell_ip, e)
    from inference_node.distributed.follower import Follower
    from inference_node.models import Catalog

    log.info("following rank 0 (%s)", cluster.label(0))
    if cfg.engine.numpy_attention_on_cpu:  # as rank 0's engine does: the same math on each rank
        from inference_node import cpu_attention

        cpu_attention.install()
    return Follower(channel, Catalog.from_config(cfg), system_available_bytes, line).run()


def lead(cfg: Any, cluster: Any, channel: Any, peers: list[dict[str, Any]],
         args: argparse.Namespace, available: Any, bell: Any = None) -> int:
    from grpc_health.v1 import health_pb2

    from inference_node.distributed.leader import Leader
    from inference_node.distributed.ranked import HostBudget, RankedAdmission
    from inference_node.distributed.sharded_engine import DistributedEngine
    from inference_node.machine import gib
    from inference_node.models import Catalog
    from inference_node.server import SERVICE_NAME, create_server

    status = args.status_file
    catalog = Catalog.from_config(cfg)
    hosts = [HostBudget(cluster.label(r), int(q["budget_bytes"]), str(q["budget_source"]))
             for r, q in enumerate(peers)]
    admission = RankedAdmission(cfg.memory, cfg.source, hosts, local_available=available)
    leader = Leader(channel, cluster, peers, cfg.distributed, available, bell)
    leader.on_readings(admission.update_readings)
    engine = DistributedEngine(cfg, admission, leader)
    for entry in catalog.models.values():  # plan now, on this thread, not per ListModels
        engine.footprint(entry)
    write_status(status, "ready")
    addr = f"{args.host}:{args.port}"
    deadline = time.monotonic() + BIND_WAIT_S
    while True:  # the supervisor's placeholder may hold the port until it sees "ready"
        try:
            server, port = create_server(addr, cfg, catalog=catalog, admission=admission,
                                         engine=engine)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)

    def go_down(reason: str) -> None:
        server.servicer.down_reason = reason
        for name in ("", SERVICE_NAME):
            server.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        write_status(status, "failed", reason=reason, port=port)

    leader.on_failure(go_down)
    server.start()
    leader.start(engine.call)
    write_status(status, "serving", port=port)
    print(f"inference-node listening on {args.host}:{port}; {cluster.size} ranks "
          f"({cluster.backend}, {cluster.source}): "
          + ", ".join(f"{h.label} budget {gib(h.budget_bytes)}" for h in hosts)
          + f"; models: {', '.join(catalog.models)}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.supervisor_pid:  # serve killed outright: do not hold the port without it
        threading.Thread(target=_orphaned, args=(args.supervisor_pid, stop), daemon=True).start()
    stop.wait()
    # mlx.launch sends SIGTERM too when another rank dies, possibly before this rank has seen
    # it; and a collective with a lost rank can block for good. So the watchdog keeps running
    # through the drain, and nothing here waits on a thread that may be stuck in one.
    if not leader.failed:
        print(f"draining (up to {cfg.server.grace_seconds:.0f}s)", flush=True)
        if _within(lambda: server.stop(cfg.server.grace_seconds), leader,
                   cfg.server.grace_seconds + 30):
            _within(leader.stop_followers, leader, leader.step_timeout_s)
    if leader.failed:
        leader.handled.wait(5)  # streams told, status written
        server.grpc.stop(1.0).wait(5)
    leader.stop()
    logging.shutdown()
    sys.stdout.flush()
    os._exit(1 if leader.failed else 0)


def _orphaned(pid: int, stop: threading.Event) -> None:
    from inference_node.distributed.leader import alive

    while not stop.wait(1.0):
        if not alive(pid):
            log.error("serve (pid %d) is gone; stopping", pid)
            stop.set()


def _within(work: Any, leader: Any, timeout_s: float) -> bool:
    """Run `work` in a thread; True if it finished before `timeout_s` or the group failing."""
    done = threading.Event()

    def run() -> None:
        try:
            work()
        finally:
            done.set()

    threading.Thread(target=run, name="shutdown", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not done.wait(0.2):
        if leader.failed or time.monotonic() > deadline:
            return False
    return True

if __name__ == "__main__":
    sys.exit(main())
