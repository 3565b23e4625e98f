"""Loopback checks and free ports, for every listener either node opens.

    require_loopback(host, allow_remote, why)   ConfigError unless host is loopback or allowed
    free_port()                                 a TCP port free on 127.0.0.1 right now
"""

from __future__ import annotations

import ipaddress
import socket

from studio_common.tomlconf import ConfigError

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_loopback(host: str, allow_remote: bool, why: str) -> None:
    """Refuse to listen on a non-loopback `host` unless `allow_remote`; `why` is what the
    message goes on to say (what exposing it means, and how to reach it instead)."""
    if not allow_remote and not is_loopback(host):
        raise ConfigError(f"refusing to listen on {host}: {why}")


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on at `host` now (another process may take it before use)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
