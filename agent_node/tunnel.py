"""A managed SSH tunnel to the inference node, on paramiko and sshtunnel.

    tunnel = Tunnel(cfg.tunnel)          # the [tunnel] section of agent-node.toml
    tunnel.start()                       # raises TunnelFailed on a fatal error
    grpc.insecure_channel(tunnel.target) # "127.0.0.1:<port>", the same port across rebuilds
    tunnel.status()                      # up | probing | rebuilding | failed | stopped
    tunnel.stop()

What sshtunnel leaves unsafe by default, this fixes:
- the local end binds 127.0.0.1 only;
- the host key is checked against the configured known_hosts file, and an unknown, changed or
  @revoked key is refused with its SHA256 fingerprint and the exact line to add (trust on first
  use only when `trust_on_first_use = true`); only the configured identity file is offered, and
  only when no other user can read it, unless `allow_agent` / `look_for_keys` say otherwise
  (that policy lives in `agent_node/ssh_policy.py`);
- it never reconnected: here a monitor thread probes gRPC health through the tunnel every
  `probe_interval_s`, and after `probe_failures` failures in a row (or at once when the SSH
  connection closes) force-stops the tunnel and rebuilds it with jittered exponential backoff.
  A refused host key or identity is fatal: the tunnel stops and says why, and is never retried.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import grpc
import paramiko
import sshtunnel
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent_node.config import TunnelSection
from agent_node.exceptions import TunnelFailed
from agent_node.ssh_policy import (
    KEY_ALGORITHMS,
    authenticate,
    check_host_key,
    known_hosts_name,
    load_identity,
    load_known_hosts,
)
from studio_common.net import free_port

log = logging.getLogger(__name__)
# sshtunnel narrates every step at INFO and warns about stopping a dead transport; keep errors.
logging.getLogger(__name__ + ".sshtunnel").setLevel(logging.ERROR)

STARTING, UP, PROBING, REBUILDING, FAILED, STOPPED = (
    "starting", "up", "probing", "rebuilding", "failed", "stopped"
)
LOCAL_HOST = "127.0.0.1"
TICK_S = 0.2  # how often the monitor looks at the SSH transport between probes


class _Transient(Exception):
    """An attempt failed in a way that may pass: refused connection, timeout, nothing listening."""


@dataclass
class TunnelStatus:
    state: str
    target: str  # the local end gRPC connects to
    ssh: str  # user@host:port
    remote: str  # host:port as seen from the SSH server
    since: float  # unix time of the last state change
    why: str = ""  # rebuilding: the last error; failed: what to fix
    attempt: int = 0  # rebuilding: attempts made so far
    next_try_unix: float = 0.0  # rebuilding: when the next attempt starts
    probe_failures: int = 0  # failed probes in a row
    rebuilds: int = 0  # successful rebuilds since start
    last_recovery_s: float = 0.0  # how long the last outage lasted, start of rebuild to up

    def describe(self) -> str:
        text = f"tunnel {self.ssh} -> {self.remote} on {self.target}: {self.state}"
        if self.state == REBUILDING:
            wait = max(0.0, self.next_try_unix - time.time())
            text += f" ({self.attempt} attempt(s) so far, next try in {wait:.1f} s)"
        if self.state == PROBING:
            text += f" ({self.probe_failures} failed health check(s) in a row)"
        if self.why and self.state in (REBUILDING, FAILED, PROBING):
            text += f": {self.why}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"summary": self.describe()}


def backoff_delay(attempt: int, cfg: TunnelSection, rng: random.Random | None = None) -> float:
    """Seconds to wait before `attempt` (1-based): start × factor^(n-1), ±jitter, capped."""
    base = min(cfg.backoff_max_s, cfg.backoff_start_s * cfg.backoff_factor ** (attempt - 1))
    jitter = (rng or random).uniform(1 - cfg.backoff_jitter, 1 + cfg.backoff_jitter)
    return min(cfg.backoff_max_s, base * jitter)


class _Forwarder(sshtunnel.SSHTunnelForwarder):
    """sshtunnel's local listener and relay threads over a transport we connected and checked."""

    daemon_forward_servers = True
    daemon_transport = True
    skip_tunnel_checkup = True

    def __init__(
        self,
        transport: paramiko.Transport,
        cfg: TunnelSection,
        pkey: paramiko.PKey,
        local_port: int,
    ) -> None:
        self._prepared = transport
        self._open_sockets: set[socket.socket] = set()
        self._sockets_lock = threading.Lock()
        super().__init__(
            (cfg.host, cfg.port),
            ssh_config_file=None,  # never read ~/.ssh/config
            ssh_username=cfg.user,
            ssh_pkey=pkey,
            allow_agent=False,
            host_pkey_directories=[],  # never scan ~/.ssh
            local_bind_address=(LOCAL_HOST, local_port),
            remote_bind_address=(cfg.remote_host, cfg.remote_port),
            set_keepalive=cfg.keepalive_s,
            logger=logging.getLogger(__name__ + ".sshtunnel"),
        )

    def _connect_to_gateway(self) -> None:
        self._transport = self._prepared

    def _make_ssh_forward_handler_class(self, remote_address_: Any) -> Any:
        base = super()._make_ssh_forward_handler_class(remote_address_)
        forwarder = self

        class Handler(base):  # type: ignore[misc, valid-type]
            # Track accepted sockets so a forced stop can reset them at once: a relay thread
            # otherwise notices a dead channel only at its next 5 s select timeout.
            def handle(self) -> None:
                with forwarder._sockets_lock:
                    forwarder._open_sockets.add(self.request)
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    super().handle()
                finally:
                    with forwarder._sockets_lock:
                        forwarder._open_sockets.discard(self.request)

        return Handler

    def transport_alive(self) -> bool:
        return bool(self._prepared.is_active())

    def force_stop(self) -> None:
        try:
            self._prepared.close()
        except Exception:  # noqa: BLE001 - closing a dead transport may raise anything
            pass
        with self._sockets_lock:
            sockets = list(self._open_sockets)
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            self.stop(force=True)
        except Exception as e:  # noqa: BLE001
            log.debug("stopping the forwarder: %s", e)


