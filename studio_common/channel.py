"""gRPC channel options for both ends of the wire, in one place.

    grpc.server(pool, options=server_options(max_message_bytes))     the inference node
    grpc.insecure_channel(target, options=client_options())           the agent node, tests

The two ends must agree: a message over the receiver's limit is refused, and a client that
pings more often than the server permits is cut off (GOAWAY "too_many_pings").
"""

from __future__ import annotations

from typing import Any

MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # a 4k screenshot as PNG is a few MB; a long prompt less
KEEPALIVE_TIME_MS = 20_000  # a dead tunnel is noticed within 30 s, not at the next call
KEEPALIVE_TIMEOUT_MS = 10_000
RECONNECT_BACKOFF_MS = (200, 1000)  # once the tunnel's listener is back (default backs off 120 s)

Options = list[tuple[str, Any]]


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> Options:
    """Message limits and keepalive, the same on both ends."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> Options:
    """The server's: `channel_options`, and it permits pings at twice the clients' rate."""
    return [*channel_options(max_message_bytes),
            ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2)]


def client_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> Options:
    """A client's: `channel_options`, and it reconnects quickly once the target is back."""
    first, most = RECONNECT_BACKOFF_MS
    return [*channel_options(max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", first),
            ("grpc.min_reconnect_backoff_ms", first),
            ("grpc.max_reconnect_backoff_ms", most)]
