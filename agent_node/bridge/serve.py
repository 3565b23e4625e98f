"""`agent-node bridge`: run the app on loopback with uvicorn.

    agent-node bridge [--config FILE] [--port 8080] [--host 127.0.0.1] [--allow-remote]
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from typing import Any

from agent_node.bridge.app import create_app
from agent_node.bridge.guard import TokenError, bridge_token, token_path
from agent_node.client import connect
from agent_node.config import DEFAULT_CONFIG, ConfigError, load_default_config
from agent_node.exceptions import TunnelFailed
from studio_common.net import require_loopback


def check_host(host: str, allow_remote: bool) -> None:
    require_loopback(host, allow_remote, (
        "the bridge speaks plain HTTP and anyone who reaches it can send prompts to the "
        "appliance (with the token, which travels in clear). Keep it on 127.0.0.1 and reach it "
        "over SSH (ssh -L 8080:127.0.0.1:8080); pass --allow-remote only if you mean to expose "
        "it on your network"))


class BridgeServer:
    """uvicorn serving `app` in a thread on an already-bound socket (port 0 picks a free one)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, int(self.sock.getsockname()[1])
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="bridge-http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> BridgeServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the bridge did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def __enter__(self) -> BridgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="agent-node bridge",
                                 description="OpenAI-compatible endpoint for the inference node")
    ap.add_argument("--config", help=f"agent-node.toml (default {DEFAULT_CONFIG} if present)")
    ap.add_argument("--host", help="address to listen on (default [bridge] host, 127.0.0.1)")
    ap.add_argument("--port", type=int, help="port (default [bridge] port, 8080)")
    ap.add_argument("--allow-remote", action="store_true",
                    help="allow a non-loopback --host (plain HTTP: the token travels in clear)")
    args = ap.parse_args(argv)
    try:
        cfg = load_default_config(args.config)
        host = args.host or cfg.bridge.host
        port = cfg.bridge.port if args.port is None else args.port
        check_host(host, args.allow_remote)
        token, created = bridge_token(cfg)
    except (ConfigError, ValueError, TokenError) as e:
        print(f"agent-node bridge: {e}", file=sys.stderr)
        return 2
    try:
        client = connect(cfg)
    except TunnelFailed as e:
        print(f"agent-node bridge: {e}", file=sys.stderr)
        return 3
    with client:
        try:
            server = BridgeServer(create_app(cfg, client, token=token), host, port)
        except OSError as e:
            print(f"agent-node bridge: cannot listen on {host}:{port} ({e.strerror}); pick "
                  "another --port or stop what uses it", file=sys.stderr)
            return 2
        if created:
            print(f"agent-node bridge: generated a token in {token_path(cfg)} (mode 0600); "
                  f"clients send it as their API key (shown this once):\n{token}",
                  file=sys.stderr)
        where = ("[bridge] token" if cfg.bridge.token else str(token_path(cfg)))
        print(f"agent-node bridge: OpenAI-compatible API at {server.url} -> {client.target} "
              f"(token from {where})", file=sys.stderr)
        server.server.run(sockets=[server.sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