class Tunnel:
    """A local port on 127.0.0.1 that reaches `remote_host:remote_port` on the SSH host."""

    def __init__(
        self,
        cfg: TunnelSection,
        *,
        on_change: Callable[[TunnelStatus], None] | None = None,
        source: str = "agent-node.toml",
    ) -> None:
        if not cfg.host or not cfg.user:
            raise TunnelFailed(
                f"[tunnel] in {source} is enabled but has no host or user; "
                "set tunnel.host and tunnel.user, or set tunnel.enabled = false for direct mode"
            )
        self.cfg = cfg
        self.source = source
        self._listeners: list[Callable[[TunnelStatus], None]] = [on_change] if on_change else []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._forwarder: _Forwarder | None = None
        self._channel: grpc.Channel | None = None
        self._thread: threading.Thread | None = None
        self.local_port = cfg.local_port or free_port(LOCAL_HOST)
        self.attempts = 0  # SSH connection attempts made, all told
        self._status = TunnelStatus(
            state=STARTING,
            target=self.target,
            ssh=f"{cfg.user}@{cfg.host}:{cfg.port}",
            remote=f"{cfg.remote_host}:{cfg.remote_port}",
            since=time.time(),
        )

    @property
    def target(self) -> str:
        return f"{LOCAL_HOST}:{self.local_port}"

    def add_listener(self, fn: Callable[[TunnelStatus], None]) -> None:
        self._listeners.append(fn)

    def status(self) -> TunnelStatus:
        with self._lock:
            return TunnelStatus(**asdict(self._status))

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect once now; a fatal error raises, a passing one leaves the monitor retrying."""
        try:
            self._build()
        except TunnelFailed as e:
            self._set(FAILED, why=e.why)
            raise
        except _Transient as e:
            log.warning("tunnel %s: first attempt failed: %s", self._status.ssh, e)
            self._set(REBUILDING, why=str(e), attempt=1, next_try_unix=time.time())
            self._rebuild_started = time.monotonic()
        else:
            self._set(UP)
        self._thread = threading.Thread(target=self._monitor, name="tunnel-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.cfg.connect_timeout_s + 2)
        self._teardown()
        if self._status.state != FAILED:
            self._set(STOPPED)

    def __enter__(self) -> Tunnel:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ connecting

    def _connect_ssh(self, pkey: paramiko.PKey) -> paramiko.Transport:
        cfg = self.cfg
        where = f"{cfg.host}:{cfg.port}"
        known_hosts = load_known_hosts(cfg.known_hosts, self.source)
        known = known_hosts.lookup(known_hosts_name(cfg.host, cfg.port))
        self.attempts += 1
        try:
            sock = socket.create_connection((cfg.host, cfg.port), timeout=cfg.connect_timeout_s)
        except OSError as e:
            raise _Transient(f"cannot reach sshd at {where}: {e.strerror or e}") from None
        # Small gRPC frames (one token each) must not wait out Nagle + delayed ACK (~40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock)
        transport.banner_timeout = cfg.connect_timeout_s
        transport.auth_timeout = cfg.connect_timeout_s
        if known:
            # Like OpenSSH: ask for the key types we already know for this host.
            opts = transport.get_security_options()
            wanted = [a for t in known for a in KEY_ALGORITHMS.get(t, (t,))]
            usable = tuple(a for a in wanted if a in opts.key_types)
            if usable:
                opts.key_types = usable
        try:
            try:
                transport.start_client(timeout=cfg.connect_timeout_s)
            except (paramiko.SSHException, OSError, EOFError) as e:
                raise _Transient(f"SSH handshake with {where} failed: {e}") from None
            check_host_key(known_hosts, transport.get_remote_server_key(), cfg, self.source)
            authenticate(transport, pkey, cfg, self.source, _Transient)
        except BaseException:
            transport.close()
            raise
        transport.set_keepalive(max(1, int(cfg.keepalive_s)))
        self._nodelay_at_sshd(transport)
        return transport

    def _nodelay_at_sshd(self, transport: paramiko.Transport) -> None:
        """Have sshd set TCP_NODELAY on its end of the connection, by running one no-op command.

        OpenSSH before 10.0 sets it only when a session execs something (session.c calls
        ssh_packet_set_interactive there); on a connection that only forwards ports its small
        writes wait for our delayed ACK, ~40 ms before the first token of every stream. Best
        effort: a server that refuses sessions costs that latency, nothing else.
        """
        command = self.cfg.nodelay_command
        if not command:
            return
        # paramiko waits for the exec reply without a timeout; a server that never answers
        # gets its connection closed, and the attempt counts as failed.
        timer = threading.Timer(self.cfg.connect_timeout_s, transport.close)
        timer.start()
        try:
            chan = transport.open_session(timeout=self.cfg.connect_timeout_s)
            try:
                chan.exec_command(command)
            finally:
                chan.close()
        except (paramiko.SSHException, OSError, EOFError) as e:
            if not transport.is_active():
                raise _Transient(f"sshd on {self.cfg.host} did not answer a session request "
                                 f"in {self.cfg.connect_timeout_s} s") from None
            log.info("tunnel %s: sshd refused the session that turns Nagle off (%s); streams "
                     "may start ~40 ms late. Set tunnel.nodelay_command = \"\" to skip it",
                     self._status.ssh, e or type(e).__name__)
        finally:
            timer.cancel()

    def _build(self) -> None:
        """One attempt: SSH connect + checks, a test channel to the remote port, the listener."""
        cfg = self.cfg
        pkey = load_identity(cfg, self.source)
        transport = self._connect_ssh(pkey)
        remote = (cfg.remote_host, cfg.remote_port)
        try:
            chan = transport.open_channel(
                "direct-tcpip", remote, (LOCAL_HOST, 0), timeout=cfg.connect_timeout_s
            )
            chan.close()
        except (paramiko.SSHException, OSError, EOFError) as e:
            transport.close()
            raise _Transient(
                f"sshd on {cfg.host} is up but nothing answered at {cfg.remote_host}:"
                f"{cfg.remote_port} there ({e}); is `inference-node serve` running on "
                f"{cfg.host}, and does tunnel.remote_port match its port?"
            ) from None
        fwd = _Forwarder(transport, cfg, pkey, self.local_port)
        try:
            fwd.start()
        except sshtunnel.BaseSSHTunnelForwarderError as e:
            fwd.force_stop()
            raise _Transient(f"cannot listen on {self.target}: {e}; another process may hold "
                             f"the port (set tunnel.local_port to a free one)") from None
        self._teardown()
        self._forwarder = fwd
        self._channel = grpc.insecure_channel(
            self.target, options=[("grpc.max_reconnect_backoff_ms", 1000)]
        )

    def _teardown(self) -> None:
        fwd, self._forwarder = self._forwarder, None
        channel, self._channel = self._channel, None
        if fwd is not None:
            fwd.force_stop()
        if channel is not None:
            channel.close()

    # ------------------------------------------------------------------ liveness

    def _probe(self) -> str:
        """'' when gRPC answered through the tunnel (whatever its health), else what went wrong."""
        channel = self._channel
        if channel is None:
            return "no tunnel"
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=self.cfg.probe_timeout_s)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return f"health check got {code.name} within {self.cfg.probe_timeout_s} s"
        return ""  # any answer, even NOT_SERVING or UNIMPLEMENTED, means the path works

    def _monitor(self) -> None:
        next_probe = time.monotonic() + self.cfg.probe_interval_s
        while not self._stop.is_set():
            state = self._status.state
            if state == FAILED:
                return
            if state == REBUILDING:
                self._rebuild()
                next_probe = time.monotonic() + self.cfg.probe_interval_s
                continue
            fwd = self._forwarder
            if fwd is not None and not fwd.transport_alive():
                self._begin_rebuild(f"the SSH connection to {self._status.ssh} closed")
                continue
            if time.monotonic() >= next_probe:
                next_probe = time.monotonic() + self.cfg.probe_interval_s
                problem = self._probe()
                if not problem:
                    if state != UP:
                        self._set(UP, why="")
                elif self._status.probe_failures + 1 >= self.cfg.probe_failures:
                    self._begin_rebuild(
                        f"{self.cfg.probe_failures} health checks in a row failed: {problem}"
                    )
                    continue
                else:
                    self._set(PROBING, why=problem, probe_failures=self._status.probe_failures + 1)
            self._stop.wait(TICK_S)

    def _begin_rebuild(self, why: str) -> None:
        log.warning("tunnel %s: %s; force-stopping and rebuilding", self._status.ssh, why)
        self._rebuild_started = time.monotonic()
        delay = backoff_delay(1, self.cfg)
        self._set(REBUILDING, why=why, attempt=0, next_try_unix=time.time() + delay)
        self._teardown()  # resets the relayed connections: calls in flight fail now, not later

    def _rebuild(self) -> None:
        """Retry with backoff until up, fatal, or stopped."""
        attempt = self._status.attempt
        while not self._stop.is_set():
            wait = self._status.next_try_unix - time.time()
            if wait > 0 and self._stop.wait(wait):
                return
            attempt += 1
            try:
                self._build()
            except TunnelFailed as e:
                log.error("tunnel %s: giving up: %s", self._status.ssh, e.why)
                self._set(FAILED, why=e.why, attempt=attempt)
                return
            except _Transient as e:
                delay = backoff_delay(attempt + 1, self.cfg)
                log.info("tunnel %s: attempt %d failed: %s; next try in %.1f s",
                         self._status.ssh, attempt, e, delay)
                self._set(REBUILDING, why=str(e), attempt=attempt,
                          next_try_unix=time.time() + delay)
                continue
            took = time.monotonic() - self._rebuild_started
            log.warning("tunnel %s: back up after %d attempt(s), %.1f s",
                        self._status.ssh, attempt, took)
            self._set(UP, why="", attempt=0, probe_failures=0, rebuilds=self._status.rebuilds + 1,
                      last_recovery_s=took, next_try_unix=0.0)
            return

    def _set(self, state: str, **changes: Any) -> None:
        with self._lock:
            old = self._status.state
            for k, v in changes.items():
                setattr(self._status, k, v)
            if state in (UP, STOPPED, FAILED):
                self._status.probe_failures = 0 if state == UP else self._status.probe_failures
            if state != old:
                self._status.state = state
                self._status.since = time.time()
            snapshot = TunnelStatus(**asdict(self._status))
        if state != old:
            level = logging.WARNING if state in (FAILED, REBUILDING) else logging.INFO
            log.log(level, "%s", snapshot.describe())
        for fn in self._listeners:
            try:
                fn(snapshot)
            except Exception:  # noqa: BLE001 - a listener must not break the monitor
                log.exception("tunnel listener failed")

    _rebuild_started: float = 0.0

