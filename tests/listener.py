"""A loopback TCP listener that records what reaches it: the far end of a network test."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def outside_address() -> str:
    """An IPv4 address of this machine that is not loopback ("" if it has none): reaching it
    is reaching the network, as far as a sandbox or a browser can tell."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    except OSError:
        return ""
    for line in out.splitlines():
        address = line.split()[3].split("/")[0]
        if not address.startswith("127."):
            return address
    return ""


@contextmanager
def listening(host: str = "127.0.0.1") -> Iterator[tuple[int, list[bytes]]]:
    """(port, what each connection sent) on `host` for as long as the block runs."""
    got: list[bytes] = []
    stop = threading.Event()
    with socket.socket() as server:
        server.bind((host, 0))
        server.listen()
        server.settimeout(0.2)

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(2)
                    try:
                        got.append(conn.recv(200) or b"(connected)")
                    except OSError:
                        got.append(b"(connected)")

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield server.getsockname()[1], got
        finally:
            stop.set()
            thread.join(2)
