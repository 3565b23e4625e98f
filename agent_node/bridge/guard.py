"""Who may call the bridge, and how much they may send: the token, the Host header, body size.

    token, created = bridge_token(cfg)       # [bridge] token, else the token file (made 0600)
    app = Guard(app, max_body_bytes, allowed_hosts)   # ASGI: 421 for a foreign Host, 413 big

The token is required on /v1/*. With no `[bridge] token`, the bridge keeps one in
`[bridge] token_file` (default ~/.config/studio-coder/bridge-token), generated on first use,
readable by the user alone, printed once.

The Host check stops DNS rebinding: a web page whose name an attacker points at 127.0.0.1 could
otherwise reach the bridge from the user's own browser. Only the loopback names (and the
address the request came in on, or `[bridge] allowed_hosts`) with the bound port are served.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import stat
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_node.config import AgentConfig

TOKEN_FILE = "~/.config/studio-coder/bridge-token"  # beside agent-node.toml
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
DRAIN_LIMIT_BYTES = 256 * 1024 * 1024  # read this much of an oversized body so 413 reaches
#                                        the client before the connection closes; beyond, close


class TokenError(Exception):
    """The token file cannot be used; the message says how to fix it."""


def token_path(cfg: AgentConfig) -> Path:
    return Path(cfg.bridge.token_file or TOKEN_FILE).expanduser()


def bridge_token(cfg: AgentConfig) -> tuple[str, bool]:
    """(token, True if it was generated just now). [bridge] token wins over the token file."""
    if cfg.bridge.token:
        return cfg.bridge.token, False
    path = token_path(cfg)
    try:
        return _read_token(path), False
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another bridge made it first: use theirs
        return _read_token(path), False
    except OSError as e:
        raise TokenError(f"cannot create the bridge token file {path}: {e.strerror}; set "
                         f"[bridge] token_file to a writable place in {cfg.source}") from None
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


def _read_token(path: Path) -> str:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(f"the bridge token file {path} is readable by other users (mode "
                         f"{stat.S_IMODE(mode):o}); run `chmod 600 {path}`")
    token = path.read_text().strip()
    if not token:
        raise TokenError(f"the bridge token file {path} is empty; delete it and the bridge "
                         "makes a new one on its next start")
    return token


# ---------------------------------------------------------------------- the ASGI guard


def _host_allowed(host: str, scope: Scope, extra: tuple[str, ...]) -> bool:
    local, port = scope.get("server") or ("", None)
    names = [*LOOPBACK_NAMES, *extra]
    try:  # the address the request came in on: a client that dialled it by number
        names.append(f"[{local}]" if ipaddress.ip_address(local).version == 6 else local)
    except ValueError:
        pass
    host = host.lower()
    for name in (n.lower() for n in names):
        has_port = "]:" in name if name.startswith("[") else ":" in name
        if (host == name) if has_port else host in (f"{name}:{port}",
                                                      name if port == 80 else None):
            return True
    return False


async def _send_error(send: Send, status: int, message: str, param: str | None = None,
                      code: str | None = None) -> None:
    kind = "invalid_request_error"
    body = json.dumps({"error": {"message": message, "type": kind, "param": param,
                                 "code": code}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: refuse a foreign Host (421) and a body over the limit (413) before the
    app runs; the body is read here once and replayed to the app."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, allowed_hosts: list[str],
                 source: str = "agent-node.toml") -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = tuple(allowed_hosts)
        self.source = source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if not _host_allowed(host, scope, self.allowed_hosts):
            port = (scope.get("server") or ("", "PORT"))[1]
            await _send_error(
                send, 421, f"the bridge answers only requests addressed to 127.0.0.1:{port}, "
                f"localhost:{port} or [::1]:{port}, not Host {host or '(none)'!r}; this stops "
                "web pages from reaching it through DNS rebinding. If you reach it under "
                f"another name (an SSH forward on another port, say), add it to [bridge] "
                f"allowed_hosts in {self.source}", code="host_not_allowed")
            return
        declared = headers.get(b"content-length")
        limit = self.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > DRAIN_LIMIT_BYTES:
            await self._too_large(send, int(declared))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # gone before sending the whole body; nobody to answer
            size += len(message.get("body", b""))
            if size <= limit:
                chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
            if not more or size > DRAIN_LIMIT_BYTES:
                break
        if size > limit:
            await self._too_large(send, size)
            return
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _too_large(self, send: Send, size: int) -> None:
        limit_mb = self.max_body_bytes / 2**20
        await _send_error(
            send, 413, f"the request body is {size / 2**20:.1f} MiB; the bridge accepts at most "
            f"{limit_mb:g} MiB ([bridge] max_body_mb in {self.source}). Large images are the "
            "usual cause: send them smaller", code="request_too_large")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that hands the app the body read already, then the real receive's events
    (so a disconnect still reaches the app)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
